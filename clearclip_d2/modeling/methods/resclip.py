"""``ENCODER resclip``: ResCLIP (Yang et al., "ResCLIP: Residual Attention for Training-free
Dense Vision-language Inference", CVPR 2025), as the authors' code runs it
(github.com/yvhangyang/ResCLIP at 0e085f7, ``clip/model.py``, ``arch wo_resi``,
``attn_strategy resclip``: ResCLIP on NACLIP, the configuration of its configs and main results).

Per window (every step is per window, so a batch of windows gives what one at a time gives):

1. blocks 1..L-1 as in CLIP; the q-k attention maps ``softmax(q k^T / sqrt(d))`` (per head,
   class token included) of the blocks ``RCS_LAYERS`` are averaged: the residual
   cross-correlation ``RCS`` [heads, N, N];
2. the last block, without residual and FFN, attends with NACLIP's k-k logits plus Gaussian
   prior ``G``, the RCS mixed in after the softmax (rows then sum to tau_r, not 1)::

       a = tau_r ((1 - lambda_r) softmax(k k^T / sqrt(d) + G) + lambda_r RCS)

3. first pass: its patch features against the text embeddings of all queries, the grid's
   cosines upsampled (bilinear) to the window, PAMR on them (guided by the window's
   CLIP-normalised pixels), ``softmax(LOGIT_SCALE *)`` over queries; per pixel the best query,
   0 where its probability is below ``FIRST_PASS_THRESHOLD``; per patch the most frequent of
   those (``torch.mode``);
4. semantic feedback (SFR) matrix over the patches: 1 between patches of one query, decayed
   where the straight path between them leaves the query, blurred, rows normalised;
5. second pass: the last block again on the same tokens, the SFR matrix S mixed into the logits
   before the softmax: ``tau_s ((1 - lambda_s) k k^T / sqrt(d) + lambda_s S / max S)``; its
   patch features are the encoder's output.

The authors' quirks kept because they change results (tests/reference_resclip.py states each):

- ``S / max S`` is cast to float16 even in fp32 (``model.py`` l.478), so it and its product with
  lambda_s are rounded to half precision (up to 1e-4 on the features if left out);
- the straight-path check samples ``steps(i, j) + 1`` points at ``t = k / max_steps`` with
  ``max_steps`` the longest path of the window, so a short pair checks only the first part of
  its segment (``round`` halves to even);
- the feedback's blur is a 1-D Gaussian (std ``GAUSSIAN_STD``, ``min(N, 6 std + 1)`` taps made
  odd, zero padding) along the FLATTENED patch index: it crosses row boundaries;
- pixels under the first-pass threshold count as query 0, which is a real class on the
  benchmarks without background; ``torch.mode`` takes the smallest of tied queries (CPU);
- patch blocks are cut from the window's pixels, so a window that is not a multiple of the
  patch loses its remainder (as the patch embedding does).

Not restated: the authors' ``area_thd`` branch (``resclip_segmentor.py`` postprocess) cannot
run (it reads the logits with the batch axis as classes; no config sets it); their PAMR, wrapped
in ``try/except RuntimeError``, never fails in current PyTorch, so it always runs here.
"""

from dataclasses import dataclass
from typing import Dict, List, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from ...checks import check_rcs_layers, check_resclip, register_config_check
from ...utils.errors import ClearCLIPError
from ..clip.attention_adapter import merge_heads, project_qkv
from ..clip.decomposition import (
    TokenLayout,
    check_decomposable_block,
    decomposed_block_forward,
    is_standard_block,
    neighbourhood_prior,
    qk_attention,
)
from ..clip.dense_encoder import DenseCLIPEncoder
from ..inference.class_chunks import chunked_labels
from ..inference.slide_inference import patch_logits
from ..refinement.pamr import pamr
from .build import ENCODER_REGISTRY

# Added to the row sums of the feedback matrix before normalising (generate_attention_sfr).
SFR_ROW_EPS = 1e-8


