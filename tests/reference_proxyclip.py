"""An independent, deliberately plain re-statement of the authors' ProxyCLIP inference.

ProxyCLIP (Lan et al., ECCV 2024; github.com/mc-lan/ProxyCLIP, ``proxyclip_segmentor.py`` and
its vendored ``open_clip/transformer.py``): CLIP's last block is replaced by *proxy attention*.
The attention weights come from the cosine similarities of a vision foundation model's (VFM)
last-layer patch tokens, adaptively normalised (``(s - mean(s) * beta) * gamma``), negative
entries masked out; they are applied to CLIP's value vectors resized to the VFM's patch grid;
then CLIP's ``out_proj``, ``ln_post`` and ``proj``. No residual, no MLP.

The authors build the VFM with ``torch.hub`` (DINO ``dino_vitb8``). Here the VFM is a timm
``VisionTransformer`` (``vit_base_patch8_224.dino`` has DINO's weights under the same key names:
``cls_token``, ``pos_embed``, ``patch_embed.proj``, ``blocks[i].norm1/attn.qkv/attn.proj/norm2/
mlp.fc1/mlp.fc2``, ``norm``), and DINO's forward is written out on those modules: its own
positional-embedding interpolation (:func:`dino_interpolate_pos_encoding`, which is NOT timm's
``dynamic_img_size`` resampling) and its own blocks. Nothing here imports the plugin; the steps
that are character for character the same in ClearCLIP's and ProxyCLIP's code (mmcv resize,
normalisation, text embeddings, centred padding, CLIP's positional-embedding interpolation,
the post-processing) come from :mod:`reference_clearclip`.

Geometry: the authors' code only runs square windows correctly. ``forward_feature`` takes the
VFM grid as ``(H // p, H // p)`` (height twice) and the CLIP value grid as ``(W // p, H // p)``;
on a non-square input both reshapes silently scramble the tokens. Every window of their
benchmark configs is square (crop x crop, a multiple of 56), so this reference uses the intended
``(H // p, W // p)`` grids, which equal the authors' on every window their configs produce.
"""

import math

import numpy as np
import torch
import torch.nn.functional as F

import reference_clearclip as clearclip

# The authors' ``UnNormalize`` (CLIP's statistics on the 0-1 scale) then torchvision's
# ``Normalize`` with ImageNet's: the VFM input is re-normalised from the CLIP-normalised window.
CLIP_MEAN_01 = torch.tensor([0.48145466, 0.4578275, 0.40821073]).view(1, 3, 1, 1)
CLIP_STD_01 = torch.tensor([0.26862954, 0.26130258, 0.27577711]).view(1, 3, 1, 1)
IMAGENET_MEAN = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
IMAGENET_STD = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)

# forward_slide pads every window to a multiple of 56 (= lcm(8, 14): DINO /8 and DINOv2 /14),
# hard-coded, whatever the CLIP and VFM patch sizes; 56 is not a multiple of CLIP's 16.
PAD_MULTIPLE = 56
BETA, GAMMA = 1.2, 3.0


def renormalise_for_vfm(img: torch.Tensor) -> torch.Tensor:
    """[B, 3, H, W] CLIP-normalised (mmseg constants) -> ImageNet-normalised for the VFM.

    Applied after the window's zero padding, so padded pixels become (CLIP mean - ImageNet
    mean) / ImageNet std, not zero."""
    return (img * CLIP_STD_01 + CLIP_MEAN_01 - IMAGENET_MEAN) / IMAGENET_STD


def vfm_patch_size(vfm) -> int:
    return vfm.patch_embed.proj.kernel_size[0]


