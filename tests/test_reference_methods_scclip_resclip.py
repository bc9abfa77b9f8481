"""Smoke tests of the SC-CLIP and ResCLIP reference restatements (tests/reference_sc_clip.py,
tests/reference_resclip.py) on a tiny random 5-block CLIP: their pieces against loops or closed
forms, windows whose size is and is not a multiple of the patch, whole-image mode, thresholds.
SC-CLIP's LOF, outlier positions and sliding windows are checked in tests/test_method_sc_clip.py
(the plugin against the reference)."""

import math
import os

import numpy as np
import pytest
import torch

import reference_clearclip as ref
import reference_resclip as rc
import reference_sc_clip as sc
from conftest import FEW_TEMPLATES, TINY_VIT, save_random_checkpoint, write_model_config
from test_refinement import pamr_loops

# Five blocks: four intermediate outputs (indices 0..3) stand in for ViT-B/16's eleven.
SC_SETTINGS = dict(pre_adjust_idx=2, post_adjust_idx=1, multi_start_idx=1, multi_end_idx=3)
RES_SETTINGS = dict(temp_thd=0.1, rcs_weights=(2.0, 0.3), sfr_weights=(2.1, 0.7), rcs_layers=(1, 2, 3))
QUERIES = ["sky", "cat", "dog", "car"]


@pytest.fixture(scope="module")
def deep_tiny(tmp_path_factory):
    """(model, query features [4, D]) of a tiny random CLIP with 5 visual blocks."""
    import open_clip
    from safetensors.torch import load_file

    config = {**TINY_VIT, "vision_cfg": {**TINY_VIT["vision_cfg"], "layers": 5}}
    directory = tmp_path_factory.mktemp("deep_tiny")
    model_json = write_model_config(directory, "tiny-vit-5", config)
    checkpoint = save_random_checkpoint(model_json, os.path.join(str(directory), "tiny-vit-5.safetensors"))
    open_clip.add_model_config(model_json)
    model = open_clip.create_model("tiny-vit-5", pretrained=None)
    model.load_state_dict(load_file(checkpoint))
    model.eval()
    features = ref.text_features(model, open_clip.get_tokenizer("tiny-vit-5"), QUERIES, FEW_TEMPLATES)
    return model, features


def random_image(height, width, seed=0):
    return np.random.default_rng(seed).integers(0, 256, size=(height, width, 3), dtype=np.uint8)


def check_output(probs, pred, num_classes, shape, sums_to_one=True):
    assert probs.shape == (num_classes,) + shape and pred.shape == shape
    assert torch.isfinite(probs).all() and (probs >= 0).all() and (probs <= 1 + 1e-6).all()
    if sums_to_one:
        assert torch.allclose(probs.sum(0), torch.ones(shape), atol=1e-5)


# ----------------------------------------------------------------------------- SC-CLIP pieces
def test_mean_interpolation_matches_a_loop():
    rng = np.random.default_rng(2)
    fmap = torch.from_numpy(rng.normal(size=(1, 3, 5, 6))).float()
    rows, cols = torch.tensor([0, 2, 2, 4]), torch.tensor([0, 3, 4, 5])
    fixed = sc.mean_interpolation(fmap, rows, cols)
    outliers = set(zip(rows.tolist(), cols.tolist()))
    expected = fmap.clone()
    for r, c in outliers:
        neighbours = [(r + dy, c + dx) for dy in (-1, 0, 1) for dx in (-1, 0, 1) if (dy, dx) != (0, 0)]
        good = [(y, x) for y, x in neighbours if 0 <= y < 5 and 0 <= x < 6 and (y, x) not in outliers]
        expected[0, :, r, c] = torch.stack([fmap[0, :, y, x] for y, x in good]).mean(0)
    assert torch.allclose(fixed, expected, atol=1e-6)


# ----------------------------------------------------------------------------- SC-CLIP pipeline
def test_sc_clip_truncates_windows_that_are_not_patch_multiples(deep_tiny):
    model, _ = deep_tiny
    img = ref.preprocess(random_image(200, 200, seed=3))
    with torch.no_grad():
        full = sc.encode_image(model.visual, img, **SC_SETTINGS)
        cut = sc.encode_image(model.visual, img[:, :, :192, :192], **SC_SETTINGS)
    assert full.shape == (1, 144, queries_dim(model)) and torch.allclose(full, cut, atol=1e-5)