@dataclass(frozen=True)
class ResCLIPSettings:
    """``MODEL.CLEARCLIP.RESCLIP`` with the pipeline values the first pass needs."""

    rcs_layers: Tuple[int, ...]
    rcs_weights: Tuple[float, float]  # (tau_r, lambda_r)
    sfr_weights: Tuple[float, float]  # (tau_s, lambda_s)
    first_pass_threshold: float
    gaussian_std: float
    delete_same_entity: bool
    first_pass_pamr_iterations: int
    first_pass_pamr_dilations: Tuple[int, ...]
    logit_scale: float  # = MODEL.CLEARCLIP.LOGIT_SCALE: the authors' segmentor uses one scale for both
    class_chunk: int  # = MODEL.CLEARCLIP.CLASS_CHUNK: queries per first-pass chunk (results do not depend on it)

    @classmethod
    def from_config(cls, cfg) -> "ResCLIPSettings":
        cc = cfg.MODEL.CLEARCLIP
        rc = cc.RESCLIP
        check_resclip(rc)
        return cls(
            rcs_layers=tuple(int(i) for i in rc.RCS_LAYERS),
            rcs_weights=tuple(float(w) for w in rc.RCS_WEIGHTS),
            sfr_weights=tuple(float(w) for w in rc.SFR_WEIGHTS),
            first_pass_threshold=float(rc.FIRST_PASS_THRESHOLD),
            gaussian_std=float(rc.GAUSSIAN_STD),
            delete_same_entity=bool(rc.DELETE_SAME_ENTITY),
            first_pass_pamr_iterations=int(rc.FIRST_PASS_PAMR_ITERATIONS),
            first_pass_pamr_dilations=tuple(int(d) for d in rc.FIRST_PASS_PAMR_DILATIONS),
            logit_scale=float(cc.LOGIT_SCALE),
            class_chunk=int(cc.CLASS_CHUNK),
        )


@register_config_check
def check_resclip_config(cfg) -> None:
    """``MODEL.CLEARCLIP.RESCLIP`` (run by ``check_clearclip_config``; the RCS layers against the
    model's depth are checked when the encoder is built)."""
    check_resclip(cfg.MODEL.CLEARCLIP.RESCLIP)


# ----------------------------------------------------------------------------- attention
def recording_qk_attention(maps: List[torch.Tensor]):
    """Plain CLIP attention that appends its weights [B, heads, N, N] to ``maps``."""

    def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, layout: TokenLayout) -> torch.Tensor:
        weights = torch.softmax((q * q.shape[-1] ** -0.5) @ k.transpose(-2, -1), dim=-1)
        maps.append(weights)
        return weights @ v

    return attention


def resclip_attention(
    k: torch.Tensor,
    v: torch.Tensor,
    prior: torch.Tensor,
    rcs: torch.Tensor,
    rcs_weights: Tuple[float, float],
    sfr: Optional[torch.Tensor] = None,
    sfr_weights: Optional[Tuple[float, float]] = None,
) -> torch.Tensor:
    """The last block's attention (``custom_attn`` with ``attn_strategy='resclip'``).

    Args:
        k, v: [B, heads, N, d] keys and values.
        prior: [N, N] NACLIP's Gaussian prior, added to the logits.
        rcs: [B, heads, N, N] averaged attention maps, mixed in after the softmax.
        sfr: [B, N, N] feedback matrix (second pass), mixed in before the softmax; each window's
            is divided by its maximum and rounded to float16, and so is its product with
            lambda_s (the authors' cast; the sum with the logits is in their precision).
    Returns:
        [B, heads, N, d].
    """
    logits = (k @ k.transpose(-2, -1)) * k.shape[-1] ** -0.5
    if sfr is not None:
        # The authors' cast: S / max S in float16, and lambda_s * that product in float16 too.
        sfr = (sfr / sfr.amax(dim=(-2, -1), keepdim=True)).to(torch.float16)[:, None]
        tau, lam = sfr_weights
        logits = tau * ((1 - lam) * logits + lam * sfr)
    weights = torch.softmax(logits + prior, dim=-1)
    tau, lam = rcs_weights
    weights = tau * ((1 - lam) * weights + lam * rcs)
    return weights @ v


# ----------------------------------------------------------------------------- semantic feedback
def patch_modes(labels: torch.Tensor, grid: Tuple[int, int], patch: int) -> torch.Tensor:
    """[H, W] int64 labels -> [grid_h, grid_w]: the most frequent label of each patch x patch
    block (``torch.mode``: the smallest of tied labels on the CPU), pixels past the last whole
    patch left out."""
    grid_h, grid_w = grid
    blocks = labels[: grid_h * patch, : grid_w * patch].reshape(grid_h, patch, grid_w, patch)
    return torch.mode(blocks.permute(0, 2, 1, 3).reshape(grid_h, grid_w, patch * patch), dim=-1).values


