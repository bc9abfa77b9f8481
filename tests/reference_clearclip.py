"""An independent, deliberately plain re-statement of the authors' ClearCLIP inference.

It follows the structure of the released mmseg implementation step by step (sequence-first
tokens, explicit ``bmm`` attention, one window at a time, a count matrix, the pad/cut of
each window, mmcv's resize rule) so that the plugin's batched, fused code can be checked
against it. Nothing here imports the plugin.
"""

import math

import cv2
import numpy as np
import torch
import torch.nn.functional as F

MEAN = torch.tensor([122.771, 116.746, 104.094]).view(1, 3, 1, 1)
STD = torch.tensor([68.501, 66.632, 70.323]).view(1, 3, 1, 1)


def mmcv_rescale(image: np.ndarray, short: int = 448, long: int = 2048) -> np.ndarray:
    """mmcv ``imrescale(img, (2048, 448))`` with the cv2 backend and bilinear interpolation."""
    h, w = image.shape[:2]
    scale_factor = min(long / max(h, w), short / min(h, w))
    new_w, new_h = int(w * float(scale_factor) + 0.5), int(h * float(scale_factor) + 0.5)
    return cv2.resize(image, (new_w, new_h), interpolation=cv2.INTER_LINEAR)


def preprocess(image_rgb: np.ndarray) -> torch.Tensor:
    """HxWx3 uint8 RGB -> [1, 3, H, W] normalised (the SegDataPreProcessor)."""
    x = torch.from_numpy(image_rgb).permute(2, 0, 1)[None].float()
    return (x - MEAN) / STD


def text_features(model, tokenizer, queries, templates):
    rows = []
    with torch.no_grad():
        for query in queries:
            tokens = tokenizer([t.format(query) for t in templates])
            feature = model.encode_text(tokens)
            feature = feature / feature.norm(dim=-1, keepdim=True)
            feature = feature.mean(dim=0)
            rows.append((feature / feature.norm())[None])
    return torch.cat(rows, dim=0)


def interpolate_pos_encoding(visual, x, w, h):
    npatch = x.shape[1] - 1
    N = visual.positional_embedding.shape[0] - 1
    if npatch == N and w == h:
        return visual.positional_embedding
    class_pos_embed = visual.positional_embedding[[0]]
    patch_pos_embed = visual.positional_embedding[1:]
    dim = x.shape[-1]
    w0 = w // visual.patch_size[0] + 0.1
    h0 = h // visual.patch_size[1] + 0.1
    side = int(math.sqrt(N))
    patch_pos_embed = F.interpolate(
        patch_pos_embed.reshape(1, side, side, dim).permute(0, 3, 1, 2),
        scale_factor=(w0 / math.sqrt(N), h0 / math.sqrt(N)),
        mode="bicubic",
    )
    patch_pos_embed = patch_pos_embed.permute(0, 2, 3, 1).reshape(1, -1, dim)
    return torch.cat((class_pos_embed.unsqueeze(0), patch_pos_embed), dim=1)


def custom_attn(attn_layer, x, model_type):
    """x: [L, N, C] sequence first."""
    num_heads = attn_layer.num_heads
    _, bsz, embed_dim = x.size()
    head_dim = embed_dim // num_heads
    scale = head_dim ** -0.5
    q, k, v = F.linear(x, attn_layer.in_proj_weight, attn_layer.in_proj_bias).chunk(3, dim=-1)
    q = q.contiguous().view(-1, bsz * num_heads, head_dim).transpose(0, 1)
    k = k.contiguous().view(-1, bsz * num_heads, head_dim).transpose(0, 1)
    v = v.contiguous().view(-1, bsz * num_heads, head_dim).transpose(0, 1)
    if model_type == "vanilla":
        weights = F.softmax(torch.bmm(q, k.transpose(1, 2)) * scale, dim=-1)
    elif model_type == "ClearCLIP":
        weights = F.softmax(torch.bmm(q, q.transpose(1, 2)) * scale, dim=-1)
    else:
        raise ValueError(model_type)
    out = torch.bmm(weights, v).transpose(0, 1).contiguous().view(-1, bsz, embed_dim)
    return attn_layer.out_proj(out)


