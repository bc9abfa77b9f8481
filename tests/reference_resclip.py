"""An independent, deliberately plain re-statement of the ResCLIP authors' inference.

ResCLIP: Yang et al., "ResCLIP: Residual Attention for Training-free Dense Vision-language
Inference" (CVPR 2025), code github.com/yvhangyang/ResCLIP at commit 0e085f7: ``clip/model.py``
(``VisionTransformer.forward``, ``create_logit_temp``, ``create_patch_matrix``,
``generate_attention_sfr``, ``check_path``, ``custom_attn`` with ``attn_strategy='resclip'``,
``arch='wo_resi'``), ``resclip_segmentor.py`` (windows, postprocess) and ``pamr.py``. It follows
their code step by step (sequence-first tokens, explicit ``bmm`` attention, one window at a
time, batch size 1); /work/notes/resclip.md gives the line references and every per-benchmark
setting. Nothing here imports the plugin.

The method, per window:
1. blocks 1..L-1 as in CLIP, keeping each block's q-k attention map (per head);
2. RCS: the mean of the maps of blocks ``rcs_layers`` (0-based: 5..8 = blocks 6-9);
3. first pass: the last block's attention softmax(k k^T / sqrt(d) + G) (G: NACLIP's Gaussian
   neighbourhood prior) mixed with the RCS map, no residual, no FFN -> cosine logits of the
   window's queries -> PAMR (10 iterations, dilations 8 and 16) -> softmax(logit_scale *);
4. SFR: per patch the most frequent (torch.mode) per-pixel argmax query, pixels under
   ``temp_thd`` counted as query 0; a patch-patch "same query" matrix, decayed with distance
   where the straight path leaves the query, blurred by a 1-D Gaussian along the flattened
   index, row-normalised;
5. second pass: the last block's attention with the SFR matrix mixed into the logits before
   the softmax and the RCS map after it -> the window's patch features.
"""

import math

import torch
import torch.nn.functional as F

import reference_clearclip as ref
import reference_sc_clip as sc

GAUSSIAN_STD = 5.0  # set_params(gaussian_std); test_all.sh passes 5
RCS_LAYERS = (5, 6, 7, 8)  # model.py line 328: attn_map[i] for i in range(5, 9)
FIRST_PASS_PAMR_ITERATIONS = 10  # create_logit_temp: PAMR(10, dilations=(8, 16))
FIRST_PASS_PAMR_DILATIONS = (8, 16)


# ----------------------------------------------------------------------------- PAMR
def _shifted(x: torch.Tensor, dilation: int, offsets) -> torch.Tensor:
    """[M, 1, H, W] -> [M, len(offsets), H, W]: x at (y + dy*d, x + dx*d), replicate padding."""
    padded = F.pad(x, [dilation] * 4, mode="replicate")
    h, w = x.shape[-2:]
    return torch.cat(
        [padded[:, :, dilation + dy * dilation: dilation + dy * dilation + h,
                dilation + dx * dilation: dilation + dx * dilation + w] for dy, dx in offsets],
        dim=1,
    )


NEIGHBOURS = [(-1, -1), (-1, 0), (-1, 1), (0, -1), (0, 1), (1, -1), (1, 0), (1, 1)]
WINDOW = NEIGHBOURS[:4] + [(0, 0)] + NEIGHBOURS[4:]


def pamr(image: torch.Tensor, mask: torch.Tensor, iterations: int, dilations) -> torch.Tensor:
    """The authors' ``PAMR`` (visinf/1-stage-wseg): image [B, 3, H, W], mask [B, C, h, w] ->
    [B, C, H, W].

    The mask is first resized to the image (bilinear, align_corners True). Affinity to each of
    the 8 neighbours at each dilation: -|I(p) - I(p+o)| / (1e-8 + 0.1 std(p)), with std(p) the
    unbiased standard deviation of the 3x3 windows of all dilations together (9 values each,
    the centre counted once per dilation), per image channel; mean over channels; softmax over
    the 8 x len(dilations) neighbours. Each iteration replaces the mask by the affinity-weighted
    sum of its neighbours' values. Replicate padding throughout.
    """
    mask = F.interpolate(mask, size=image.shape[-2:], mode="bilinear", align_corners=True)
    b, k, h, w = image.shape
    flat = image.reshape(b * k, 1, h, w)
    window = torch.cat([_shifted(flat, d, WINDOW) for d in dilations], dim=1)
    std = window.std(dim=1, keepdim=True)
    diffs = torch.cat([(flat - _shifted(flat, d, NEIGHBOURS)).abs() for d in dilations], dim=1)
    affinity = (-diffs / (1e-8 + 0.1 * std)).reshape(b, k, -1, h, w).mean(1, keepdim=True)
    affinity = F.softmax(affinity, dim=2)  # [B, 1, P, H, W]
    c = mask.shape[1]
    for _ in range(iterations):
        flat_mask = mask.reshape(b * c, 1, h, w)
        neighbours = torch.cat([_shifted(flat_mask, d, NEIGHBOURS) for d in dilations], dim=1)
        mask = (neighbours.reshape(b, c, -1, h, w) * affinity).sum(2)
    return mask


