"""Refinement of ClearCLIP's per-class probabilities (``MODEL.CLEARCLIP.REFINE``).

Two post-processings, applied to the probabilities at the output size (after the max over
synonyms, before the background threshold):

* ``pamr``: pixel-adaptive mask refinement (Araslanov & Roth, "Single-Stage Semantic
  Segmentation from Image Labels", CVPR 2020), the post-processing of several training-free
  follow-ups of ClearCLIP (SCLIP, NACLIP, ...). Every pixel repeatedly takes the average of
  its neighbours' probabilities, weighted by how alike the neighbours look in the image;
  the likeness is measured relative to the local intensity spread, so edges stop the spread.
* ``masks``: class-agnostic masks of another model (see :mod:`.mask_model`); ClearCLIP's
  probabilities are averaged inside each mask, pixels outside every mask keep their own.

The math is in pure functions on tensors; :class:`PAMRRefiner` and
:class:`~.mask_model.MaskModelRefiner` are the thin modules the meta-architecture calls.
"""

from typing import List, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import nn

REFINE_CHOICES = ("none", "pamr", "masks")

# PAMR's affinity: -|I_i - I_j| / (PAMR_STD_FACTOR * local std + PAMR_EPS), as in the paper's code.
PAMR_STD_FACTOR = 0.1
PAMR_EPS = 1e-8
# Defaults of the training-free segmentors that use PAMR (SCLIP, NACLIP): 10 iterations over
# neighbourhoods dilated by 8 and 16 pixels of the full-resolution map. The paper refines
# low-resolution masks with dilations (1, 2, 4, 8, 12, 24).
PAMR_DEFAULT_ITERATIONS = 10
PAMR_DEFAULT_DILATIONS = (8, 16)


# --------------------------------------------------------------------------- PAMR
def neighbour_offsets(dilations: Sequence[int]) -> List[Tuple[int, int]]:
    """(dy, dx) of the 8 neighbours of a 3x3 window dilated by each ``d``, row-major, centre left out."""
    return [(dy * d, dx * d) for d in dilations for dy in (-1, 0, 1) for dx in (-1, 0, 1) if (dy, dx) != (0, 0)]


def _padded(x: torch.Tensor, pad: int) -> torch.Tensor:
    """[C, H, W] -> [C, H + 2 pad, W + 2 pad], borders replicated."""
    return F.pad(x[None], (pad, pad, pad, pad), mode="replicate")[0]


def _shift(padded: torch.Tensor, pad: int, dy: int, dx: int, height: int, width: int) -> torch.Tensor:
    """Value at (y + dy, x + dx) for every (y, x), coordinates clamped to the image (replicate)."""
    return padded[:, pad + dy : pad + dy + height, pad + dx : pad + dx + width]


def pamr_local_std(image: torch.Tensor, dilations: Sequence[int]) -> torch.Tensor:
    """[C, H, W] -> [C, H, W]: per channel, the standard deviation (unbiased) of the 9 values of
    each dilated 3x3 window, all dilations pooled (9 * len(dilations) values, centre included
    once per dilation), borders replicated."""
    pad, (_, height, width) = max(dilations), image.shape
    padded = _padded(image, pad)
    taps = [(dy * d, dx * d) for d in dilations for dy in (-1, 0, 1) for dx in (-1, 0, 1)]
    mean = sum(_shift(padded, pad, dy, dx, height, width) for dy, dx in taps) / len(taps)
    squares = sum((_shift(padded, pad, dy, dx, height, width) - mean) ** 2 for dy, dx in taps)
    return (squares / (len(taps) - 1)).sqrt()


def pamr_affinity(image: torch.Tensor, dilations: Sequence[int]) -> torch.Tensor:
    """Neighbour weights of PAMR.

    Args:
        image: [C, H, W] float, any per-channel scale (the weights do not depend on it).
        dilations: neighbourhood dilations in pixels.
    Returns:
        [N, H, W], N = 8 * len(dilations), in the order of :func:`neighbour_offsets`:
        ``softmax_n(mean_c(-|I_c(p) - I_c(p + o_n)| / (0.1 std_c(p) + 1e-8)))``; sums to 1 over n.
    """
    pad, (_, height, width) = max(dilations), image.shape
    padded = _padded(image, pad)
    scale = PAMR_STD_FACTOR * pamr_local_std(image, dilations) + PAMR_EPS
    logits = torch.stack(
        [(-(image - _shift(padded, pad, dy, dx, height, width)).abs() / scale).mean(0) for dy, dx in neighbour_offsets(dilations)]
    )
    return logits.softmax(dim=0)


def pamr(probs: torch.Tensor, image: torch.Tensor, iterations: int, dilations: Sequence[int]) -> torch.Tensor:
    """Pixel-adaptive mask refinement.

    Args:
        probs: [K, H, W] per-class scores (probabilities here).
        image: [C, H, W] float image of the same size (e.g. RGB 0-255).
        iterations: how often every pixel takes its neighbours' weighted average.
        dilations: neighbourhood dilations in pixels.
    Returns:
        [K, H, W]: ``probs`` after ``iterations`` steps of
        ``p(x) <- sum_n w_n(x) p(x + o_n)`` (borders replicated). Each step is a convex
        combination, so values stay in the range of the input.
    """
    if probs.shape[-2:] != image.shape[-2:]:
        raise ValueError(f"probabilities {tuple(probs.shape)} and image {tuple(image.shape)} differ in size")
    weights = pamr_affinity(image.float(), dilations).to(probs.dtype)
    offsets = neighbour_offsets(dilations)
    pad, (_, height, width) = max(dilations), probs.shape
    for _ in range(iterations):
        padded = _padded(probs, pad)
        refined = torch.zeros_like(probs)
        for weight, (dy, dx) in zip(weights, offsets):
            refined.addcmul_(weight[None], _shift(padded, pad, dy, dx, height, width))
        probs = refined
    return probs