def straight_paths_within_class(classes: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """The authors' ``check_path`` for every pair of patches of a [h, w] class map.

    Returns (stays [N, N] bool, steps [N, N] int64), N = h * w row-major: ``steps`` is the
    Chebyshev distance of patches i and j; ``stays[i, j]`` whether the points
    ``round(p_i (1 - t) + p_j t)``, ``t = k / max_steps`` for ``k = 0..steps[i, j]``, all have
    the class of i, ``max_steps`` being the largest distance in the map (so a short pair
    checks only the first part of its segment). One step at a time: memory O(N^2).
    """
    h, w = classes.shape
    index = torch.arange(h * w, device=classes.device)
    coords = torch.stack((index // w, index % w), dim=-1)  # [N, 2]
    start, end = coords[:, None, :], coords[None, :, :]
    steps = (end - start).abs().amax(dim=-1)
    max_steps = int(steps.max().item())
    flat = classes.reshape(-1)
    start_class = flat[:, None]
    stays = torch.ones_like(steps, dtype=torch.bool)
    for k, t in enumerate(torch.linspace(0, 1, steps=max_steps + 1, device=classes.device)):
        point = (start * (1 - t) + end * t).round().long()
        on_class = flat[point[..., 0] * w + point[..., 1]] == start_class
        stays &= on_class | (steps < k)
    return stays, steps


def blur_rows(matrix: torch.Tensor, std: float) -> torch.Tensor:
    """Each row of [N, N] convolved with a normalised 1-D Gaussian (``min(N, int(6 std + 1))``
    taps, made odd; zero padding), as ``generate_attention_sfr`` does along the flattened index."""
    taps = min(matrix.shape[-1], int(6 * std + 1))
    taps = taps if taps % 2 == 1 else taps + 1
    x = torch.arange(taps, device=matrix.device) - taps // 2
    kernel = torch.exp(-(x**2) / (2 * std**2))
    kernel = (kernel / kernel.sum()).to(matrix.dtype)
    return F.conv1d(matrix[:, None], kernel.view(1, 1, -1), padding=taps // 2)[:, 0]


def feedback_matrix(
    classes: torch.Tensor, std: float, delete_same_entity: bool, num_prefix_tokens: int = 1
) -> torch.Tensor:
    """``generate_attention_sfr``: [h, w] patch classes -> [P + N, P + N] float32 (P prefix
    tokens with zero rows and columns): 1 between patches of one class (``delete_same_entity``:
    times ``exp(-steps / max_steps)`` where the straight path leaves the class), rows blurred by
    :func:`blur_rows`, rectified and normalised to sum 1."""
    flat = classes.reshape(-1)
    same = (flat[:, None] == flat[None, :]).float()
    if delete_same_entity:
        stays, steps = straight_paths_within_class(classes)
        same = torch.where(stays, same, same * torch.exp(-steps / steps.max()))
    blurred = F.relu(blur_rows(same, std))
    normalised = blurred / (blurred.sum(dim=1, keepdim=True) + SFR_ROW_EPS)
    return F.pad(normalised, (num_prefix_tokens, 0, num_prefix_tokens, 0))


# ----------------------------------------------------------------------------- encoder
class ResCLIPEncoder(DenseCLIPEncoder):
    """ResCLIP's dense features (see the module docstring); ``forward(images, text_embeddings)``."""

    uses_text = True

    def __init__(self, visual: nn.Module, settings: ResCLIPSettings):
        # The parent's last-block switches go unused: forward runs the last block itself.
        super().__init__(visual, attention="kk", residual=False, ffn=False)
        blocks = visual.transformer.resblocks
        check_rcs_layers(settings.rcs_layers, len(blocks) - 1)
        for index in settings.rcs_layers:
            check_decomposable_block(blocks[index])
        self.settings = settings

    @classmethod
    def from_config(cls, visual: nn.Module, cfg) -> "ResCLIPEncoder":
        return cls(visual, ResCLIPSettings.from_config(cfg))

    def forward(self, images: torch.Tensor, text_embeddings: Optional[torch.Tensor] = None) -> torch.Tensor:
        """images [B, 3, h, w] CLIP-normalised, text_embeddings [Q, D] unit rows (all queries)
        -> [B, (h // p) * (w // p), D] second-pass patch features."""
        if text_embeddings is None:
            raise ClearCLIPError(
                "ENCODER resclip needs the text embeddings: call it as encoder(images, text_embeddings=...)"
            )
        layout = self.token_layout(*images.shape[-2:])
        x, rcs = self.tokens_and_rcs(images, layout)
        block = self.visual.transformer.resblocks[-1]
        _, k, v = project_qkv(block.attn, block.ln_1(x))
        prior = neighbourhood_prior(layout, self.settings.gaussian_std, device=k.device, dtype=k.dtype)

        def last_block(sfr: Optional[torch.Tensor] = None) -> torch.Tensor:
            heads = resclip_attention(k, v, prior, rcs, self.settings.rcs_weights, sfr, self.settings.sfr_weights)
            return self.project_tokens(block.ls_1(merge_heads(block.attn, heads)))

        classes = self.first_pass_classes(last_block(), images, text_embeddings, layout)
        s = self.settings
        prefix = layout.num_prefix_tokens
        sfr = torch.stack([feedback_matrix(c, s.gaussian_std, s.delete_same_entity, prefix) for c in classes])
        return last_block(sfr)

    def tokens_and_rcs(self, images: torch.Tensor, layout: TokenLayout) -> Tuple[torch.Tensor, torch.Tensor]:
        """Tokens entering the last block [B, N, C] and the mean attention map of ``rcs_layers``
        [B, heads, N, N]."""
        x = self.embed(images)
        maps: Dict[int, torch.Tensor] = {}
        for index, block in enumerate(self.visual.transformer.resblocks[:-1]):
            if index in self.settings.rcs_layers:
                recorded: List[torch.Tensor] = []
                x = decomposed_block_forward(block, x, recording_qk_attention(recorded), True, True, layout)
                maps[index] = recorded[0]
            elif is_standard_block(block):
                x = decomposed_block_forward(block, x, qk_attention, True, True, layout)
            else:
                x = self.open_clip_block(block, x)
        return x, torch.stack([maps[i] for i in self.settings.rcs_layers]).mean(dim=0)

    def first_pass_classes(
        self, features: torch.Tensor, images: torch.Tensor, text: torch.Tensor, layout: TokenLayout
    ) -> torch.Tensor:
        """[B, N_patches, D] first-pass features -> [B, grid_h, grid_w] int64 query per patch.

        Per window the queries go ``class_chunk`` at a time through the upsampling, PAMR and a
        running softmax (:func:`~..inference.class_chunks.chunked_labels`), so a large
        vocabulary needs ``class_chunk x h x w`` floats, not ``Q x h x w``.
        """
        s = self.settings
        grid = (layout.grid_h, layout.grid_w)
        size = tuple(images.shape[-2:])
        features = F.normalize(features, dim=-1)
        queries = torch.arange(text.shape[0], device=text.device)
        classes = []
        for window_features, image in zip(features, images):

            def chunk_logits(chunk: torch.Tensor) -> torch.Tensor:
                logits = patch_logits(window_features, grid, chunk)[None]
                logits = F.interpolate(logits, size=size, mode="bilinear", align_corners=False)[0]
                if s.first_pass_pamr_iterations > 0:
                    logits = pamr(logits, image, s.first_pass_pamr_iterations, s.first_pass_pamr_dilations)
                return logits

            labels, _ = chunked_labels(
                chunk_logits, text, size, s.logit_scale, queries, s.first_pass_threshold, s.class_chunk
            )
            classes.append(patch_modes(labels, grid, self.patch_size))
        return torch.stack(classes)


@ENCODER_REGISTRY.register()
def resclip(cfg, clip_model: nn.Module) -> ResCLIPEncoder:
    """:class:`ResCLIPEncoder` with ``MODEL.CLEARCLIP.RESCLIP`` (and ``LOGIT_SCALE``, ``CLASS_CHUNK``)."""
    return ResCLIPEncoder.from_config(clip_model.visual, cfg)
