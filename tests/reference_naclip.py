"""An independent, deliberately plain re-statement of the authors' NACLIP inference (v2).

Source: github.com/sinahmr/NACLIP at 0cac3a6 (clip/model.py ``VisionTransformer.forward``
with ``arch='reduced'``, ``custom_attn`` with ``attn_strategy='naclip'``, ``gaussian_window``,
``get_attention_addition``; naclip.py ``NACLIP``; pamr.py; configs/). The window loop, the
PAMR and the class-file rule are SCLIP's (NACLIP is built on SCLIP's code), so they come from
:mod:`reference_sclip`. Nothing here imports the plugin.

What NACLIP does differently from SCLIP's reference:

- last block ("reduced"): ``out_proj(softmax(k k^T s + omega) v)``, NO residual, NO FFN;
  omega is a Gaussian (std 5 patches) of the distance between two patches, 0 in the class
  token's row and column, added to the logits unscaled;
- the averaged window logits (or the whole-image logits, already stretched to the resized
  image) are upsampled to the original size, THEN PAMR (10 steps, dilations 8 and 16, on by
  default) runs on the cosine logits of every query, in both modes;
- after the synonym max and the threshold, the probabilities are renormalised to sum to 1
  over the classes (the prediction is taken before, so it is unchanged).
"""

import functools
import math
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from reference_clearclip import mmcv_rescale, preprocess
from reference_sclip import forward_feature, pamr, slide_average, synonym_max

# The authors' constructor defaults (naclip.py l.20-22); configs override per benchmark.
DEFAULTS = dict(crop=224, stride=112, prob_thd=0.0, logit_scale=40.0, gaussian_std=5.0, pamr_steps=10,
                pamr_dilations=(8, 16), short_side=336, long_side=2048)

# Per benchmark (the project's names) -> the non-default settings of configs/cfg_*.py.
BENCHMARK_SETTINGS = {
    "voc20": dict(short_side=336, crop=0),
    "voc21": dict(short_side=336, crop=0, prob_thd=0.1),
    "context59": dict(short_side=336),
    "context60": dict(short_side=336, prob_thd=0.1),
    "coco_object": dict(short_side=336, prob_thd=0.1),
    "coco_stuff": dict(short_side=336),
    "cityscapes": dict(short_side=560),
    "ade20k": dict(short_side=336),
}


def gaussian_window(dim1: int, dim2: int, std: float) -> torch.Tensor:
    """``VisionTransformer.gaussian_window``: [dim1, dim2], exp(-d^2 / (2 std^2)) around the centre."""
    constant = 1 / (std * math.sqrt(2))
    ks = []
    for dim in (dim1, dim2):
        start = -(dim - 1) / 2.0
        ks.append(torch.linspace(start * constant, (start + (dim - 1)) * constant, steps=dim, dtype=torch.float))
    return torch.exp(-(torch.stack(torch.meshgrid(*ks, indexing="ij")) ** 2).sum(0))


def attention_addition(dim1: int, dim2: int, std: float) -> torch.Tensor:
    """``get_attention_addition`` with the (2 dim1 - 1) x (2 dim2 - 1) window: [1 + n, 1 + n],
    n = dim1 * dim2; row p holds the window centred on patch p (one-hot map convolved with it)."""
    window = gaussian_window(2 * dim1 - 1, 2 * dim2 - 1, std)
    one_hot = torch.eye(dim1 * dim2).view(-1, 1, dim1, dim2)
    out = F.conv2d(one_hot, window[None, None], padding="same").view(dim1 * dim2, dim1 * dim2)
    return F.pad(out, (1, 0, 1, 0))  # class token: zero row and column


def naclip_attention(attn_layer, x: torch.Tensor, n_patches, std: float) -> torch.Tensor:
    """``custom_attn`` with ``attn_strategy='naclip'``; x: [L, N, C] sequence first -> [L, N, C]."""
    num_heads = attn_layer.num_heads
    _, bsz, embed_dim = x.size()
    head_dim = embed_dim // num_heads
    scale = head_dim ** -0.5
    _, k, v = F.linear(x, attn_layer.in_proj_weight, attn_layer.in_proj_bias).chunk(3, dim=-1)  # q unused
    k = k.contiguous().view(-1, bsz * num_heads, head_dim).transpose(0, 1)
    v = v.contiguous().view(-1, bsz * num_heads, head_dim).transpose(0, 1)
    omega = attention_addition(*n_patches, std)[None].to(x.dtype)
    weights = F.softmax(torch.bmm(k, k.transpose(1, 2)) * scale + omega, dim=-1)
    out = torch.bmm(weights, v).transpose(0, 1).contiguous().view(-1, bsz, embed_dim)
    return attn_layer.out_proj(out)


def naclip_last_block(blk, x: torch.Tensor, n_patches, std: float = 5.0) -> torch.Tensor:
    """The "reduced" last block, x [L, N, C] -> the attention branch only (no residual, no FFN)."""
    return naclip_attention(blk.attn, blk.ln_1(x), n_patches, std)


def postprocess(seg_logits, logit_scale, query_idx, prob_thd):
    """``postprocess_result``: [1, Q, H, W] -> (renormalised probabilities [K, H, W], prediction [H, W])."""
    probs = synonym_max(torch.softmax(seg_logits[0] * logit_scale, dim=0), query_idx)
    seg_pred = probs.argmax(0, keepdim=True)
    seg_pred[probs.max(0, keepdim=True)[0] < prob_thd] = 0
    probs = probs / probs.sum(0, keepdim=True)
    return probs, seg_pred[0]


def segment(model, query_features, query_idx, image_rgb: np.ndarray, crop: int = 224, stride: int = 112,
            prob_thd: float = 0.0, logit_scale: float = 40.0, gaussian_std: float = 5.0, pamr_steps: int = 10,
            pamr_dilations: Sequence[int] = (8, 16), short_side: int = 336, long_side: int = 2048, resize: bool = True):
    """NACLIP's whole pipeline on one original HxWx3 uint8 RGB image -> (probs [K, H, W], pred [H, W]).

    ``crop`` 0 = whole-image mode (VOC20/VOC21): the grid logits are stretched to the resized
    image, then (like the windows' average) bilinearly resized to the original size.
    """
    ori_shape = image_rgb.shape[:2]
    resized = mmcv_rescale(image_rgb, short_side, long_side) if resize else image_rgb
    img = preprocess(resized)
    visual = model.visual
    with torch.no_grad():
        last_block = functools.partial(naclip_last_block, std=gaussian_std)
        if crop > 0:
            logits = slide_average(visual, query_features, img, stride, crop, last_block)
        else:
            logits = forward_feature(visual, query_features, img, None, last_block)
        logits = F.interpolate(logits, size=ori_shape, mode="bilinear", align_corners=False)
        if pamr_steps > 0:
            guide = F.interpolate(img, size=ori_shape, mode="bilinear", align_corners=False)
            logits = pamr(guide, logits, pamr_steps, pamr_dilations)
        return postprocess(logits, logit_scale, query_idx, prob_thd)
