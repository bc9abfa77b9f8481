"""``ENCODER sc_clip``: SC-CLIP's image encoder (Bai et al., "Self-Calibrated CLIP for
Training-Free Open-Vocabulary Segmentation", arXiv 2411.15869), as the authors' code runs it
(github.com/SuleBai/SC-CLIP at 0417ba9, ``clip/model.py`` ``VisionTransformer.forward``).

With ``layers[i]`` the output of block i + 1 (i = 0 .. L-2, class token first) and the keys of
``MODEL.CLEARCLIP.SC_CLIP``:

1. The patch tokens of ``layers[-1]`` whose local outlier factor is among the top
   ``LOF_CONTAMINATION`` (:func:`lof_outliers`, the authors' own LOF, not scikit-learn's) are
   replaced by the mean of their non-outlier 3x3 neighbours (:func:`fix_outliers`); the class
   token is set aside and the sequence has only patch tokens from here on.
2. ``S`` = cosine similarities of ``layers[PRE_ADJUST_INDEX]``'s patch tokens, fixed the same
   way. The tokens are averaged with the weights ``S`` (below ``BETA`` zeroed, rows normalised,
   :func:`aggregate`).
3. The last block's attention is replaced by :func:`self_calibrated_attention`, the mean of
   ``softmax(P)`` and ``softmax(k k^T / sqrt(d))``, ``P = ATTENTION_SHARPNESS * (S - mean(S))``
   with negatives masked; no residual, no FFN; ``RES_CLS`` x the class token is added.
4. The result is aggregated with the similarities of ``layers[POST_ADJUST_INDEX]`` (not fixed).
5. Multi-level fusion: the sum of ``layers[MULTI_START_INDEX:MULTI_END_INDEX]`` goes through
   steps 3-4 too and is added. ``ln_post`` and the projection follow on every patch token.

Every statistic (outliers, ``mean(S)``) is taken per window, so a batch of windows gives what
the windows give one at a time (the authors run one window per call).

Where the authors' code breaks (all their windows are 224 x 224, so it never does there):

- **Non-square patch grids** (whole-image mode, or a window cut by a narrow image): the authors
  place outlier token ``i`` at row ``i // R``, column ``i % R``, ``R`` the number of grid
  ROWS, which is right on square grids only. That rule is followed; where it points outside
  the grid (their code fails with an index error) the window is refused in one line.
- **Fewer than LOF_NEIGHBOURS + 1 patches** in a window (31: 96 x 96 pixels at patch 16):
  their ``topk`` fails; refused in one line (at build time for ``SLIDE_CROP``, at run time for
  smaller images).
- **No outlier** (the top scores tie): their code fails on the empty index list; here nothing
  is fixed.
"""

from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from ... import constants
from ...checks import register_config_check
from ...utils.errors import ClearCLIPError
from ..clip.attention_adapter import merge_heads, project_qkv
from ..clip.decomposition import TokenLayout
from ..clip.dense_encoder import DenseCLIPEncoder
from .build import ENCODER_REGISTRY

KEYS = "MODEL.CLEARCLIP.SC_CLIP"


@dataclass(frozen=True)
class SCCLIPSettings:
    """The hyper-parameters of ``MODEL.CLEARCLIP.SC_CLIP`` (documented in ``config.py``)."""

    pre_adjust_index: int = constants.SC_CLIP_PRE_ADJUST_INDEX
    post_adjust_index: int = constants.SC_CLIP_POST_ADJUST_INDEX
    multi_start_index: int = constants.SC_CLIP_MULTI_START_INDEX
    multi_end_index: int = constants.SC_CLIP_MULTI_END_INDEX
    res_cls: float = constants.SC_CLIP_RES_CLS
    beta: float = constants.SC_CLIP_BETA
    attention_sharpness: float = constants.SC_CLIP_ATTENTION_SHARPNESS
    lof_neighbours: int = constants.SC_CLIP_LOF_NEIGHBOURS
    lof_contamination: float = constants.SC_CLIP_LOF_CONTAMINATION

    @classmethod
    def from_config(cls, cfg) -> "SCCLIPSettings":
        sc = cfg.MODEL.CLEARCLIP.SC_CLIP
        return cls(
            int(sc.PRE_ADJUST_INDEX), int(sc.POST_ADJUST_INDEX), int(sc.MULTI_START_INDEX), int(sc.MULTI_END_INDEX),
            float(sc.RES_CLS), float(sc.BETA), float(sc.ATTENTION_SHARPNESS),
            int(sc.LOF_NEIGHBOURS), float(sc.LOF_CONTAMINATION),
        )


