"""Smoke tests of the ProxyCLIP reference (tests/reference_proxyclip.py) on tiny random models.

The reference restates the authors' code; these tests pin the facts it relies on (DINO's
forward on timm's modules, DINO's position-embedding interpolation is not timm's, the VFM's
re-normalisation, proxy attention's masking, the padding to 56). The whole pipeline (windows,
whole-image mode, resize, synonyms, threshold) is compared with the plugin in
tests/test_method_proxyclip.py.
"""

import numpy as np
import pytest
import torch
from timm.layers import resample_abs_pos_embed
from timm.models.vision_transformer import VisionTransformer

import reference_clearclip
import reference_proxyclip as ref

VFM_SIZE = 56  # pretrained grid 7 x 7 at patch 8, as vit_base_patch8_224.dino has 28 x 28


def tiny_vfm(**kwargs) -> VisionTransformer:
    """A tiny random DINO-like timm ViT (patch 8, class token, pre-norm blocks, final norm)."""
    torch.manual_seed(7)
    return VisionTransformer(img_size=VFM_SIZE, patch_size=8, embed_dim=32, depth=2, num_heads=2,
                             num_classes=0, **kwargs).eval()


def unit_queries(num_queries: int, dim: int) -> torch.Tensor:
    torch.manual_seed(3)
    return torch.nn.functional.normalize(torch.randn(num_queries, dim), dim=-1)


def random_image(height: int, width: int, seed: int = 0) -> np.ndarray:
    """A smooth random RGB image (blocks of colour plus noise), uint8 HxWx3."""
    rng = np.random.default_rng(seed)
    coarse = rng.integers(0, 256, size=(4, 4, 3)).astype(np.float32)
    image = np.kron(coarse, np.ones((height // 4 + 1, width // 4 + 1, 1)))[:height, :width]
    return np.clip(image + rng.normal(0, 20, image.shape), 0, 255).astype(np.uint8)


def test_vfm_tokens_are_timms_forward_features_at_the_pretrained_size():
    vfm = tiny_vfm()
    x = torch.randn(2, 3, VFM_SIZE, VFM_SIZE)
    with torch.no_grad():
        expected = vfm.forward_features(x)[:, 1:]
        tokens = ref.vfm_patch_tokens(vfm, x)
    assert tokens.shape == (2, 49, 32)
    torch.testing.assert_close(tokens, expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("grid", [(9, 9), (6, 11)])
def test_dino_position_interpolation_is_not_timms_dynamic_resampling(grid):
    """Same output grid, other values: a plugin must restate DINO's, not set dynamic_img_size."""
    vfm = tiny_vfm()
    tokens = torch.zeros(1, 1 + grid[0] * grid[1], 32)
    with torch.no_grad():
        dino = ref.dino_interpolate_pos_encoding(vfm, tokens, grid[0] * 8, grid[1] * 8)
        timm_way = resample_abs_pos_embed(vfm.pos_embed, new_size=grid, old_size=(7, 7), num_prefix_tokens=1)
    assert dino.shape == timm_way.shape == tokens.shape
    torch.testing.assert_close(dino[:, 0], vfm.pos_embed[:, 0])
    assert (dino - timm_way).abs().max() > 1e-4


def test_dino_position_interpolation_keeps_the_pretrained_square_grid():
    vfm = tiny_vfm()
    tokens = torch.zeros(1, 50, 32)
    assert ref.dino_interpolate_pos_encoding(vfm, tokens, VFM_SIZE, VFM_SIZE) is vfm.pos_embed


def test_vfm_input_is_the_image_normalised_with_imagenet_statistics():
    image = random_image(24, 40)
    clip_normalised = reference_clearclip.preprocess(image)
    expected = (torch.from_numpy(image).permute(2, 0, 1)[None].float() / 255 - ref.IMAGENET_MEAN) / ref.IMAGENET_STD
    # mmseg's 0-255 constants and the 0-1 ones of UnNormalize differ in the 6th digit.
    torch.testing.assert_close(ref.renormalise_for_vfm(clip_normalised), expected, atol=1e-4, rtol=0)
    padded = ref.renormalise_for_vfm(torch.zeros(1, 3, 1, 1)).flatten()
    torch.testing.assert_close(padded, ((ref.CLIP_MEAN_01 - ref.IMAGENET_MEAN) / ref.IMAGENET_STD).flatten())
    assert (padded.abs() > 1e-3).all()  # zero padding is not zero in the VFM's input


def two_region_proxy(grid_h: int, grid_w: int) -> torch.Tensor:
    """[1, 2, h, w]: one-hot features, left half (1, 0), right half (0, 1): cosine 1 inside a
    half, 0 across, so that after the adaptive normalisation only the own half survives."""
    left = torch.zeros(grid_h, grid_w, dtype=torch.bool)
    left[:, : grid_w // 2] = True
    return torch.stack([left, ~left]).float()[None]


def test_proxy_attention_averages_the_values_of_the_similar_tokens(tiny_clip):
    model, _ = tiny_clip
    attn = model.visual.transformer.resblocks[-1].attn
    clip_grid, vfm_grid = (3, 4), (6, 8)
    torch.manual_seed(1)
    x = torch.randn(1 + clip_grid[0] * clip_grid[1], 1, attn.embed_dim)
    proxy = two_region_proxy(*vfm_grid)
    with torch.no_grad():
        out = ref.proxy_attention(attn, x, proxy, clip_grid)[:, 0]
        v = torch.nn.functional.linear(x[1:, 0], *[p.chunk(3)[2] for p in (attn.in_proj_weight, attn.in_proj_bias)])
        v = v.T.reshape(1, -1, *clip_grid)
        v = torch.nn.functional.interpolate(v, size=vfm_grid, mode="bilinear", align_corners=False)[0].flatten(1).T
        left = proxy[0, 0].flatten().bool()
        expected = torch.where(left[:, None], v[left].mean(0), v[~left].mean(0))
        expected = attn.out_proj(expected)
    assert out.shape == (vfm_grid[0] * vfm_grid[1], attn.embed_dim)
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)


def test_proxy_attention_is_nan_when_the_mean_similarity_exceeds_one_over_beta(tiny_clip):
    """The authors' masking removes every entry of a row whose largest similarity (its own, 1)
    is below beta * mean: a window of near-identical VFM tokens gives NaN (kept, as the authors)."""
    model, _ = tiny_clip
    attn = model.visual.transformer.resblocks[-1].attn
    x = torch.randn(1 + 4, 1, attn.embed_dim)
    with torch.no_grad():
        out = ref.proxy_attention(attn, x, torch.ones(1, 3, 2, 2), (2, 2))
    assert torch.isnan(out).all()


def test_windows_are_padded_to_a_multiple_of_56(tiny_clip):
    """A 48-pixel window is padded to 56 (VFM grid 7); padding only to the VFM's patch (8)
    would give grid 6, other logits."""
    model, _ = tiny_clip
    queries = unit_queries(4, model.visual.output_dim)
    image = random_image(48, 96)
    authors = ref.segment(model, tiny_vfm(), queries, list(range(4)), image, crop=48, stride=24, resize=False)[0]
    by_patch = ref.segment(model, tiny_vfm(), queries, list(range(4)), image, crop=48, stride=24, resize=False,
                           pad_multiple=8)[0]
    assert (authors - by_patch).abs().max() > 1e-3