def dino_interpolate_pos_encoding(vfm, x: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """DINO's ``VisionTransformer.interpolate_pos_encoding`` on a timm ViT's ``pos_embed``.

    Unlike timm's ``resample_abs_pos_embed`` (``size=`` the new grid, ``antialias=True``), DINO
    passes ``scale_factor = (grid + 0.1) / sqrt(N)`` to a plain bicubic ``F.interpolate``
    (``align_corners=False``, no antialias): same output size, other sampling positions and kernel.
    Untouched when the token count equals the pretrained one and the input is square.
    """
    npatch = x.shape[1] - 1
    N = vfm.pos_embed.shape[1] - 1
    if npatch == N and height == width:
        return vfm.pos_embed
    class_pos_embed = vfm.pos_embed[:, 0]
    patch_pos_embed = vfm.pos_embed[:, 1:]
    dim = x.shape[-1]
    patch = vfm_patch_size(vfm)
    h0, w0 = height // patch + 0.1, width // patch + 0.1
    side = int(math.sqrt(N))
    patch_pos_embed = F.interpolate(
        patch_pos_embed.reshape(1, side, side, dim).permute(0, 3, 1, 2),
        scale_factor=(h0 / math.sqrt(N), w0 / math.sqrt(N)),
        mode="bicubic",
    )
    assert int(h0) == patch_pos_embed.shape[-2] and int(w0) == patch_pos_embed.shape[-1]
    patch_pos_embed = patch_pos_embed.permute(0, 2, 3, 1).reshape(1, -1, dim)
    return torch.cat((class_pos_embed.unsqueeze(0), patch_pos_embed), dim=1)


def dino_block(blk, x: torch.Tensor) -> torch.Tensor:
    """DINO's ``Block.forward`` (pre-norm attention and MLP, both residual) on timm's modules."""
    B, N, C = x.shape
    attn = blk.attn
    qkv = attn.qkv(blk.norm1(x)).reshape(B, N, 3, attn.num_heads, C // attn.num_heads).permute(2, 0, 3, 1, 4)
    q, k, v = qkv[0], qkv[1], qkv[2]
    weights = ((q @ k.transpose(-2, -1)) * (C // attn.num_heads) ** -0.5).softmax(dim=-1)
    x = x + attn.proj((weights @ v).transpose(1, 2).reshape(B, N, C))
    return x + blk.mlp.fc2(F.gelu(blk.mlp.fc1(blk.norm2(x))))


def vfm_patch_tokens(vfm, img: torch.Tensor) -> torch.Tensor:
    """DINO's ``get_intermediate_layers(img)[0][:, 1:]``: [B, 3, H, W] -> [B, (H/p)*(W/p), C].

    The output of the LAST block after the final LayerNorm ``norm``, class token dropped. (The
    authors also hook ``blocks[-1].attn.qkv``, but its q/k/v are never used.)"""
    assert getattr(vfm, "num_reg_tokens", 0) == 0, "DINO (v1) ViTs have no register tokens"
    B, _, H, W = img.shape
    x = vfm.patch_embed.proj(img).flatten(2).transpose(1, 2)
    x = torch.cat((vfm.cls_token.expand(B, -1, -1), x), dim=1)
    x = x + dino_interpolate_pos_encoding(vfm, x, H, W)
    for blk in vfm.blocks:
        x = dino_block(blk, x)
    return vfm.norm(x)[:, 1:]


def proxy_attention(attn_layer, x, proxy, clip_grid, beta=BETA, gamma=GAMMA):
    """The authors' ``custom_attn`` with ``ex_feats``.

    Args:
        attn_layer: CLIP's last ``nn.MultiheadAttention``.
        x: [L, B, D] sequence first, ``ln_1`` of the last block's input (class token first).
        proxy: [B, C, I, J] VFM patch tokens on the VFM grid.
        clip_grid: (h, w) CLIP patch grid of the window.
    Returns:
        [I*J, B, D]: out_proj of the proxy-attended values, one token per VFM patch, no class token.
    """
    num_heads = attn_layer.num_heads
    _, bsz, embed_dim = x.shape
    head_dim = embed_dim // num_heads
    _, _, v = F.linear(x, attn_layer.in_proj_weight, attn_layer.in_proj_bias).chunk(3, dim=-1)
    v = v.contiguous().view(-1, bsz * num_heads, head_dim).transpose(0, 1)

    _, _, I, J = proxy.shape
    unit = F.normalize(proxy.flatten(2, 3), dim=1)
    similarity = torch.einsum("bcm,bcn->bmn", unit, unit)
    # One mean over the whole tensor: over every window of the batch (the authors' batch is one window).
    similarity = (similarity - torch.mean(similarity) * beta) * gamma
    similarity[similarity < 0.0] = float("-inf")
    mask = similarity.unsqueeze(1).repeat(1, num_heads, 1, 1).reshape(bsz * num_heads, I * J, I * J)
    weights = F.softmax(mask, dim=-1)

    v = v[:, 1:, :].reshape(bsz * num_heads, clip_grid[0], clip_grid[1], head_dim).permute(0, 3, 1, 2)
    v = F.interpolate(v, size=(I, J), mode="bilinear", align_corners=False)
    v = v.permute(0, 2, 3, 1).reshape(bsz * num_heads, I * J, head_dim)

    out = torch.bmm(weights, v).transpose(0, 1).contiguous().view(-1, bsz, embed_dim)
    return attn_layer.out_proj(out)


def encode_image_with_proxy(visual, img, proxy, beta=BETA, gamma=GAMMA):
    """The authors' ``VisionTransformer.forward(x, ex_feats)``: [B, 3, H, W] -> [B, I*J, E]."""
    _, _, H, W = img.shape
    x = visual.conv1(img)
    clip_grid = tuple(x.shape[-2:])  # the conv truncates sizes that are not multiples of the patch
    x = x.reshape(x.shape[0], x.shape[1], -1).permute(0, 2, 1)
    cls = visual.class_embedding.view(1, 1, -1).expand(x.shape[0], -1, -1)
    x = torch.cat([cls.to(x.dtype), x], dim=1)
    if x.shape[1] != visual.positional_embedding.shape[0]:
        x = x + clearclip.interpolate_pos_encoding(visual, x, H, W).to(x.dtype)
    else:
        x = x + visual.positional_embedding.to(x.dtype)
    x = visual.ln_pre(x)
    for blk in visual.transformer.resblocks[:-1]:
        x = blk(x)  # open_clip 3 blocks are batch first
    x = x.permute(1, 0, 2)  # NLD -> LND, as the authors' attention expects
    blk = visual.transformer.resblocks[-1]
    x = proxy_attention(blk.attn, blk.ln_1(x), proxy, clip_grid, beta, gamma)
    x = visual.ln_post(x.permute(1, 0, 2))
    return x @ visual.proj


def forward_feature(visual, vfm, query_features, img, beta=BETA, gamma=GAMMA, logit_size=None):
    """One window (or the whole image): [1, 3, H, W] CLIP-normalised -> [1, Q, *size] cosine logits."""
    patch = vfm_patch_size(vfm)
    I, J = img.shape[-2] // patch, img.shape[-1] // patch
    tokens = vfm_patch_tokens(vfm, renormalise_for_vfm(img))
    proxy = tokens.reshape(img.shape[0], I, J, -1).permute(0, 3, 1, 2)
    features = encode_image_with_proxy(visual, img, proxy, beta, gamma)
    features = features / features.norm(dim=-1, keepdim=True)
    logits = features @ query_features.T
    logits = logits.permute(0, 2, 1).reshape(-1, logits.shape[-1], I, J)
    size = img.shape[-2:] if logit_size is None else logit_size
    return F.interpolate(logits, size=size, mode="bilinear")


def forward_slide(visual, vfm, query_features, img, ori_shape, stride, crop, beta=BETA, gamma=GAMMA,
                  pad_multiple=PAD_MULTIPLE):
    """The authors' ``forward_slide`` (mmseg's loop; windows padded to ``pad_multiple``)."""
    batch_size, _, h_img, w_img = img.shape
    h_grids = max(h_img - crop + stride - 1, 0) // stride + 1
    w_grids = max(w_img - crop + stride - 1, 0) // stride + 1
    preds = img.new_zeros((batch_size, query_features.shape[0], h_img, w_img))
    count_mat = img.new_zeros((batch_size, 1, h_img, w_img))
    for h_idx in range(h_grids):
        for w_idx in range(w_grids):
            y2 = min(h_idx * stride + crop, h_img)
            x2 = min(w_idx * stride + crop, w_img)
            y1, x1 = max(y2 - crop, 0), max(x2 - crop, 0)
            crop_img = img[:, :, y1:y2, x1:x2]
            H, W = crop_img.shape[2:]
            pad = clearclip.compute_padsize(H, W, pad_multiple)
            if any(pad):
                crop_img = F.pad(crop_img, pad)
            crop_seg_logit = forward_feature(visual, vfm, query_features, crop_img, beta, gamma)
            if any(pad):
                crop_seg_logit = crop_seg_logit[:, :, pad[2] : pad[2] + H, pad[0] : pad[0] + W]
            preds += F.pad(crop_seg_logit, (x1, w_img - x2, y1, h_img - y2))
            count_mat[:, :, y1:y2, x1:x2] += 1
    assert (count_mat == 0).sum() == 0
    return F.interpolate(preds / count_mat, size=ori_shape, mode="bilinear")


def segment(clip_model, vfm, query_features, query_idx, image_rgb: np.ndarray, crop=336, stride=112,
            short_side=336, prob_thd=0.0, logit_scale=40.0, beta=BETA, gamma=GAMMA,
            pad_multiple=PAD_MULTIPLE, resize=True):
    """The whole reference pipeline on one original HxWx3 uint8 RGB image.

    ``crop`` 0 is the authors' whole-image mode (no padding; the patch embeddings truncate).
    Returns (probabilities [K, H, W] after the synonym max, NOT renormalised; prediction [H, W],
    0 where the highest probability is below ``prob_thd``).
    """
    ori_shape = image_rgb.shape[:2]
    resized = clearclip.mmcv_rescale(image_rgb, short=short_side) if resize else image_rgb
    img = clearclip.preprocess(resized)
    with torch.no_grad():
        if crop > 0:
            logits = forward_slide(clip_model.visual, vfm, query_features, img, ori_shape, stride, crop,
                                   beta, gamma, pad_multiple)
        else:
            logits = forward_feature(clip_model.visual, vfm, query_features, img, beta, gamma, ori_shape)
    return clearclip.postprocess(logits, logit_scale, query_idx, prob_thd)