class PAMRRefiner(nn.Module):
    """``REFINE pamr``: PAMR guided by the image the model saw, resized to the output size."""

    def __init__(self, iterations: int = PAMR_DEFAULT_ITERATIONS, dilations: Sequence[int] = PAMR_DEFAULT_DILATIONS):
        super().__init__()
        self.iterations = int(iterations)
        self.dilations = tuple(int(d) for d in dilations)

    def forward(self, probs: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
        """probs [K, H, W]; image uint8 [3, h, w] (channel order does not matter) -> [K, H, W]."""
        guide = image.to(probs.device).float()
        if tuple(guide.shape[-2:]) != tuple(probs.shape[-2:]):
            guide = F.interpolate(guide[None], size=probs.shape[-2:], mode="bilinear", align_corners=False)[0]
        return pamr(probs, guide, self.iterations, self.dilations)

    def extra_repr(self) -> str:
        return f"iterations={self.iterations}, dilations={self.dilations}"


# --------------------------------------------------------------------------- masks
def assign_pixels_to_masks(masks: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
    """Which mask each pixel belongs to, masks overlapping.

    Args:
        masks: [M, H, W] bool.
        scores: [M] confidence of each mask.
    Returns:
        [H, W] int64: the index of the highest-scoring mask covering the pixel (equal scores:
        the lower index), -1 where no mask covers it.
    """
    if masks.shape[0] == 0:
        return torch.full(masks.shape[-2:], -1, dtype=torch.long, device=masks.device)
    ranked = torch.where(masks, scores.float().view(-1, 1, 1), torch.tensor(float("-inf"), device=masks.device))
    owner = ranked.argmax(dim=0)  # the first of equal maxima
    return torch.where(masks.any(dim=0), owner, torch.full_like(owner, -1))


def average_in_regions(probs: torch.Tensor, regions: torch.Tensor) -> torch.Tensor:
    """Replace the probabilities of every region by their mean over the region.

    Args:
        probs: [K, H, W].
        regions: [H, W] int64 region index, -1 = no region (pixel kept as it is).
    Returns:
        [K, H, W].
    """
    num_classes = probs.shape[0]
    flat, ids = probs.reshape(num_classes, -1), regions.reshape(-1).to(probs.device)
    inside = ids >= 0
    if not bool(inside.any()):
        return probs.clone()
    ids_inside = ids[inside]
    num_regions = int(ids_inside.max()) + 1
    sums = flat.new_zeros((num_classes, num_regions)).index_add_(1, ids_inside, flat[:, inside])
    counts = torch.bincount(ids_inside, minlength=num_regions).clamp(min=1).to(flat.dtype)
    out = flat.clone()
    out[:, inside] = (sums / counts)[:, ids_inside]
    return out.view_as(probs)


def refine_with_masks(probs: torch.Tensor, masks: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
    """``REFINE masks``: each pixel goes to the highest-scoring mask that covers it
    (:func:`assign_pixels_to_masks`); the probabilities are averaged over the pixels of each
    mask; pixels outside every mask keep their own. probs [K, H, W], masks [M, H, W] bool."""
    return average_in_regions(probs, assign_pixels_to_masks(masks.to(probs.device), scores.to(probs.device)))


def build_refiner(cfg):
    """The refiner of ``MODEL.CLEARCLIP.REFINE``: None for ``none``, else a module called as
    ``refiner(probs [K, H, W], image uint8 [3, h, w]) -> [K, H, W]``."""
    refine = check_refine_config(cfg, deep=False)
    cc = cfg.MODEL.CLEARCLIP
    if refine == "pamr":
        return PAMRRefiner(cc.PAMR_ITERATIONS, cc.PAMR_DILATIONS)
    if refine == "masks":
        from .masks import MaskModelRefiner

        return MaskModelRefiner.from_clearclip_config(cfg)
    return None


def check_refine_config(cfg, deep: bool = True) -> str:
    """Check ``REFINE`` and its parameters (``deep``: also the mask model's config and weights,
    without building it); return the refinement's name."""
    from ...utils.errors import ClearCLIPError

    cc = cfg.MODEL.CLEARCLIP
    refine = str(cc.REFINE).lower()
    if refine not in REFINE_CHOICES:
        raise ClearCLIPError(f"MODEL.CLEARCLIP.REFINE {cc.REFINE!r} is not one of {', '.join(REFINE_CHOICES)}")
    if refine == "pamr":
        if int(cc.PAMR_ITERATIONS) < 1:
            raise ClearCLIPError(f"MODEL.CLEARCLIP.PAMR_ITERATIONS {cc.PAMR_ITERATIONS} must be >= 1")
        if not len(cc.PAMR_DILATIONS) or any(int(d) < 1 for d in cc.PAMR_DILATIONS):
            raise ClearCLIPError(
                f"MODEL.CLEARCLIP.PAMR_DILATIONS {list(cc.PAMR_DILATIONS)} must be a non-empty list of positive pixel counts"
            )
    if refine == "masks" and deep:
        from .masks import check_mask_model_config

        check_mask_model_config(cfg)
    return refine