# ----------------------------------------------------------------------------- attention priors
def gaussian_addition(grid_h: int, grid_w: int, std: float = GAUSSIAN_STD) -> torch.Tensor:
    """NACLIP's neighbourhood prior as the authors build it (``gaussian_window`` on a
    (2h-1) x (2w-1) window from ``linspace``, convolved with each token's one-hot map,
    ``padding='same'``), with zero class-token row and column: [1 + h*w, 1 + h*w]."""
    constant = 1 / (std * math.sqrt(2))
    axes = []
    for dim in (2 * grid_h - 1, 2 * grid_w - 1):
        start = -(dim - 1) / 2.0
        axes.append(torch.linspace(start * constant, (start + (dim - 1)) * constant, steps=dim, dtype=torch.float))
    window = torch.exp(-(torch.stack(torch.meshgrid(*axes, indexing="ij")) ** 2).sum(0))
    one_hot = torch.eye(grid_h * grid_w).view(-1, 1, grid_h, grid_w)
    out = F.conv2d(one_hot, window[None, None], padding="same").view(grid_h * grid_w, grid_h * grid_w)
    return F.pad(out, (1, 0, 1, 0))


def patch_classes(probs: torch.Tensor, grid, patch: int, temp_thd: float) -> torch.Tensor:
    """``create_patch_matrix``: [1, Q, H, W] first-pass probabilities -> [h, w] query index per
    patch: per-pixel argmax (0 where the max is below ``temp_thd``), then the most frequent
    value of each patch x patch block (torch.mode: the smallest on ties, on the CPU)."""
    probs = probs.squeeze(0)
    seg_pred = probs.argmax(0, keepdim=True)
    seg_pred[probs.max(0, keepdim=True)[0] < temp_thd] = 0
    seg_pred = seg_pred.squeeze(0)
    blocks = seg_pred.unfold(0, patch, patch).unfold(1, patch, patch).reshape(grid[0], grid[1], -1)
    return torch.mode(blocks, dim=-1)[0]


def straight_path_same_class(start: torch.Tensor, end: torch.Tensor, classes: torch.Tensor) -> torch.Tensor:
    """``check_path``: for each (start, end) pair of [P, 2] grid coordinates, whether the points
    ``round(start (1 - t) + end t)``, t = k / max_steps for k = 0..steps(pair) (max_steps over
    ALL pairs, so a short pair checks only the first part of its segment), all have the start's
    class. steps = Chebyshev distance; torch.round rounds half to even."""
    steps = torch.max(torch.abs(end - start), dim=1)[0]
    max_steps = int(steps.max().item())
    t = torch.linspace(0, 1, steps=max_steps + 1).unsqueeze(1).unsqueeze(0)
    coords = (start.unsqueeze(1) * (1 - t) + end.unsqueeze(1) * t).round().long()
    valid_steps = torch.arange(max_steps + 1).unsqueeze(0) <= steps.unsqueeze(1)
    start_values = classes[start[:, 0], start[:, 1]].unsqueeze(1)
    values = classes[coords[:, :, 0], coords[:, :, 1]]
    return ((values == start_values) | ~valid_steps).all(dim=1)


