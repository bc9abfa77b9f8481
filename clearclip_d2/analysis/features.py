"""The paper's analysis of CLIP's residual stream (ClearCLIP, Sec. 3; Figs. 2-6).

Every block of a ViT computes ``X_sum = X_res + X_attn`` (then its feed-forward network):
``X_res`` is the block's input (the residual connection) and ``X_attn`` the output of its
attention branch. This module exposes both for every block (:func:`decompose_blocks`), the
statistics the paper plots (:func:`feature_norm`, :func:`normalised_entropy`,
:func:`feature_maximum`, :func:`channel_mean`, all over the patch tokens) and an encoder
that segments with a mix ``res_weight * X_res + attn_weight * X_attn`` of the last block
(:class:`LastBlockFeatureEncoder`: ``X_res``, ``X_attn``, ``X_sum`` and the
``X_res + alpha * X_attn`` sweep of Fig. 6), which plugs into the segmentor in place of
:class:`~clearclip_d2.modeling.clip.dense_encoder.DenseCLIPEncoder`. :class:`FeatureStatistics`
accumulates the statistics over batches of images.
"""

import math
from collections import defaultdict
from dataclasses import dataclass
from typing import Dict, Iterator, List, Optional, Tuple

import torch
from torch import nn

from ..modeling.clip.decomposition import (
    AttentionFn,
    attention_branch,
    check_decomposable_block,
    feed_forward_branch,
    qk_attention,
)
from ..modeling.clip.dense_encoder import DenseCLIPEncoder

# (res_weight, attn_weight) of each of the paper's features of a block (see LastBlockFeatureEncoder).
FEATURE_WEIGHTS = {"x_res": (1.0, 0.0), "x_attn": (0.0, 1.0), "x_sum": (1.0, 1.0)}
FEATURES = tuple(FEATURE_WEIGHTS)


@dataclass
class BlockDecomposition:
    """The two summands of one block, batch first, class token first: each [B, 1 + N, C]."""

    layer: int  # 1-based block index
    x_res: torch.Tensor
    x_attn: torch.Tensor

    @property
    def x_sum(self) -> torch.Tensor:
        return self.x_res + self.x_attn

    def patches(self, feature: str) -> torch.Tensor:
        """``feature`` ("x_res", "x_attn" or "x_sum") without the class token: [B, N, C]."""
        return getattr(self, feature)[:, 1:]


def decompose_blocks(
    encoder: DenseCLIPEncoder, images: torch.Tensor, last_attention: Optional[AttentionFn] = None
) -> Iterator[BlockDecomposition]:
    """Run the image tower block by block and yield ``(X_res, X_attn)`` of every block.

    The blocks compute what open_clip's blocks compute (q-k attention, residual, FFN), so
    the stream is CLIP's own; ``last_attention`` replaces the attention of the last block's
    ``X_attn`` only (Fig. 2 of the paper compares attention variants there).

    Args:
        encoder: wraps the open_clip image tower (its embedding and positional interpolation are used).
        images: normalised images [B, 3, H, W], H and W multiples of the patch size.
    """
    blocks = encoder.visual.transformer.resblocks
    for block in blocks:
        check_decomposable_block(block)
    layout = encoder.token_layout(*images.shape[-2:])
    x = encoder.embed(images)
    for index, block in enumerate(blocks):
        is_last = index == len(blocks) - 1
        attention = last_attention if (is_last and last_attention is not None) else qk_attention
        x_attn = attention_branch(block, x, attention, layout)
        yield BlockDecomposition(index + 1, x, x_attn)
        if not is_last:
            x = x + x_attn
            x = x + feed_forward_branch(block, x)


def feature_norm(patches: torch.Tensor) -> torch.Tensor:
    """Mean over the patches of each token's L2 norm: [B, N, C] -> [B]."""
    return patches.float().norm(dim=-1).mean(dim=-1)


def normalised_entropy(patches: torch.Tensor) -> torch.Tensor:
    """The paper's Eq. 5, per image: [B, N, C] -> [B], in [0, 1].

    ``H(X) = -1 / log(N C) * sum_ij p_ij log p_ij`` with ``p = softmax`` over all ``N x C``
    entries of the image's patch features (N = h w patches, C channels). 1 means all entries
    equal; values near 0 mean a few entries dominate (the peaks of CLIP's residual stream).
    """
    flat = patches.float().flatten(1)
    log_p = torch.log_softmax(flat, dim=1)
    return -(log_p.exp() * log_p).sum(dim=1) / math.log(flat.shape[1])


def feature_maximum(patches: torch.Tensor) -> torch.Tensor:
    """The largest entry of each image's patch features: [B, N, C] -> [B]."""
    return patches.float().flatten(1).max(dim=1).values


