"""An independent, deliberately plain re-statement of the authors' SCLIP inference.

Source: github.com/wangf3014/SCLIP at b56bd30 (clip/model.py ``VisionTransformer.forward`` /
``custom_attn(csa=True)``, clip_segmentor.py ``CLIPForSegmentation``, pamr.py, configs/).
Like :mod:`reference_clearclip` it follows the released code step by step (sequence-first
tokens, explicit ``bmm`` attention, one window at a time, a count matrix, mmcv's resize rule)
so that the plugin's batched code can be checked against it. Nothing here imports the plugin.

What SCLIP does differently from ClearCLIP's reference:

- last block: correlative self-attention ``(softmax(q q^T s) + softmax(k k^T s)) v`` WITH the
  residual and the FFN (``x + attn``, then ``x + mlp(ln_2(x))``);
- windows are NOT padded: the patch embedding (stride = kernel = patch) drops the last
  ``size % patch`` rows/columns, and the truncated patch grid's logits are stretched over the
  whole window (``F.interpolate(size=window size)``);
- PAMR (off in every released config: ``pamr_steps=0``) runs on the averaged cosine logits of
  every query at the original size, BEFORE the logit scale and the softmax, and only in
  sliding-window mode;
- ``area_thd``: after the synonym max, every non-background class whose argmax area is not
  above ``area_thd`` times the total non-background argmax area gets its probabilities set
  to 0 (VOC21: 0.1); the probabilities are not renormalised.

The model is an open_clip CLIP (its blocks are batch first; the authors' are sequence first)
whose last block has a standard ``nn.MultiheadAttention`` and identity layer scales.
"""

from typing import List, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F

from reference_clearclip import interpolate_pos_encoding, mmcv_rescale, preprocess

# The authors' constructor defaults (clip_segmentor.py l.19-21); configs override per benchmark.
DEFAULTS = dict(crop=224, stride=112, prob_thd=0.0, logit_scale=40.0, area_thd=None, pamr_steps=0,
                pamr_dilations=(8, 16), short_side=336, long_side=2048)

# Per benchmark (the project's names) -> the non-default settings of configs/cfg_*.py.
BENCHMARK_SETTINGS = {
    "voc20": dict(short_side=336),
    "voc21": dict(short_side=336, logit_scale=65.0, prob_thd=0.1, area_thd=0.1),
    "context59": dict(short_side=336),
    "context60": dict(short_side=336, logit_scale=50.0, prob_thd=0.1),
    "coco_object": dict(short_side=336, logit_scale=50.0, prob_thd=0.1),
    "coco_stuff": dict(short_side=448),  # cfg_coco_stuff164k.py (cfg_coco_stuff10k.py: 336)
    "cityscapes": dict(short_side=560),
    "ade20k": dict(short_side=336),
}


def read_class_file(path: str) -> Tuple[List[str], List[int]]:
    """``get_cls_idx``: one class a line, synonyms separated by ', ' -> (queries, query_idx)."""
    with open(path) as f:
        lines = f.readlines()
    queries, query_idx = [], []
    for index, line in enumerate(lines):
        names = line.split(", ")
        queries += [name.replace("\n", "") for name in names]
        query_idx += [index] * len(names)
    return queries, query_idx


# --------------------------------------------------------------------------- encoder
def csa_attention(attn_layer, x: torch.Tensor) -> torch.Tensor:
    """``custom_attn(csa=True)``; x: [L, N, C] sequence first -> [L, N, C]."""
    num_heads = attn_layer.num_heads
    _, bsz, embed_dim = x.size()
    head_dim = embed_dim // num_heads
    scale = head_dim ** -0.5
    q, k, v = F.linear(x, attn_layer.in_proj_weight, attn_layer.in_proj_bias).chunk(3, dim=-1)
    q = q.contiguous().view(-1, bsz * num_heads, head_dim).transpose(0, 1)
    k = k.contiguous().view(-1, bsz * num_heads, head_dim).transpose(0, 1)
    v = v.contiguous().view(-1, bsz * num_heads, head_dim).transpose(0, 1)
    q_attn = torch.bmm(q, q.transpose(1, 2)) * scale
    k_attn = torch.bmm(k, k.transpose(1, 2)) * scale
    weights = F.softmax(q_attn, dim=-1) + F.softmax(k_attn, dim=-1)
    out = torch.bmm(weights, v).transpose(0, 1).contiguous().view(-1, bsz, embed_dim)
    return attn_layer.out_proj(out)


def sclip_last_block(blk, x: torch.Tensor, n_patches: Tuple[int, int]) -> torch.Tensor:
    """SCLIP's last block, x [L, N, C]: CSA with the residual, then the FFN with its residual
    (``n_patches``, the input's patch grid, is not used)."""
    x = x + csa_attention(blk.attn, blk.ln_1(x))
    return x + blk.mlp(blk.ln_2(x))