def sfr_attention(classes: torch.Tensor, gaussian_std: float = GAUSSIAN_STD, delete_same_entity: bool = True):
    """``generate_attention_sfr``: [h, w] patch classes -> [1, 1 + h*w, 1 + h*w] prior."""
    h, w = classes.shape
    total = h * w
    index = torch.arange(total)
    i, j = torch.meshgrid(index, index, indexing="ij")
    i_row, i_col = torch.div(i, w, rounding_mode="floor"), i % w
    j_row, j_col = torch.div(j, w, rounding_mode="floor"), j % w
    same = (classes[i_row, i_col] == classes[j_row, j_col]).float()
    same.diagonal().fill_(1)
    if delete_same_entity:
        start = torch.stack((i_row, i_col), dim=-1).view(-1, 2)
        end = torch.stack((j_row, j_col), dim=-1).view(-1, 2)
        valid = straight_path_same_class(start, end, classes).view(total, total)
        steps = torch.max(torch.abs(end - start), dim=1)[0]
        decay = torch.exp(-steps.view(total, total) / steps.max().item())
        same = torch.where(valid, same, same * decay)
    kernel_size = min(total, int(6 * gaussian_std + 1))
    kernel_size = kernel_size if kernel_size % 2 == 1 else kernel_size + 1
    x = torch.arange(kernel_size) - kernel_size // 2
    kernel = torch.exp(-(x ** 2) / (2 * gaussian_std ** 2))
    kernel = kernel / kernel.sum()
    blurred = F.relu(F.conv1d(same.unsqueeze(1), kernel.view(1, 1, -1), padding=kernel_size // 2).squeeze(1))
    normalised = blurred / (blurred.sum(dim=1, keepdim=True) + 1e-8)
    return F.pad(normalised, (1, 0, 1, 0))[None]


# ----------------------------------------------------------------------------- attention
def qkv(attn_layer, x):
    num_heads = attn_layer.num_heads
    _, bsz, embed_dim = x.size()
    head_dim = embed_dim // num_heads
    q, k, v = F.linear(x, attn_layer.in_proj_weight, attn_layer.in_proj_bias).chunk(3, dim=-1)
    return [t.contiguous().view(-1, bsz * num_heads, head_dim).transpose(0, 1) for t in (q, k, v)], head_dim ** -0.5


def attend(attn_layer, weights, v, x):
    _, bsz, embed_dim = x.size()
    out = torch.bmm(weights, v).transpose(0, 1).contiguous().view(-1, bsz, embed_dim)
    return attn_layer.out_proj(out)


def block_with_attention(blk, x):
    """A standard block on [L, B, C] (``custom_attn(with_attn=True)``, softmax(q k^T / sqrt(d)))
    -> (tokens, the [B * heads, L, L] attention map)."""
    (q, k, v), scale = qkv(blk.attn, blk.ln_1(x))
    weights = F.softmax(torch.bmm(q * scale, k.transpose(1, 2)), dim=-1)
    x = x + attend(blk.attn, weights, v, x)
    return x + blk.mlp(blk.ln_2(x)), weights


def resclip_attention(attn_layer, x, omega, attn_rcs, rcs_weights, attn_sfr=None, sfr_weights=None):
    """``custom_attn(use_custom_attn=True)`` with ``attn_strategy='resclip'``:
    a = k k^T / sqrt(d); with SFR: a = tau_s ((1 - l_s) a + l_s S / max S), S cast to float16;
    a = softmax(a + omega); a = tau_r ((1 - l_r) a + l_r RCS). Returns out_proj(a v)."""
    (_, k, v), scale = qkv(attn_layer, x)
    weights = torch.bmm(k, k.transpose(1, 2)) * scale
    if attn_sfr is not None:
        attn_sfr = (attn_sfr / torch.max(attn_sfr)).to(torch.float16)
        tau, lam = sfr_weights
        weights = tau * ((1 - lam) * weights + lam * attn_sfr)
    weights = F.softmax(weights + omega, dim=-1)
    tau, lam = rcs_weights
    weights = tau * ((1 - lam) * weights + lam * attn_rcs)
    return attend(attn_layer, weights, v, x)


def project_patches(visual, x):
    """[L, 1, C] last-block output -> [1, N, D] patch features (class token dropped)."""
    return (visual.ln_post(x.permute(1, 0, 2)) @ visual.proj)[:, 1:]


def grid_logits(features, query_features, grid, size):
    """[1, N, D] -> [1, Q, *size] cosine logits, the grid upsampled bilinearly."""
    features = features / features.norm(dim=-1, keepdim=True)
    logits = (features @ query_features.T).permute(0, 2, 1).reshape(1, -1, grid[0], grid[1])
    return F.interpolate(logits, size=size, mode="bilinear", align_corners=False)


def encode_image(visual, img, query_features, logit_scale, temp_thd, rcs_weights, sfr_weights,
                 rcs_layers=RCS_LAYERS, gaussian_std=GAUSSIAN_STD, delete_same_entity=True,
                 first_pass_pamr=(FIRST_PASS_PAMR_ITERATIONS, FIRST_PASS_PAMR_DILATIONS)):
    """The authors' ``VisionTransformer.forward(return_all=True)``: [1, 3, H, W] -> [1, N, D].

    ``first_pass_pamr``: (iterations, dilations), or None (the authors skip it silently when it
    raises a RuntimeError; it does not in current PyTorch).
    """
    patch = visual.patch_size[0]
    grid = (img.shape[-2] // patch, img.shape[-1] // patch)
    x = sc.embed_tokens(visual, img)
    attn_maps = []
    for blk in visual.transformer.resblocks[:-1]:
        x, attn = block_with_attention(blk, x)
        attn_maps.append(attn)
    attn_rcs = torch.stack([attn_maps[i] for i in rcs_layers]).mean(dim=0)
    omega = gaussian_addition(*grid, std=gaussian_std)[None].to(x.dtype)
    blk = visual.transformer.resblocks[-1]

    # First pass -> probabilities per query at the window's size -> SFR prior.
    first = resclip_attention(blk.attn, blk.ln_1(x), omega, attn_rcs, rcs_weights)
    logits = grid_logits(project_patches(visual, first), query_features, grid, img.shape[-2:])
    if first_pass_pamr is not None:
        logits = pamr(img, logits.to(img.dtype), *first_pass_pamr)
    probs = torch.softmax(logits[0] * logit_scale, dim=0)[None]
    attn_sfr = sfr_attention(patch_classes(probs, grid, patch, temp_thd), gaussian_std, delete_same_entity)

    second = resclip_attention(blk.attn, blk.ln_1(x), omega, attn_rcs, rcs_weights, attn_sfr, sfr_weights)
    return project_patches(visual, second)


def postprocess(seg_logits, logit_scale, query_idx, prob_thd):
    """[1, Q, H, W] -> (probabilities [K, H, W] renormalised to sum 1, prediction [H, W]).

    The authors' ``area_thd`` branch is not restated: it reads the raw logits with the batch
    axis as classes and cannot run (no ResCLIP config sets it)."""
    probs = sc.merge_synonyms(torch.softmax(seg_logits[0] * logit_scale, dim=0), query_idx)
    seg_pred = probs.argmax(0, keepdim=True)
    seg_pred[probs.max(0, keepdim=True)[0] < prob_thd] = 0
    probs = probs / probs.sum(0, keepdim=True)
    return probs, seg_pred[0]


def segment(model, query_features, query_idx, image_rgb, crop=224, stride=112, prob_thd=0.0, logit_scale=40.0,
            short_side=336, resize=True, pamr_steps=0, pamr_dilations=(8, 16), **encoder_settings):
    """The whole ResCLIP pipeline on one original HxWx3 uint8 RGB image.

    ``crop`` 0 = whole image: the grid's logits are upsampled to the resized image, then (as
    the windows' average) to the original size. ``encoder_settings``: :func:`encode_image`'s
    keywords (``temp_thd``, ``rcs_weights``, ``sfr_weights`` required). ``pamr_steps`` > 0: the
    authors' optional final PAMR on the logits at the original size (off in every config).
    """
    ori_shape = image_rgb.shape[:2]
    resized = ref.mmcv_rescale(image_rgb, short=short_side) if resize else image_rgb
    img = ref.preprocess(resized).to(query_features.dtype)
    visual = model.visual
    patch = visual.patch_size[0]

    def window_logits(window):
        grid = (window.shape[-2] // patch, window.shape[-1] // patch)
        features = encode_image(visual, window, query_features, logit_scale, **encoder_settings)
        return grid_logits(features, query_features, grid, window.shape[-2:])

    with torch.no_grad():
        if crop > 0:
            logits = sc.forward_slide_truncating(img, query_features.shape[0], crop, stride, window_logits)
        else:
            logits = window_logits(img)
        logits = F.interpolate(logits, size=ori_shape, mode="bilinear", align_corners=False)
        if pamr_steps > 0:
            guide = F.interpolate(img, size=ori_shape, mode="bilinear", align_corners=False)
            logits = pamr(guide, logits.to(guide.dtype), pamr_steps, pamr_dilations)
    return postprocess(logits, logit_scale, query_idx, prob_thd)


# The authors' settings per benchmark (configs/cfg_*.py over configs/base_config.py and the
# segmentor's defaults; test_all.sh: arch wo_resi, attn resclip, std 5), ViT-B/16.
BENCHMARK_SETTINGS = {
    "voc21": dict(short_side=336, crop=0, prob_thd=0.1, temp_thd=0.50, rcs_weights=(2.0, 0.3), sfr_weights=(2.2, 0.7)),
    "context60": dict(short_side=336, prob_thd=0.1, temp_thd=0.30, rcs_weights=(2.0, 0.3), sfr_weights=(1.8, 0.7)),
    "coco_object": dict(short_side=336, prob_thd=0.1, temp_thd=0.11, rcs_weights=(2.0, 0.4), sfr_weights=(1.8, 0.7)),
    "voc20": dict(short_side=336, crop=0, temp_thd=0.10, rcs_weights=(2.0, 0.6), sfr_weights=(2.1, 0.6)),
    "context59": dict(short_side=336, temp_thd=0.25, rcs_weights=(2.0, 0.4), sfr_weights=(1.8, 0.7)),
    "coco_stuff": dict(short_side=336, temp_thd=0.11, rcs_weights=(2.0, 0.4), sfr_weights=(1.8, 0.7)),
    "cityscapes": dict(short_side=560, temp_thd=0.10, rcs_weights=(2.0, 0.2), sfr_weights=(2.1, 0.6)),
    "ade20k": dict(short_side=336, temp_thd=0.25, rcs_weights=(2.0, 0.3), sfr_weights=(2.1, 0.7)),
}