def check_sc_clip_settings(settings: SCCLIPSettings, num_layers: Optional[int] = None) -> None:
    """Refuse settings the encoder cannot run; ``num_layers`` (L-1, the blocks before the last;
    None = not known yet) bounds the layer indices."""
    s = settings
    if s.lof_neighbours < 1:
        raise ClearCLIPError(f"{KEYS}.LOF_NEIGHBOURS must be >= 1, got {s.lof_neighbours}")
    if not 0 <= s.lof_contamination < 1:
        raise ClearCLIPError(f"{KEYS}.LOF_CONTAMINATION must be in [0, 1), got {s.lof_contamination}")
    indices = {"PRE_ADJUST_INDEX": s.pre_adjust_index, "POST_ADJUST_INDEX": s.post_adjust_index,
               "MULTI_START_INDEX": s.multi_start_index}
    bound = f" and below {num_layers}, the blocks before the last of this model" if num_layers is not None else ""
    for key, index in indices.items():
        if index < 0 or (num_layers is not None and index >= num_layers):
            raise ClearCLIPError(f"{KEYS}.{key} must be >= 0{bound}, got {index}")
    if s.multi_end_index <= s.multi_start_index or (num_layers is not None and s.multi_end_index > num_layers):
        limit = f" and <= {num_layers}" if num_layers is not None else ""
        raise ClearCLIPError(
            f"{KEYS}.MULTI_END_INDEX must be > MULTI_START_INDEX ({s.multi_start_index}){limit}, got {s.multi_end_index}"
        )


def check_lof_patches(grid_h: int, grid_w: int, neighbours: int, what: str) -> None:
    """The LOF needs ``neighbours + 1`` patches per window (the authors' ``topk`` fails below)."""
    if grid_h * grid_w < neighbours + 1:
        raise ClearCLIPError(
            f"SC-CLIP: {what} has {grid_h}x{grid_w} patches, fewer than {KEYS}.LOF_NEIGHBOURS + 1 = "
            f"{neighbours + 1} that its outlier detection needs; use larger windows (SLIDE_CROP) or images"
        )


@register_config_check
def check_sc_clip_config(cfg) -> None:
    """``MODEL.CLEARCLIP.SC_CLIP`` when ``ENCODER`` is ``sc_clip`` (run by ``check_clearclip_config``)."""
    if cfg.MODEL.CLEARCLIP.ENCODER == "sc_clip":
        check_sc_clip_settings(SCCLIPSettings.from_config(cfg))


# --------------------------------------------------------------------------- outliers
def lof_outliers(tokens: torch.Tensor, neighbours: int, contamination: float) -> torch.Tensor:
    """The authors' ``lof_pytorch``, per window: [B, N, C] tokens -> [B, N] bool, True = outlier.

    Squared Euclidean distances; the ``neighbours`` nearest other tokens; the reachability
    distance to a neighbour is the max of their distance and the token's OWN k-distance
    (scikit-learn: the neighbour's), so the local reachability density is ``k / k-distance``;
    the score is the mean ratio of the neighbours' densities to the token's; outliers score
    strictly above the ``1 - contamination`` quantile of their window (linear interpolation).
    """
    # Differences, not the |a|^2 + |b|^2 - 2ab expansion: the neighbour order stays the authors'.
    distances = torch.cdist(tokens, tokens, compute_mode="donot_use_mm_for_euclid_dist") ** 2
    knn_distances, knn_indices = torch.topk(distances, k=neighbours + 1, dim=-1, largest=False)
    knn_distances, knn_indices = knn_distances[..., 1:], knn_indices[..., 1:]  # drop the token itself
    reach = torch.max(knn_distances, knn_distances[..., -1:].expand_as(knn_distances))
    density = neighbours / torch.nan_to_num(reach.mean(dim=-1), nan=1e-6)  # [B, N]
    batch, count = density.shape
    neighbour_density = torch.gather(density, 1, knn_indices.reshape(batch, -1)).reshape(batch, count, neighbours)
    scores = (neighbour_density / density.unsqueeze(-1)).mean(dim=-1)
    threshold = torch.quantile(scores.float(), 1 - contamination, dim=-1, keepdim=True)
    return scores > threshold