def channel_mean(patches: torch.Tensor) -> torch.Tensor:
    """Mean of each channel over all patches of all images: [B, N, C] -> [C]."""
    return patches.float().mean(dim=(0, 1))


class FeatureStatistics:
    """Running per-layer statistics over batches of images (the paper's Figs. 2, 4 and 5).

    Per image: mean token norm, normalised entropy and maximum of each block's ``X_res``,
    ``X_attn`` and ``X_sum`` (patch tokens only), and the norms of the last block's ``X_attn``
    under each attention variant in ``variants``; results are means over the images. Channel
    means are over all patches of all images.
    """

    STATISTICS = {"norm": feature_norm, "entropy": normalised_entropy, "maximum": feature_maximum}

    def __init__(self, variants: Optional[Dict[str, AttentionFn]] = None):
        self.variants = dict(variants or {})
        self.num_images = 0
        self.num_patches = 0
        self._sums: Dict[Tuple[int, str, str], float] = defaultdict(float)
        self._channel_sums: Dict[Tuple[int, str], torch.Tensor] = {}
        self._variant_sums: Dict[str, float] = defaultdict(float)

    @torch.no_grad()
    def update(self, encoder: DenseCLIPEncoder, images: torch.Tensor) -> None:
        """Add a batch of normalised images [B, 3, H, W] (H, W multiples of the patch size)."""
        last_block = None
        for block in decompose_blocks(encoder, images):  # one block at a time: memory stays small
            for feature in FEATURES:
                patches = block.patches(feature)  # [B, N, C]
                for name, statistic in self.STATISTICS.items():
                    self._sums[(block.layer, feature, name)] += statistic(patches).sum().item()
                key = (block.layer, feature)
                self._channel_sums[key] = self._channel_sums.get(key, 0) + patches.double().sum(dim=(0, 1)).cpu()
            last_block = block
        x_res = last_block.x_res
        layout = encoder.token_layout(*images.shape[-2:])
        for name, attention in self.variants.items():
            x_attn = attention_branch(encoder.visual.transformer.resblocks[-1], x_res, attention, layout)
            self._variant_sums[name] += feature_norm(x_attn[:, 1:]).sum().item()
        self.num_images += images.shape[0]
        self.num_patches += images.shape[0] * (x_res.shape[1] - 1)

    @property
    def layers(self) -> List[int]:
        return sorted({key[0] for key in self._channel_sums})

    def layer_rows(self) -> List[Tuple[int, str, float, float, float]]:
        """``(layer, feature, norm, entropy, maximum)`` for every block and feature, means over the images."""
        return [
            (layer, feature, *(self._sums[(layer, feature, name)] / self.num_images for name in self.STATISTICS))
            for layer in self.layers
            for feature in FEATURES
        ]

    def channel_means(self, layer: int, feature: str) -> torch.Tensor:
        """[C] mean of each channel of ``feature`` in block ``layer`` over all patches (float64)."""
        return self._channel_sums[(layer, feature)] / self.num_patches

    def variant_rows(self) -> List[Tuple[str, float, float]]:
        """``(variant, norm of X_res, norm of X_attn)`` of the last block, means over the images."""
        norm_x_res = self._sums[(self.layers[-1], "x_res", "norm")] / self.num_images
        return [(name, norm_x_res, self._variant_sums[name] / self.num_images) for name in self.variants]


class LastBlockFeatureEncoder(DenseCLIPEncoder):
    """Dense features from the last block's ``res_weight * X_res + attn_weight * X_attn``.

    ``(1, 0)`` is ``X_res``, ``(0, 1)`` ``X_attn`` (as ``RESIDUAL False, FFN False``),
    ``(1, 1)`` ``X_sum`` (as ``RESIDUAL True, FFN False``) and ``(1, alpha)`` the sweep of the
    paper's Fig. 6. No FFN; ``ln_post`` and the projection follow, as for every dense feature.
    Output: [B, N, D] like :class:`DenseCLIPEncoder`.
    """

    def __init__(
        self,
        visual: nn.Module,
        attention: str = "qk",
        res_weight: float = 0.0,
        attn_weight: float = 1.0,
        naclip_std: Optional[float] = None,
    ):
        super().__init__(visual, attention=attention, residual=False, ffn=False, naclip_std=naclip_std)
        self.res_weight = float(res_weight)
        self.attn_weight = float(attn_weight)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x_res = self.forward_until_last_block(images)
        last_block = self.visual.transformer.resblocks[-1]
        x_attn = attention_branch(last_block, x_res, self.attention, self.token_layout(*images.shape[-2:]))
        return self.project_tokens(self.res_weight * x_res + self.attn_weight * x_attn)
