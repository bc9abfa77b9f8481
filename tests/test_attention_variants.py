"""Every attention variant of the last block against a plain, independent computation.

The independent path runs open_clip's own first blocks, then the last block written out
head by head with explicit softmax and matrix products (no plugin code), and NACLIP's prior
with explicit loops over the patch grid.
"""

import math

import pytest
import torch
import torch.nn.functional as F
from detectron2.modeling import build_model

import reference_clearclip as ref
from conftest import FEATURE_ATOL, tiny_cfg
from clearclip_d2.modeling.clip.decomposition import ATTENTION_VARIANTS, TokenLayout, neighbourhood_prior
from clearclip_d2.modeling.clip.dense_encoder import DenseCLIPEncoder
from clearclip_d2.utils.errors import ClearCLIPError

VARIANTS = ["qk", "qq", "kk", "vv", "qq+kk", "identity", "naclip"]
SWITCHES = [(False, False), (True, True), (True, False), (False, True)]  # (residual, ffn)



def tokens_before_last_block(visual, images):
    """Embedding, positional embedding (resampled as the reference does) and open_clip's blocks 1..L-1."""
    x = visual.conv1(images).flatten(2).transpose(1, 2)
    x = torch.cat([visual.class_embedding.view(1, 1, -1).expand(len(x), 1, -1), x], dim=1)
    if x.shape[1] == visual.positional_embedding.shape[0]:
        x = x + visual.positional_embedding
    else:
        x = x + ref.interpolate_pos_encoding(visual, x, images.shape[-2], images.shape[-1])
    x = visual.ln_pre(x)
    for block in visual.transformer.resblocks[:-1]:
        x = block(x)  # open_clip 3 blocks are batch first
    return x


def prior_by_loops(grid_h, grid_w, std):
    """NACLIP's Gaussian prior, one entry at a time; row/column 0 (class token) stay 0."""
    n = grid_h * grid_w
    prior = torch.zeros(n + 1, n + 1)
    for a in range(n):
        for b in range(n):
            (ra, ca), (rb, cb) = divmod(a, grid_w), divmod(b, grid_w)
            prior[a + 1, b + 1] = math.exp(-((ra - rb) ** 2 + (ca - cb) ** 2) / (2 * std**2))
    return prior


def attention_weights(variant, q, k, v, scale, prior):
    """Explicit [N, N] weights of one head."""
    if variant == "qk":
        return torch.softmax(q @ k.T * scale, dim=-1)
    if variant == "qq":
        return torch.softmax(q @ q.T * scale, dim=-1)
    if variant == "kk":
        return torch.softmax(k @ k.T * scale, dim=-1)
    if variant == "vv":
        return torch.softmax(v @ v.T * scale, dim=-1)
    if variant == "qq+kk":
        return torch.softmax(q @ q.T * scale, dim=-1) + torch.softmax(k @ k.T * scale, dim=-1)
    if variant == "identity":
        return torch.eye(len(q))
    if variant == "naclip":
        return torch.softmax(k @ k.T * scale + prior, dim=-1)
    raise ValueError(variant)


def independent_dense_features(visual, images, variant, residual, ffn, std=5.0):
    x = tokens_before_last_block(visual, images)
    block = visual.transformer.resblocks[-1]
    y = block.ln_1(x)
    qkv = y @ block.attn.in_proj_weight.T + block.attn.in_proj_bias
    width = x.shape[-1]
    heads = block.attn.num_heads
    head_dim = width // heads
    grid_h, grid_w = images.shape[-2] // 16, images.shape[-1] // 16
    prior = prior_by_loops(grid_h, grid_w, std) if variant == "naclip" else None
    outputs = []
    for b in range(len(x)):
        per_head = []
        for h in range(heads):
            cols = slice(h * head_dim, (h + 1) * head_dim)
            q, k, v = qkv[b, :, :width][:, cols], qkv[b, :, width : 2 * width][:, cols], qkv[b, :, 2 * width :][:, cols]
            per_head.append(attention_weights(variant, q, k, v, head_dim**-0.5, prior) @ v)
        outputs.append(torch.cat(per_head, dim=-1))
    x_attn = torch.stack(outputs) @ block.attn.out_proj.weight.T + block.attn.out_proj.bias
    out = x + x_attn if residual else x_attn
    if ffn:
        out = out + block.mlp(block.ln_2(out))
    return visual.ln_post(out[:, 1:]) @ visual.proj