def outlier_keep_map(outliers: torch.Tensor, grid_h: int, grid_w: int) -> torch.Tensor:
    """[B, N] outlier flags -> [B, 1, grid_h, grid_w], 0 at the outliers and 1 elsewhere.

    Token ``i`` sits at (``i // grid_h``, ``i % grid_h``), the authors' rule (right for square
    grids); a position outside the grid is refused, as their code fails there.
    """
    if grid_h == grid_w:  # the rule is row-major order: no index to look at
        return ~outliers.view(-1, 1, grid_h, grid_w)
    keep = outliers.new_ones((outliers.shape[0], grid_h, grid_w), dtype=torch.bool)
    window, index = outliers.nonzero(as_tuple=True)
    rows, cols = torch.div(index, grid_h, rounding_mode="floor"), index % grid_h
    if len(index) and (int(rows.max()) >= grid_h or int(cols.max()) >= grid_w):
        raise ClearCLIPError(
            f"SC-CLIP: on a {grid_h}x{grid_w} patch grid an outlier token falls outside the grid under the "
            "authors' position rule (row = index // rows, column = index % rows; their code fails here too); "
            "use square windows: SLIDE_CROP > 0 and images at least SLIDE_CROP pixels on each side"
        )
    keep[window, rows, cols] = False
    return keep.unsqueeze(1)