def queries_dim(model):
    return model.visual.proj.shape[1]


def test_sc_clip_whole_image_resize_and_synonyms(deep_tiny):
    model, queries = deep_tiny
    image = random_image(180, 180, seed=4)  # resized to 336 x 336, a square grid
    probs, pred = sc.segment(model, queries, [0, 1, 1, 2], image, crop=0, **SC_SETTINGS)
    check_output(probs, pred, 3, (180, 180), sums_to_one=False)
    per_query = (ref_logits_whole(model, queries, image) * 40.0).softmax(0)
    assert torch.allclose(probs[1], per_query[1:3].max(0)[0], atol=1e-5)


def ref_logits_whole(model, queries, image):
    img = ref.preprocess(ref.mmcv_rescale(image, short=336))
    with torch.no_grad():
        return sc.forward_feature(model.visual, queries, img, SC_SETTINGS, logit_size=image.shape[:2])[0]


def test_sc_clip_thresholds(deep_tiny):
    model, queries = deep_tiny
    image = random_image(240, 260, seed=5)
    kwargs = dict(crop=224, stride=112, resize=False, **SC_SETTINGS)
    plain, plain_pred = sc.segment(model, queries, [0, 1, 2, 3], image, **kwargs)
    _, all_background = sc.segment(model, queries, [0, 1, 2, 3], image, prob_thd=1.01, **kwargs)
    assert (all_background == 0).all()
    probs, pred = sc.segment(model, queries, [0, 1, 2, 3], image, area_thd=0.3, **kwargs)
    areas = [(plain_pred == c).sum().item() for c in range(1, 4)]
    for c, area in zip(range(1, 4), areas):
        kept = area > 0.3 * sum(areas)
        assert torch.equal(probs[c], plain[c]) if kept else (probs[c] == 0).all()
    assert any(area <= 0.3 * sum(areas) for area in areas), "the test image should drop a class"


def test_sc_clip_components_matter(deep_tiny):
    model, _ = deep_tiny
    img = ref.preprocess(random_image(224, 224, seed=6))
    with torch.no_grad():
        base = sc.encode_image(model.visual, img, **SC_SETTINGS)
        no_cls = sc.encode_image(model.visual, img, **{**SC_SETTINGS, "res_cls": 0.0})
        l2 = sc.encode_image(model.visual, img, outliers="l2", **SC_SETTINGS)
    assert not torch.allclose(base, no_cls, atol=1e-4) and not torch.allclose(base, l2, atol=1e-4)


# ----------------------------------------------------------------------------- ResCLIP pieces
def test_gaussian_addition_is_naclips_prior():
    out = rc.gaussian_addition(3, 4, std=1.5)
    assert out.shape == (13, 13) and (out[0] == 0).all() and (out[:, 0] == 0).all()
    coords = [(i, j) for i in range(3) for j in range(4)]
    expected = torch.tensor([[math.exp(-((a - c) ** 2 + (b - d) ** 2) / (2 * 1.5 ** 2)) for c, d in coords] for a, b in coords])
    assert torch.allclose(out[1:, 1:], expected, atol=1e-5)


def test_pamr_matches_pixel_loops():
    rng = np.random.default_rng(7)
    image = torch.from_numpy(rng.normal(size=(1, 3, 9, 11))).float()
    mask = torch.from_numpy(rng.random(size=(1, 4, 9, 11))).float()
    expected = pamr_loops(mask[0].numpy(), image[0].numpy(), 3, (1, 2))
    assert np.allclose(rc.pamr(image, mask, 3, (1, 2))[0].numpy(), expected, atol=1e-5)