@pytest.mark.parametrize("switches", SWITCHES, ids=lambda s: f"res{int(s[0])}-ffn{int(s[1])}")
@pytest.mark.parametrize("variant", VARIANTS)
def test_variant_matches_independent_computation(tiny_clip, variant, switches):
    model, _ = tiny_clip
    residual, ffn = switches
    images = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(len(variant)))
    with torch.no_grad():
        ours = DenseCLIPEncoder(model.visual, variant, residual, ffn)(images)
        expected = independent_dense_features(model.visual, images, variant, residual, ffn)
    assert torch.allclose(ours, expected, atol=FEATURE_ATOL), (ours - expected).abs().max()


@pytest.mark.parametrize("variant", ["naclip", "qq+kk", "kk"])
def test_variant_on_a_non_square_grid(tiny_clip, variant):
    """A 10 x 20 grid with resampled positional embeddings: rows and columns must not be swapped."""
    model, _ = tiny_clip
    images = torch.randn(1, 3, 160, 320, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        ours = DenseCLIPEncoder(model.visual, variant)(images)
        expected = independent_dense_features(model.visual, images, variant, False, False)
    assert torch.allclose(ours, expected, atol=FEATURE_ATOL), (ours - expected).abs().max()


def test_all_variants_are_registered_and_differ(tiny_clip):
    assert list(ATTENTION_VARIANTS) == VARIANTS
    model, _ = tiny_clip
    images = torch.randn(1, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        outputs = {name: DenseCLIPEncoder(model.visual, name)(images) for name in VARIANTS}
    for i, first in enumerate(VARIANTS):
        for second in VARIANTS[i + 1 :]:
            assert (outputs[first] - outputs[second]).abs().max() > 1e-3, (first, second)


def naclip_prior_as_the_authors_build_it(grid_h, grid_w, std):
    """NACLIP's construction restated: a (2h-1) x (2w-1) Gaussian window (linspace of the
    offsets scaled by 1/(std sqrt 2), exp(-sum of squares)) correlated ('same' padding) with a
    one-hot image per patch, then a zero row and column for the class token."""
    constant = 1.0 / (std * math.sqrt(2.0))
    axes = [torch.linspace(-(n - 1) * constant, (n - 1) * constant, 2 * n - 1) for n in (grid_h, grid_w)]
    window = torch.exp(-(torch.stack(torch.meshgrid(*axes, indexing="ij")) ** 2).sum(0))
    one_hot = torch.eye(grid_h * grid_w).view(grid_h * grid_w, 1, grid_h, grid_w)
    spread = F.conv2d(one_hot, window[None, None], padding="same").view(grid_h * grid_w, grid_h * grid_w)
    return F.pad(spread, (1, 0, 1, 0))


@pytest.mark.parametrize("grid, std", [((14, 14), 5.0), ((7, 28), 5.0), ((5, 9), 2.0), ((1, 1), 5.0)])
def test_neighbourhood_prior_is_naclips(grid, std):
    ours = neighbourhood_prior(TokenLayout(*grid), std)
    assert torch.allclose(ours, naclip_prior_as_the_authors_build_it(*grid, std), atol=1e-5)
    assert torch.allclose(ours, prior_by_loops(*grid, std), atol=1e-6)
    assert ours[0].abs().max() == 0 and ours[:, 0].abs().max() == 0


def test_naclip_std_comes_from_the_config(tiny_model_files, tiny_clip):
    model, _ = tiny_clip
    segmentor = build_model(tiny_cfg(tiny_model_files, **{"MODEL.CLEARCLIP.ATTENTION": "naclip",
                                                          "MODEL.CLEARCLIP.NACLIP_GAUSSIAN_STD": 1.5}))
    images = torch.randn(1, 3, 224, 224, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        ours = segmentor.encoder(images)
        narrow = independent_dense_features(model.visual, images, "naclip", False, False, std=1.5)
        default = independent_dense_features(model.visual, images, "naclip", False, False, std=5.0)
    assert torch.allclose(ours, narrow, atol=1e-5)
    assert (ours - default).abs().max() > 1e-3


@pytest.mark.parametrize("std", [0.0, -1.0])
def test_bad_naclip_std_is_refused(tiny_model_files, std):
    from clearclip_d2.config import check_clearclip_config

    cfg = tiny_cfg(tiny_model_files, **{"MODEL.CLEARCLIP.ATTENTION": "naclip", "MODEL.CLEARCLIP.NACLIP_GAUSSIAN_STD": std})
    with pytest.raises(ClearCLIPError, match="NACLIP_GAUSSIAN_STD"):
        check_clearclip_config(cfg)


def test_unknown_variant_lists_all_variants(tiny_clip):
    model, _ = tiny_clip
    with pytest.raises(ClearCLIPError) as info:
        DenseCLIPEncoder(model.visual, "qv")
    for name in VARIANTS:
        assert name in str(info.value)
