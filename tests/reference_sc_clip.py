"""An independent, deliberately plain re-statement of the SC-CLIP authors' inference.

SC-CLIP: Bai et al., "Self-Calibrated CLIP for Training-Free Open-Vocabulary Segmentation"
(arXiv 2411.15869), code github.com/SuleBai/SC-CLIP at commit 0417ba9 ("update pytorch version
of LOF algorithm"): ``clip/model.py`` (``lof_pytorch``, ``VisionTransformer.forward``,
``custom_attn``, ``adaptively_aggregate``, ``mean_interpolation``) and ``scclip_segmentor.py``
(windows, postprocess). It follows their code step by step (sequence-first tokens, explicit
``bmm`` attention, one window at a time, batch size 1) so that a fused implementation can be
checked against it; the notes in /work/notes/sc_clip.md give the line references and every
per-benchmark setting. Nothing here imports the plugin; the shared, method-independent steps
(mmcv's resize, the normalisation, the positional-embedding interpolation) come from
``reference_clearclip``.

The authors load OpenAI CLIP (``clip.load``, fp16 on CUDA); here the model is an open_clip CLIP
whose visual blocks are batch first (open_clip 3), in the dtype it has.
"""

import torch
import torch.nn.functional as F

import reference_clearclip as ref

# The authors' defaults (scclip_segmentor.py __init__, configs/base_config.py, model.py).
BETA = 0.4  # similarity threshold of the aggregations (VisionTransformer.beta)
ATTN_SHARPNESS = 3.0  # (mid_simi - mean) * 3.0 in custom_attn
LOF_NEIGHBOURS = 30
LOF_CONTAMINATION = 0.05


def embed_tokens(visual, img: torch.Tensor) -> torch.Tensor:
    """conv1, class token, positional embedding (interpolated if needed), ln_pre: [L, B, C]."""
    _, _, h, w = img.shape
    x = visual.conv1(img)
    x = x.reshape(x.shape[0], x.shape[1], -1).permute(0, 2, 1)
    cls = visual.class_embedding.view(1, 1, -1).expand(x.shape[0], -1, -1)
    x = torch.cat([cls.to(x.dtype), x], dim=1)
    if x.shape[1] != visual.positional_embedding.shape[0]:
        x = x + ref.interpolate_pos_encoding(visual, x, h, w).to(x.dtype)
    else:
        x = x + visual.positional_embedding.to(x.dtype)
    return visual.ln_pre(x).permute(1, 0, 2)


def open_clip_block(block, x: torch.Tensor) -> torch.Tensor:
    """One standard block on sequence-first tokens (open_clip 3 blocks are batch first)."""
    return block(x.permute(1, 0, 2)).permute(1, 0, 2)


def lof_outliers(tokens: torch.Tensor, n_neighbors: int = LOF_NEIGHBOURS, contamination: float = LOF_CONTAMINATION):
    """The authors' ``lof_pytorch``: indices of the outlier tokens among [N, C] tokens.

    This is NOT scikit-learn's LocalOutlierFactor (which the first release had commented out):
    distances are squared Euclidean, the reachability distance of a point to each neighbour is
    the max of their distance and the point's OWN k-distance (sklearn: the neighbour's), so the
    local reachability density of a point is k / (its own k-distance); the score is the mean
    ratio of the neighbours' densities to the point's; outliers are the scores strictly above
    the (1 - contamination) quantile (torch.quantile, linear interpolation).
    """
    distances = torch.norm(tokens[:, None] - tokens[None, :], dim=2, p=2) ** 2
    knn_distances, knn_indices = torch.topk(distances, k=n_neighbors + 1, largest=False)
    knn_distances, knn_indices = knn_distances[:, 1:], knn_indices[:, 1:]  # drop the point itself
    k_distances = knn_distances[:, -1].unsqueeze(1).expand_as(knn_distances)
    reach_distances = torch.max(knn_distances, k_distances)
    lrd = n_neighbors / torch.nan_to_num(reach_distances.mean(dim=1), nan=1e-6)
    scores = (lrd[knn_indices] / lrd.unsqueeze(1)).mean(dim=1)
    threshold = torch.quantile(scores.to(torch.float32), 1 - contamination)
    return torch.where(scores > threshold)[0]


def l2_norm_outliers(tokens: torch.Tensor, count: int = 10) -> torch.Tensor:
    """The first release's detector (commit 74471da): the ``count`` tokens of largest norm."""
    return torch.sort(torch.norm(tokens, dim=1), descending=True)[1][:count]


