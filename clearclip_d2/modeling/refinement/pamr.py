"""PAMR, ``MODEL.CLEARCLIP.REFINE pamr``: pixel-adaptive mask refinement (Araslanov & Roth,
"Single-Stage Semantic Segmentation from Image Labels", CVPR 2020), the post-processing of
several training-free follow-ups of ClearCLIP (SCLIP, NACLIP, ...).

Every pixel repeatedly takes the average of its neighbours' probabilities, weighted by how
alike the neighbours look in the image; the likeness is measured relative to the local
intensity spread, so edges stop the spread. The math is in pure functions on tensors;
:class:`PAMRRefiner` is the thin module the meta-architecture calls.
"""

from typing import List, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from ...constants import PAMR_DEFAULT_DILATIONS, PAMR_DEFAULT_ITERATIONS, PAMR_EPS, PAMR_STD_FACTOR


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
        probs: [K, H, W] per-class (or per-query) scores: logits or probabilities.
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
    """``REFINE pamr``: PAMR guided by the image the model saw, resized to the output size.

    It refines the cosine logits of every query (``refines = "logits"``), before the logit
    scale and the softmax, where SCLIP's and NACLIP's authors run it. Their guide is the
    CLIP-normalised image; this one is the uint8 image: PAMR's weights do not depend on a
    per-channel affine change of the guide (up to its 1e-8 epsilon), so both give the same.
    """

    refines = "logits"

    def __init__(self, iterations: int = PAMR_DEFAULT_ITERATIONS, dilations: Sequence[int] = PAMR_DEFAULT_DILATIONS):
        super().__init__()
        self.iterations = int(iterations)
        self.dilations = tuple(int(d) for d in dilations)

    def forward(self, probs: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
        """probs [C, H, W] (cosine logits of C queries); image uint8 [3, h, w] (channel order
        does not matter) -> [C, H, W]."""
        guide = image.to(probs.device).float()
        if tuple(guide.shape[-2:]) != tuple(probs.shape[-2:]):
            guide = F.interpolate(guide[None], size=probs.shape[-2:], mode="bilinear", align_corners=False)[0]
        return pamr(probs, guide, self.iterations, self.dilations)

    def extra_repr(self) -> str:
        return f"iterations={self.iterations}, dilations={self.dilations}"