def encode_image(visual, img, model_type="ClearCLIP", ignore_residual=True):
    """The authors' VisionTransformer.forward: [B, 3, H, W] -> [B, N, D] patch tokens."""
    B, nc, w, h = img.shape
    x = visual.conv1(img)
    x = x.reshape(x.shape[0], x.shape[1], -1).permute(0, 2, 1)
    cls = visual.class_embedding.view(1, 1, -1).expand(x.shape[0], -1, -1)
    x = torch.cat([cls.to(x.dtype), x], dim=1)
    if x.shape[1] != visual.positional_embedding.shape[0]:
        x = x + interpolate_pos_encoding(visual, x, w, h).to(x.dtype)
    else:
        x = x + visual.positional_embedding.to(x.dtype)
    x = visual.ln_pre(x)
    x = x.permute(1, 0, 2)  # NLD -> LND
    for blk in visual.transformer.resblocks[:-1]:
        x = blk(x.permute(1, 0, 2)).permute(1, 0, 2)  # open_clip 3 blocks are batch first
    blk = visual.transformer.resblocks[-1]
    if ignore_residual:
        out = custom_attn(blk.attn, blk.ln_1(x), model_type)
    else:
        out = x + custom_attn(blk.attn, blk.ln_1(x), model_type)
        out = out + blk.mlp(blk.ln_2(out))
    x = visual.ln_post(out.permute(1, 0, 2))
    return x[:, 1:] @ visual.proj


def compute_padsize(H, W, patch_size):
    l, r, t, b = 0, 0, 0, 0
    if W % patch_size:
        lr = patch_size - (W % patch_size)
        l = lr // 2
        r = lr - l
    if H % patch_size:
        tb = patch_size - (H % patch_size)
        t = tb // 2
        b = tb - t
    return l, r, t, b


def forward_feature(visual, query_features, img, model_type, ignore_residual, logit_size=None):
    features = encode_image(visual, img, model_type, ignore_residual)
    features = features / features.norm(dim=-1, keepdim=True)
    logits = features @ query_features.T
    patch = visual.patch_size[0]
    w, h = img[0].shape[-2] // patch, img[0].shape[-1] // patch
    logits = logits.permute(0, 2, 1).reshape(-1, logits.shape[-1], w, h)
    size = img.shape[-2:] if logit_size is None else logit_size
    return F.interpolate(logits, size=size, mode="bilinear")


def forward_slide(visual, query_features, img, ori_shape, stride, crop, model_type="ClearCLIP", ignore_residual=True):
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
            crop_img = img[:, :, y1:y2, x1:x2]
            H, W = crop_img.shape[2:]
            pad = compute_padsize(H, W, visual.patch_size[0])
            if any(pad):
                crop_img = F.pad(crop_img, pad)
            crop_seg_logit = forward_feature(visual, query_features, crop_img, model_type, ignore_residual)
            if any(pad):
                l, t = pad[0], pad[2]
                crop_seg_logit = crop_seg_logit[:, :, t : t + H, l : l + W]
            preds += F.pad(crop_seg_logit, (int(x1), int(preds.shape[3] - x2), int(y1), int(preds.shape[2] - y2)))
            count_mat[:, :, y1:y2, x1:x2] += 1
    assert (count_mat == 0).sum() == 0
    preds = preds / count_mat
    return F.interpolate(preds, size=ori_shape, mode="bilinear")


def postprocess(seg_logits, logit_scale, query_idx, prob_thd):
    """[1, Q, H, W] -> (probabilities [K, H, W], prediction [H, W])."""
    seg_logits = seg_logits[0] * logit_scale
    seg_logits = seg_logits.softmax(0)
    query_idx = torch.as_tensor(query_idx, dtype=torch.int64)
    num_cls, num_queries = int(query_idx.max()) + 1, len(query_idx)
    if num_cls != num_queries:
        seg_logits = seg_logits.unsqueeze(0)
        cls_index = F.one_hot(query_idx).T.view(num_cls, num_queries, 1, 1)
        seg_logits = (seg_logits * cls_index).max(1)[0]
    seg_pred = seg_logits.argmax(0, keepdim=True)
    seg_pred[seg_logits.max(0, keepdim=True)[0] < prob_thd] = 0
    return seg_logits, seg_pred[0]


def segment(model, query_features, query_idx, image_rgb, crop=448, stride=224, prob_thd=0.0, logit_scale=50.0,
            model_type="ClearCLIP", ignore_residual=True, resize=True):
    """The whole reference pipeline on one original HxWx3 uint8 RGB image."""
    ori_shape = image_rgb.shape[:2]
    resized = mmcv_rescale(image_rgb) if resize else image_rgb
    img = preprocess(resized)
    with torch.no_grad():
        if crop > 0:
            logits = forward_slide(model.visual, query_features, img, ori_shape, stride, crop, model_type, ignore_residual)
        else:
            logits = forward_feature(model.visual, query_features, img, model_type, ignore_residual, ori_shape)
    return postprocess(logits, logit_scale, query_idx, prob_thd)