def fix_outliers(tokens: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """The authors' ``mean_interpolation``: [B, N, C] patch tokens with each outlier (``keep``
    [B, 1, h, w] False) replaced by the mean of its non-outlier 3x3 neighbours (none outside the
    grid); an outlier without one keeps its value."""
    batch, count, channels = tokens.shape
    grid_h, grid_w = keep.shape[-2:]
    keep = keep.to(tokens.dtype)
    feature_map = tokens.transpose(1, 2).reshape(batch, channels, grid_h, grid_w)
    kernel = torch.ones(channels, 1, 3, 3, dtype=tokens.dtype, device=tokens.device)
    kernel[:, 0, 1, 1] = 0
    neighbour_sum = F.conv2d(F.pad(feature_map * keep, (1, 1, 1, 1)), kernel, groups=channels)
    valid = F.conv2d(F.pad(keep, (1, 1, 1, 1)), kernel[:1])
    mean = neighbour_sum / valid.clamp(min=1)
    update = (1 - keep) * (valid > 0).to(tokens.dtype)
    fixed = feature_map * (1 - update) + mean * update
    return fixed.reshape(batch, channels, count).transpose(1, 2)


# --------------------------------------------------------------------------- similarities, attention
def cosine_similarity(tokens: torch.Tensor) -> torch.Tensor:
    """[B, N, C] -> [B, N, N] cosine similarities of the tokens of each window."""
    tokens = tokens / tokens.norm(dim=-1, keepdim=True)
    return tokens @ tokens.transpose(1, 2)


def thresholded(similarity: torch.Tensor, beta: float) -> torch.Tensor:
    """``similarity`` with the values below ``beta`` set to 0."""
    return similarity.masked_fill(similarity < beta, 0.0)


def aggregate(tokens: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """The authors' ``adaptively_aggregate``: [B, N, C] tokens averaged with the [B, N, N]
    ``weights``, rows normalised to sum 1 (+1e-6)."""
    return (weights / (weights.sum(dim=-1, keepdim=True) + 1e-6)) @ tokens


def self_calibrated_attention(block: nn.Module, x: torch.Tensor, similarity: torch.Tensor, sharpness: float) -> torch.Tensor:
    """The authors' ``custom_attn`` of the last block on patch tokens ``x`` [B, N, C] -> [B, N, C].

    Per head: ``(softmax(P) + softmax(k k^T / sqrt(d))) / 2 @ v`` of ``ln_1(x)``, with
    ``P = sharpness * (similarity - mean)``, the mean over each window's [N, N] ``similarity``,
    negative entries masked (the diagonal never is); then ``out_proj`` (and LayerScale, if any).
    """
    _, k, v = project_qkv(block.attn, block.ln_1(x))
    prior = (similarity - similarity.mean(dim=(-2, -1), keepdim=True)) * sharpness
    prior = prior.masked_fill(prior < 0, float("-inf")).softmax(dim=-1).unsqueeze(1)  # [B, 1, N, N], all heads
    heads = (prior.to(v.dtype) @ v + F.scaled_dot_product_attention(k, k, v)) / 2
    return block.ls_1(merge_heads(block.attn, heads))


class SCCLIPEncoder(nn.Module):
    """SC-CLIP's dense features (see the module docstring) on :class:`DenseCLIPEncoder`'s
    embedding, blocks and projection: images [B, 3, h, w] -> [B, (h // p) * (w // p), D]."""

    uses_text = False

    def __init__(self, dense: DenseCLIPEncoder, settings: SCCLIPSettings = SCCLIPSettings()):
        super().__init__()
        check_sc_clip_settings(settings, len(dense.visual.transformer.resblocks) - 1)
        self.dense = dense
        self.settings = settings

    @property
    def patch_size(self) -> int:
        return self.dense.patch_size

    @property
    def window_multiple(self) -> int:
        return self.dense.window_multiple

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        s = self.settings
        grid = self.dense.grid_shape(*images.shape[-2:])
        check_lof_patches(*grid, s.lof_neighbours, f"a {images.shape[-2]}x{images.shape[-1]}-pixel window")
        layers = list(self.dense.blocks_before_last(self.dense.embed(images), TokenLayout(*grid)))
        last, block = layers[-1], self.dense.visual.transformer.resblocks[-1]
        keep = outlier_keep_map(lof_outliers(last[:, 1:], s.lof_neighbours, s.lof_contamination), *grid)
        similarity = cosine_similarity(fix_outliers(layers[s.pre_adjust_index][:, 1:], keep))
        post = thresholded(cosine_similarity(layers[s.post_adjust_index][:, 1:]), s.beta)

        def calibrated(patches: torch.Tensor, cls_token: torch.Tensor) -> torch.Tensor:
            """Steps 3-4: [B, N, C] patch tokens and their [B, 1, C] class token -> [B, N, C]."""
            attended = self_calibrated_attention(block, patches, similarity, s.attention_sharpness)
            return aggregate(attended + s.res_cls * cls_token, post)

        x = calibrated(aggregate(fix_outliers(last[:, 1:], keep), thresholded(similarity, s.beta)), last[:, :1])
        multi_level = sum(layers[s.multi_start_index : s.multi_end_index])
        x = x + calibrated(multi_level[:, 1:], multi_level[:, :1])
        return self.dense.project(x)


@ENCODER_REGISTRY.register()
def sc_clip(cfg, clip_model: nn.Module) -> SCCLIPEncoder:
    """:class:`SCCLIPEncoder` with ``MODEL.CLEARCLIP.SC_CLIP``; refuses a ``SLIDE_CROP`` whose
    windows are too small for the outlier detection."""
    encoder = SCCLIPEncoder(DenseCLIPEncoder(clip_model.visual), SCCLIPSettings.from_config(cfg))
    crop = int(cfg.MODEL.CLEARCLIP.SLIDE_CROP)
    if crop > 0:
        side = crop // encoder.patch_size
        check_lof_patches(side, side, encoder.settings.lof_neighbours, f"SLIDE_CROP {crop}")
    return encoder