def encode_image(visual, img: torch.Tensor, last_block=sclip_last_block) -> torch.Tensor:
    """The authors' ``VisionTransformer.forward(return_all=True)``: [B, 3, H, W] -> [B, 1 + n, D]
    (class token first; H, W need not be multiples of the patch: conv1 truncates).

    ``last_block(blk, x [L, N, C], n_patches)`` runs the method's last block; ``n_patches`` =
    (H // p, W // p) as NACLIP's forward computes it."""
    _, _, w, h = img.shape
    n_patches = (w // visual.patch_size[0], h // visual.patch_size[1])
    x = visual.conv1(img)
    x = x.reshape(x.shape[0], x.shape[1], -1).permute(0, 2, 1)
    cls = visual.class_embedding.view(1, 1, -1).expand(x.shape[0], -1, -1)
    x = torch.cat([cls.to(x.dtype), x], dim=1)
    # As released: interpolated only when the token COUNT differs (a 7x28 grid on a 14x14
    # model uses the 14x14 table as it is).
    if x.shape[1] != visual.positional_embedding.shape[0]:
        x = x + interpolate_pos_encoding(visual, x, w, h).to(x.dtype)
    else:
        x = x + visual.positional_embedding.to(x.dtype)
    x = visual.ln_pre(x)
    x = x.permute(1, 0, 2)  # NLD -> LND
    for blk in visual.transformer.resblocks[:-1]:
        x = blk(x.permute(1, 0, 2)).permute(1, 0, 2)  # open_clip 3 blocks are batch first
    x = last_block(visual.transformer.resblocks[-1], x, n_patches)
    return visual.ln_post(x.permute(1, 0, 2)) @ visual.proj


# --------------------------------------------------------------------------- logits
def patch_grid_logits(visual, query_features, img, last_block=sclip_last_block) -> torch.Tensor:
    """[1, 3, H, W] -> [1, Q, H // p, W // p] cosines of the (truncated) patch grid."""
    features = encode_image(visual, img, last_block)[:, 1:]
    features = features / features.norm(dim=-1, keepdim=True)
    logits = features @ query_features.T
    patch = visual.patch_size[0]
    w, h = img[0].shape[-2] // patch, img[0].shape[-1] // patch
    return logits.permute(0, 2, 1).reshape(-1, logits.shape[-1], w, h)


def forward_feature(visual, query_features, img, logit_size=None, last_block=sclip_last_block) -> torch.Tensor:
    """``forward_feature``: the grid logits bilinearly stretched to ``logit_size`` (default: the input size)."""
    logits = patch_grid_logits(visual, query_features, img, last_block)
    size = img.shape[-2:] if logit_size is None else logit_size
    return F.interpolate(logits, size=size, mode="bilinear", align_corners=False)


def slide_average(visual, query_features, img, stride, crop, last_block=sclip_last_block) -> torch.Tensor:
    """The window loop of ``forward_slide`` (no padding): [1, 3, H, W] -> [1, Q, H, W] averaged logits."""
    batch_size, _, h_img, w_img = img.shape
    h_grids = max(h_img - crop + stride - 1, 0) // stride + 1
    w_grids = max(w_img - crop + stride - 1, 0) // stride + 1
    preds = img.new_zeros((batch_size, query_features.shape[0], h_img, w_img))
    count_mat = img.new_zeros((batch_size, 1, h_img, w_img))
    for h_idx in range(h_grids):
        for w_idx in range(w_grids):
            y1 = h_idx * stride
            x1 = w_idx * stride
            y2 = min(y1 + crop, h_img)
            x2 = min(x1 + crop, w_img)
            y1 = max(y2 - crop, 0)
            x1 = max(x2 - crop, 0)
            crop_seg_logit = forward_feature(visual, query_features, img[:, :, y1:y2, x1:x2], None, last_block)
            preds += F.pad(crop_seg_logit, (int(x1), int(preds.shape[3] - x2), int(y1), int(preds.shape[2] - y2)))
            count_mat[:, :, y1:y2, x1:x2] += 1
    assert (count_mat == 0).sum() == 0
    return preds / count_mat


# --------------------------------------------------------------------------- PAMR (pamr.py)
def _difference_kernel() -> torch.Tensor:
    """``LocalAffinity``: 8 kernels, centre minus one of the 8 neighbours of a 3x3 window."""
    weight = torch.zeros(8, 1, 3, 3)
    weight[:, 0, 1, 1] = 1
    for i, (r, c) in enumerate([(0, 0), (0, 1), (0, 2), (1, 0), (1, 2), (2, 0), (2, 1), (2, 2)]):
        weight[i, 0, r, c] = -1
    return weight


def _copy_kernel() -> torch.Tensor:
    """``LocalAffinityCopy``: 8 kernels, each picking one neighbour."""
    weight = torch.zeros(8, 1, 3, 3)
    for i, (r, c) in enumerate([(0, 0), (0, 1), (0, 2), (1, 0), (1, 2), (2, 0), (2, 1), (2, 2)]):
        weight[i, 0, r, c] = 1
    return weight


def _window_kernel() -> torch.Tensor:
    """``LocalStDev``: 9 kernels, each picking one of the 9 values of the 3x3 window."""
    return torch.eye(9).view(9, 1, 3, 3)


def _local(x: torch.Tensor, kernel: torch.Tensor, dilations: Sequence[int]) -> torch.Tensor:
    """[B, K, H, W] -> [B, K, P, H, W]: the kernel's taps per dilation (replicate padding)."""
    B, K, H, W = x.size()
    x = x.reshape(B * K, 1, H, W)
    taps = [F.conv2d(F.pad(x, [d] * 4, mode="replicate"), kernel.to(x.dtype), dilation=d) for d in dilations]
    return torch.cat(taps, 1).view(B, K, -1, H, W)


def pamr(image: torch.Tensor, mask: torch.Tensor, num_iter: int, dilations: Sequence[int]) -> torch.Tensor:
    """``PAMR(num_iter, dilations)(image, mask)``: image [B, 3, H, W], mask [B, C, h, w] -> [B, C, H, W]."""
    mask = F.interpolate(mask, size=image.size()[-2:], mode="bilinear", align_corners=True)
    x_std = _local(image, _window_kernel(), dilations).std(2, keepdim=True)
    x = -torch.abs(_local(image, _difference_kernel(), dilations)) / (1e-8 + 0.1 * x_std)
    x = F.softmax(x.mean(1, keepdim=True), 2)
    for _ in range(num_iter):
        mask = (_local(mask, _copy_kernel(), dilations) * x).sum(2)
    return mask


# --------------------------------------------------------------------------- post-processing
def synonym_max(probs: torch.Tensor, query_idx) -> torch.Tensor:
    """[Q, H, W] -> [K, H, W]: the max over each class's queries (identity when Q == K)."""
    query_idx = torch.as_tensor(query_idx, dtype=torch.int64)
    num_cls, num_queries = int(query_idx.max()) + 1, len(query_idx)
    if num_cls == num_queries:
        return probs
    cls_index = F.one_hot(query_idx).T.view(num_cls, num_queries, 1, 1)
    return (probs.unsqueeze(0) * cls_index).max(1)[0]


def postprocess(seg_logits, logit_scale, query_idx, prob_thd, area_thd=None):
    """``postprocess_result``: [1, Q, H, W] -> (probabilities [K, H, W], prediction [H, W])."""
    probs = synonym_max((seg_logits[0] * logit_scale).softmax(0), query_idx)
    num_cls = probs.shape[0]
    if area_thd is not None:
        predictions = F.one_hot(probs.argmax(0), num_cls).to(probs.dtype)  # [H, W, K]
        area_pred = predictions[:, :, 1:].sum((0, 1), keepdim=True)  # background left out
        area_pred = (area_pred > area_thd * area_pred.sum()).to(probs.dtype)
        probs[1:] *= area_pred.transpose(0, -1)
    seg_pred = probs.argmax(0, keepdim=True)
    seg_pred[probs.max(0, keepdim=True)[0] < prob_thd] = 0
    return probs, seg_pred[0]


def segment(model, query_features, query_idx, image_rgb: np.ndarray, crop: int = 224, stride: int = 112,
            prob_thd: float = 0.0, logit_scale: float = 40.0, area_thd: Optional[float] = None, pamr_steps: int = 0,
            pamr_dilations: Sequence[int] = (8, 16), short_side: int = 336, long_side: int = 2048, resize: bool = True):
    """SCLIP's whole pipeline on one original HxWx3 uint8 RGB image -> (probs [K, H, W], pred [H, W]).

    ``crop`` 0 = whole-image mode (``slide_crop=0``; no released config uses it): the grid
    logits go straight to the original size and PAMR is NOT applied (as released).
    """
    ori_shape = image_rgb.shape[:2]
    resized = mmcv_rescale(image_rgb, short_side, long_side) if resize else image_rgb
    img = preprocess(resized)
    visual = model.visual
    with torch.no_grad():
        if crop > 0:
            logits = F.interpolate(slide_average(visual, query_features, img, stride, crop), size=ori_shape, mode="bilinear")
            if pamr_steps > 0:
                guide = F.interpolate(img, size=ori_shape, mode="bilinear")
                logits = pamr(guide, logits, pamr_steps, pamr_dilations)
        else:
            logits = forward_feature(visual, query_features, img, ori_shape)
        return postprocess(logits, logit_scale, query_idx, prob_thd, area_thd)