def outlier_positions(indices: torch.Tensor, grid_rows: int, grid_cols: int):
    """(rows, cols) of token indices, as the authors compute them: ``index // feat_w`` and
    ``index % feat_w`` with ``feat_w`` the number of grid ROWS (model.py line 275). Right for
    square grids (every window of their configs); on other grids the authors' code indexes out
    of range or moves the fix to other tokens; out of range is refused here."""
    rows, cols = torch.div(indices, grid_rows, rounding_mode="trunc"), indices % grid_rows
    if len(indices) and (int(rows.max()) >= grid_rows or int(cols.max()) >= grid_cols):
        raise ValueError(f"outlier index out of a {grid_rows}x{grid_cols} grid (the authors' code fails here too)")
    return rows, cols


def mean_interpolation(feature_map: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
    """[B, C, H, W]: each outlier replaced by the mean of its non-outlier 3x3 neighbours (zero
    padding outside the grid counts as no neighbour); an outlier without one is kept. The
    authors' code raises on an empty outlier list; here nothing changes then."""
    if len(rows) == 0:
        return feature_map
    _, channels, h, w = feature_map.shape
    kernel = torch.ones(channels, 1, 3, 3, dtype=feature_map.dtype)
    kernel[:, 0, 1, 1] = 0
    keep = torch.ones((h, w), dtype=feature_map.dtype)
    keep[rows, cols] = 0
    keep = keep[None, None]
    neighbour_sum = F.conv2d(F.pad(feature_map * keep, (1, 1, 1, 1)), kernel, groups=channels)
    valid = F.conv2d(F.pad(keep, (1, 1, 1, 1)), kernel[:1])
    mean = neighbour_sum / torch.where(valid == 0, torch.ones_like(valid), valid)
    update = (1 - keep) * (valid > 0).to(feature_map.dtype)
    return feature_map * (1 - update) + mean * update


def fix_tokens(tokens: torch.Tensor, rows, cols, grid) -> torch.Tensor:
    """[N, B, C] patch tokens -> the same with outliers fixed (:func:`mean_interpolation`)."""
    n, b, c = tokens.shape
    feature_map = tokens.permute(1, 2, 0).reshape(b, c, grid[0], grid[1])
    return mean_interpolation(feature_map, rows, cols).reshape(b, c, n).permute(2, 0, 1)


def cosine_similarity(tokens: torch.Tensor) -> torch.Tensor:
    """[N, B, C] -> [B, N, N] cosine similarities."""
    tokens = tokens / tokens.norm(dim=2, keepdim=True)
    return torch.matmul(tokens.permute(1, 0, 2), tokens.permute(1, 2, 0))


def thresholded(similarity: torch.Tensor, beta: float) -> torch.Tensor:
    out = similarity.clone()
    out[out < beta] = 0.0
    return out


def adaptively_aggregate(x: torch.Tensor, corrs: torch.Tensor) -> torch.Tensor:
    """[N, B, C] tokens averaged with the row-normalised weights ``corrs`` [B, N, N]."""
    weights = corrs / (corrs.sum(dim=-1, keepdim=True) + 1e-6)
    return torch.matmul(weights, x.permute(1, 0, 2)).permute(1, 0, 2)


def scclip_attention(attn_layer, x: torch.Tensor, mid_simi: torch.Tensor) -> torch.Tensor:
    """The authors' ``custom_attn``: x [N, B, C] (no class token) -> [N, B, C].

    Mean of two attention maps: softmax of the mid-layer similarity, centred on its mean over
    the whole tensor, times 3, negatives masked (-inf); and softmax(k k^T / sqrt(d)). Values and
    output projection of the last block; no residual, no FFN.
    """
    num_heads = attn_layer.num_heads
    _, bsz, embed_dim = x.size()
    head_dim = embed_dim // num_heads
    scale = head_dim ** -0.5
    q, k, v = F.linear(x, attn_layer.in_proj_weight, attn_layer.in_proj_bias).chunk(3, dim=-1)
    k = k.contiguous().view(-1, bsz * num_heads, head_dim).transpose(0, 1)
    v = v.contiguous().view(-1, bsz * num_heads, head_dim).transpose(0, 1)
    prior = (mid_simi - torch.mean(mid_simi)) * ATTN_SHARPNESS
    prior[prior < 0.0] = float("-inf")
    weights = F.softmax(prior.repeat(num_heads, 1, 1), dim=-1)
    weights = (weights + F.softmax(torch.bmm(k, k.transpose(1, 2)) * scale, dim=-1)) / 2
    out = torch.bmm(weights, v).transpose(0, 1).contiguous().view(-1, bsz, embed_dim)
    return attn_layer.out_proj(out)


def encode_image(visual, img, pre_adjust_idx=8, post_adjust_idx=3, multi_start_idx=3, multi_end_idx=10,
                 res_cls=0.3, beta=BETA, outliers="lof"):
    """The authors' ``VisionTransformer.forward(return_all=True)``: [1, 3, H, W] -> [1, N, D].

    Indices count the outputs of blocks 1..L-1 from 0 (``feats_list[i]`` is block i+1's output).
    """
    _, _, h, w = img.shape
    patch = visual.patch_size[0]
    grid = (h // patch, w // patch)
    x = embed_tokens(visual, img)
    feats_list = []
    for blk in visual.transformer.resblocks[:-1]:
        x = open_clip_block(blk, x)
        feats_list.append(x)
    # After block L-1: the class token is set aside, outliers detected and fixed.
    cls_token = x[:1]
    patches = x[1:].squeeze(1)
    indices = lof_outliers(patches) if outliers == "lof" else l2_norm_outliers(patches)
    rows, cols = outlier_positions(indices, *grid)
    x = fix_tokens(x[1:], rows, cols, grid)  # N patch tokens from here on, no class token

    # Similarity of block (pre_adjust_idx + 1)'s fixed tokens: aggregation before the last block
    # (thresholded) and attention prior of the last block (not thresholded).
    mid_simi = cosine_similarity(fix_tokens(feats_list[pre_adjust_idx][1:].clone(), rows, cols, grid))
    x = adaptively_aggregate(x, thresholded(mid_simi, beta))
    blk = visual.transformer.resblocks[-1]
    x = scclip_attention(blk.attn, blk.ln_1(x), mid_simi) + res_cls * cls_token
    # Aggregation after the last block with block (post_adjust_idx + 1)'s tokens, NOT fixed.
    after_simi = thresholded(cosine_similarity(feats_list[post_adjust_idx][1:].clone()), beta)
    x = adaptively_aggregate(x, after_simi)

    # Multi-level fusion: the sum of blocks multi_start_idx+1 .. multi_end_idx through the
    # same last-block attention and aggregation, added.
    re_feats = torch.zeros_like(feats_list[0])
    for i in range(multi_start_idx, multi_end_idx):
        re_feats = re_feats + feats_list[i]
    fused = scclip_attention(blk.attn, blk.ln_1(re_feats[1:]), mid_simi) + res_cls * re_feats[:1]
    x = x + adaptively_aggregate(fused, after_simi)
    return visual.ln_post(x.permute(1, 0, 2)) @ visual.proj


def forward_feature(visual, query_features, img, encoder_settings, logit_size=None):
    """[1, Q, *size] cosine logits of one window, the patch grid upsampled bilinearly to
    ``logit_size`` (default: the window's size; a truncated remainder is stretched over)."""
    features = encode_image(visual, img, **encoder_settings)
    features = features / features.norm(dim=-1, keepdim=True)
    logits = features @ query_features.T
    patch = visual.patch_size[0]
    grid_h, grid_w = img.shape[-2] // patch, img.shape[-1] // patch
    logits = logits.permute(0, 2, 1).reshape(-1, logits.shape[-1], grid_h, grid_w)
    size = img.shape[-2:] if logit_size is None else logit_size
    return F.interpolate(logits, size=size, mode="bilinear", align_corners=False)


def forward_slide_truncating(img, num_queries, crop, stride, window_logits):
    """mmseg-style sliding windows WITHOUT padding (SCLIP, NACLIP, SC-CLIP, ResCLIP): a window
    whose size is not a multiple of the patch is truncated by the patch embedding.
    ``window_logits(crop_img) -> [1, Q, h, w]``. Returns the [1, Q, H, W] average."""
    batch_size, _, h_img, w_img = img.shape
    h_grids = max(h_img - crop + stride - 1, 0) // stride + 1
    w_grids = max(w_img - crop + stride - 1, 0) // stride + 1
    preds = img.new_zeros((batch_size, num_queries, h_img, w_img))
    count_mat = img.new_zeros((batch_size, 1, h_img, w_img))
    for h_idx in range(h_grids):
        for w_idx in range(w_grids):
            y1, x1 = h_idx * stride, w_idx * stride
            y2, x2 = min(y1 + crop, h_img), min(x1 + crop, w_img)
            y1, x1 = max(y2 - crop, 0), max(x2 - crop, 0)
            crop_logits = window_logits(img[:, :, y1:y2, x1:x2])
            preds += F.pad(crop_logits, (int(x1), int(w_img - x2), int(y1), int(h_img - y2)))
            count_mat[:, :, y1:y2, x1:x2] += 1
    assert (count_mat == 0).sum() == 0
    return preds / count_mat


def merge_synonyms(probs: torch.Tensor, query_idx) -> torch.Tensor:
    """[Q, H, W] -> [K, H, W]: max over the queries of each class."""
    query_idx = torch.as_tensor(query_idx, dtype=torch.int64)
    num_cls, num_queries = int(query_idx.max()) + 1, len(query_idx)
    if num_cls == num_queries:
        return probs
    cls_index = F.one_hot(query_idx).T.view(num_cls, num_queries, 1, 1)
    return (probs.unsqueeze(0) * cls_index).max(1)[0]


def apply_area_threshold(probs: torch.Tensor, area_thd: float) -> torch.Tensor:
    """SCLIP's ``area_thd``: the probabilities of each non-background class predicted (argmax)
    on no more than ``area_thd`` of the non-background predicted pixels are set to 0 (in place)."""
    num_cls = probs.shape[0]
    predictions = F.one_hot(probs.argmax(0), num_cls).to(probs.dtype)
    area = predictions[:, :, 1:].sum((0, 1), keepdim=True)
    keep = (area > area_thd * area.sum()).to(probs.dtype)
    probs[1:] *= keep.transpose(0, -1)
    return probs


def postprocess(seg_logits, logit_scale, query_idx, prob_thd, area_thd=None):
    """[1, Q, H, W] -> (probabilities [K, H, W], prediction [H, W]); no renormalisation."""
    probs = merge_synonyms((seg_logits[0] * logit_scale).softmax(0), query_idx)
    if area_thd is not None:
        probs = apply_area_threshold(probs, area_thd)
    seg_pred = probs.argmax(0, keepdim=True)
    seg_pred[probs.max(0, keepdim=True)[0] < prob_thd] = 0
    return probs, seg_pred[0]


def segment(model, query_features, query_idx, image_rgb, crop=224, stride=112, prob_thd=0.0, logit_scale=40.0,
            area_thd=None, short_side=336, resize=True, **encoder_settings):
    """The whole SC-CLIP pipeline on one original HxWx3 uint8 RGB image.

    ``crop`` 0 = whole image (the grid's logits go straight to the original size).
    ``encoder_settings``: :func:`encode_image`'s keyword arguments (layer indices, ``res_cls``,
    ``beta``, ``outliers``). Returns (probabilities [K, H, W], prediction [H, W]).
    """
    ori_shape = image_rgb.shape[:2]
    resized = ref.mmcv_rescale(image_rgb, short=short_side) if resize else image_rgb
    img = ref.preprocess(resized).to(query_features.dtype)
    visual = model.visual
    with torch.no_grad():
        if crop > 0:
            logits = forward_slide_truncating(
                img, query_features.shape[0], crop, stride,
                lambda window: forward_feature(visual, query_features, window, encoder_settings),
            )
            logits = F.interpolate(logits, size=ori_shape, mode="bilinear", align_corners=False)
        else:
            logits = forward_feature(visual, query_features, img, encoder_settings, logit_size=ori_shape)
    return postprocess(logits, logit_scale, query_idx, prob_thd, area_thd)


# The authors' settings per benchmark (configs/cfg_*.py over configs/base_config.py and the
# segmentor's defaults), ViT-B/16. Keys are this project's benchmark names.
BENCHMARK_SETTINGS = {
    "voc21": dict(short_side=336, logit_scale=50.0, prob_thd=0.15, area_thd=0.1),
    "context60": dict(short_side=336, prob_thd=0.15),
    "coco_object": dict(short_side=336, logit_scale=55.0, prob_thd=0.35),
    "voc20": dict(short_side=336),
    "context59": dict(short_side=336),
    "coco_stuff": dict(short_side=336),
    "cityscapes": dict(short_side=560),
    "ade20k": dict(short_side=336),
}