def test_patch_classes_are_thresholded_block_modes():
    probs = torch.zeros(1, 3, 4, 6)
    probs[0, 2, :2, :3] = 0.9  # block (0, 0): class 2
    probs[0, 1, 2:, :] = 0.3  # bottom row: class 1 at 0.3
    probs[0, 2, 2, 3] = 0.31  # one pixel of block (1, 1) is class 2: class 1 keeps the majority
    classes = rc.patch_classes(probs, (2, 2), 2, temp_thd=0.1)
    assert classes.tolist() == [[2, 0], [1, 1]]
    assert rc.patch_classes(probs, (2, 2), 2, temp_thd=0.5).tolist() == [[2, 0], [0, 0]]


def test_straight_path_checks_the_authors_partial_segment():
    classes = torch.tensor([[0, 1, 0]])
    start = torch.tensor([[0, 0], [0, 0]])
    end = torch.tensor([[0, 2], [0, 1]])
    # (0,0)->(0,2) crosses class 1; (0,0)->(0,1) checks t = 0, 1/2 only (max_steps 2): "valid".
    assert rc.straight_path_same_class(start, end, classes).tolist() == [False, True]


def test_sfr_attention_rows():
    classes = torch.tensor([[0, 0, 1], [0, 1, 1]])
    sfr = rc.sfr_attention(classes, gaussian_std=0.5, delete_same_entity=True)
    assert sfr.shape == (1, 7, 7) and (sfr[0, 0] == 0).all() and (sfr[0, :, 0] == 0).all()
    assert torch.allclose(sfr[0, 1:, 1:].sum(1), torch.ones(6), atol=1e-6)
    # One class everywhere: each row is the 1-D blur (std 0.5: int(4) -> 5 taps, zero padding)
    # of a row of ones along the flattened index, normalised.
    uniform = rc.sfr_attention(torch.zeros(2, 3, dtype=torch.long), gaussian_std=0.5, delete_same_entity=False)
    taps = np.exp(-np.arange(-2, 3) ** 2 / (2 * 0.5 ** 2))
    row = np.array([sum(taps[k] for k in range(5) if 0 <= j + k - 2 < 6) for j in range(6)]) / taps.sum()
    expected = torch.from_numpy(row / row.sum()).float().expand(6, 6)
    assert torch.allclose(uniform[0, 1:, 1:], expected, atol=1e-6)
    assert not torch.allclose(sfr, uniform)


# ----------------------------------------------------------------------------- ResCLIP pipeline
# The whole pipeline (windows, whole image, thresholds, PAMR) runs in tests/test_method_resclip.py,
# against the plugin.
def test_resclip_second_pass_without_sfr_is_the_first_pass(deep_tiny):
    model, queries = deep_tiny
    visual = model.visual
    img = ref.preprocess(random_image(224, 224, seed=9))
    settings = {**RES_SETTINGS, "sfr_weights": (1.0, 0.0)}
    with torch.no_grad():
        second = rc.encode_image(visual, img, queries, 40.0, **settings)
        x = sc.embed_tokens(visual, img)
        maps = []
        for blk in visual.transformer.resblocks[:-1]:
            x, attn = rc.block_with_attention(blk, x)
            maps.append(attn)
        blk = visual.transformer.resblocks[-1]
        omega = rc.gaussian_addition(14, 14)[None]
        rcs = torch.stack([maps[i] for i in (1, 2, 3)]).mean(0)
        first = rc.project_patches(visual, rc.resclip_attention(blk.attn, blk.ln_1(x), omega, rcs, (2.0, 0.3)))
        with_sfr = rc.encode_image(visual, img, queries, 40.0, **RES_SETTINGS)
    assert torch.allclose(second, first, atol=1e-5)
    assert not torch.allclose(with_sfr, first, atol=1e-4)


def test_standard_block_with_attention_is_open_clips_block(deep_tiny):
    model, _ = deep_tiny
    x = sc.embed_tokens(model.visual, ref.preprocess(random_image(224, 224, seed=10)))
    blk = model.visual.transformer.resblocks[0]
    with torch.no_grad():
        ours, attn = rc.block_with_attention(blk, x)
        theirs = sc.open_clip_block(blk, x)
    assert torch.allclose(ours, theirs, atol=5e-5) and torch.allclose(attn.sum(-1), torch.ones(attn.shape[:2]), atol=1e-5)
