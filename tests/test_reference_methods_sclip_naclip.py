"""Smoke tests of the plain SCLIP and NACLIP references (tests/reference_sclip.py,
tests/reference_naclip.py) on a tiny random CLIP: shapes and invariants that a wrong
restatement breaks. The plugin is not involved; it is checked against these references elsewhere.
"""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import reference_naclip as naclip
import reference_sclip as sclip
from reference_clearclip import preprocess

QUERY_IDX = [0, 1, 1, 2, 3, 3, 4]  # 5 classes, classes 1 and 3 with synonyms
NUM_CLASSES = 5
METHODS = {"sclip": sclip, "naclip": naclip}


def smooth_image(height, width, seed=0):
    """A random, spatially smooth uint8 RGB image (predictions form regions, PAMR has edges)."""
    rng = np.random.default_rng(seed)
    small = torch.from_numpy(rng.integers(0, 256, (1, 3, 4, 5)).astype(np.float32))
    image = F.interpolate(small, size=(height, width), mode="bicubic", align_corners=False)[0]
    return image.clamp(0, 255).round().byte().permute(1, 2, 0).numpy()


@pytest.fixture(scope="module")
def model(tiny_clip):
    return tiny_clip[0]


@pytest.fixture(scope="module")
def queries():
    generator = torch.Generator().manual_seed(0)
    features = torch.randn(len(QUERY_IDX), 32, generator=generator)
    return features / features.norm(dim=-1, keepdim=True)


def run(method, model, queries, image, query_idx=QUERY_IDX, **settings):
    settings.setdefault("resize", False)
    return METHODS[method].segment(model, queries[: len(query_idx)], query_idx, image, **settings)


def check_output(probs, pred, shape, num_classes=NUM_CLASSES):
    assert probs.shape == (num_classes,) + shape and pred.shape == shape
    assert torch.isfinite(probs).all() and probs.min() >= 0 and probs.max() <= 1 + 1e-6
    assert pred.dtype == torch.int64 and 0 <= int(pred.min()) and int(pred.max()) < num_classes


@pytest.mark.parametrize("method", ["sclip", "naclip"])
@pytest.mark.parametrize("crop,stride", [(96, 64), (100, 60), (0, 0)])
def test_windows_and_whole_image_give_class_probabilities(method, model, queries, crop, stride):
    image = smooth_image(130, 197)  # neither side a multiple of the patch (16)
    probs, pred = run(method, model, queries, image, crop=crop, stride=stride, pamr_steps=0)
    check_output(probs, pred, (130, 197))
    assert torch.equal(pred, probs.argmax(0))  # no threshold: the prediction is the argmax
    sums = probs.sum(0)
    if method == "naclip":  # renormalised after the synonym max
        assert torch.allclose(sums, torch.ones_like(sums), atol=1e-5)
    else:  # a max over synonyms of a softmax over queries: at most 1, below 1 somewhere
        assert sums.max() <= 1 + 1e-5 and sums.min() < 1 - 1e-4


def test_without_synonyms_sclip_probabilities_are_the_softmax(model, queries):
    probs, _ = run("sclip", model, queries, smooth_image(64, 80), query_idx=[0, 1, 2, 3], crop=64, stride=32)
    assert torch.allclose(probs.sum(0), torch.ones(64, 80), atol=1e-5)


@pytest.mark.parametrize("method", ["sclip", "naclip"])
def test_window_not_a_multiple_of_the_patch_is_truncated_then_stretched(method, model, queries):
    """A 100 x 100 window is encoded as its top-left 96 x 96 pixels (6 x 6 patches, conv1 drops
    the rest), and those grid logits are stretched over all 100 x 100 pixels: no padding."""
    block = sclip.sclip_last_block if method == "sclip" else naclip.naclip_last_block
    img = preprocess(smooth_image(100, 100, seed=3))
    with torch.no_grad():
        window = sclip.forward_feature(model.visual, queries, img, None, block)
        grid = sclip.patch_grid_logits(model.visual, queries, img[:, :, :96, :96], block)
    assert grid.shape[-2:] == (6, 6)
    expected = F.interpolate(grid, size=(100, 100), mode="bilinear", align_corners=False)
    assert torch.allclose(window, expected, atol=1e-6)


@pytest.mark.parametrize("method", ["sclip", "naclip"])
def test_probability_threshold_sends_uncertain_pixels_to_background(method, model, queries):
    image = smooth_image(80, 112, seed=1)
    probs, pred = run(method, model, queries, image, crop=64, stride=48, pamr_steps=0)
    high = float(probs.max(0).values.median())
    probs_t, pred_t = run(method, model, queries, image, crop=64, stride=48, pamr_steps=0, prob_thd=high)
    assert torch.equal(probs_t, probs)  # the threshold only changes the prediction
    kept = pred_t != 0
    assert torch.equal(pred_t[kept], pred[kept])
    assert ((pred_t == 0) & (pred != 0)).any()
    if method == "sclip":  # SCLIP thresholds the probabilities it returns
        assert torch.equal(pred_t, torch.where(probs.max(0).values < high, torch.zeros_like(pred), pred))


def test_naclip_thresholds_before_renormalising():
    """Softmax [0.2, 0.4, 0.4] over queries (class 1 = queries 1 and 2) -> classes [0.2, 0.4]:
    below 0.5, so background, although the renormalised [1/3, 2/3] it returns is above."""
    logits = torch.tensor([0.2, 0.4, 0.4]).log().view(1, 3, 1, 1)
    probs, pred = naclip.postprocess(logits, 1.0, [0, 1, 1], prob_thd=0.5)
    assert torch.allclose(probs.flatten(), torch.tensor([1 / 3, 2 / 3]))
    assert pred.item() == 0
    probs_s, pred_s = sclip.postprocess(logits, 1.0, [0, 1, 1], prob_thd=0.5)
    assert torch.allclose(probs_s.flatten(), torch.tensor([0.2, 0.4])) and pred_s.item() == 0


def test_sclip_area_threshold_drops_small_classes(model, queries):
    image = smooth_image(96, 128, seed=2)
    probs, pred = run("sclip", model, queries, image, crop=64, stride=32)
    area = torch.bincount(pred.flatten(), minlength=NUM_CLASSES)[1:].float()
    assert (area > 0).sum() >= 2, "the image must predict several foreground classes"
    area_thd = float((area / area.sum())[area > 0].min()) + 1e-3  # drop at least the smallest class
    probs_a, pred_a = run("sclip", model, queries, image, crop=64, stride=32, area_thd=area_thd)
    dropped = area <= area_thd * area.sum()
    for cls in range(1, NUM_CLASSES):
        if dropped[cls - 1]:
            assert (probs_a[cls] == 0).all() and not (pred_a == cls).any()
        else:
            assert torch.equal(probs_a[cls], probs[cls])
    assert torch.equal(probs_a[0], probs[0])  # background is never dropped
    assert torch.equal(pred_a, probs_a.argmax(0))


@pytest.mark.parametrize("method", ["sclip", "naclip"])
def test_pamr_changes_the_logits_before_the_softmax(method, model, queries):
    image = smooth_image(80, 96, seed=4)
    off, _ = run(method, model, queries, image, crop=64, stride=32, pamr_steps=0)
    on, pred_on = run(method, model, queries, image, crop=64, stride=32, pamr_steps=3, pamr_dilations=(1, 2))
    check_output(on, pred_on, (80, 96))
    assert not torch.allclose(on, off, atol=1e-4)


def test_sclip_whole_image_mode_skips_pamr_as_released(model, queries):
    image = smooth_image(70, 90, seed=5)
    off, _ = run("sclip", model, queries, image, crop=0, pamr_steps=0)
    on, _ = run("sclip", model, queries, image, crop=0, pamr_steps=5)
    assert torch.equal(on, off)


def test_naclip_whole_image_mode_runs_pamr(model, queries):
    image = smooth_image(70, 90, seed=5)
    off, _ = run("naclip", model, queries, image, crop=0, pamr_steps=0)
    on, _ = run("naclip", model, queries, image, crop=0, pamr_steps=5)
    assert not torch.allclose(on, off, atol=1e-4)


def test_pamr_is_a_convex_average_guided_by_the_image():
    generator = torch.Generator().manual_seed(1)
    image = torch.rand(1, 3, 24, 30, generator=generator)
    mask = torch.rand(1, 4, 24, 30, generator=generator)
    assert torch.allclose(sclip.pamr(image, torch.ones(1, 4, 24, 30), 4, (1, 2)), torch.ones(1, 4, 24, 30), atol=1e-6)
    refined = sclip.pamr(image, mask, 4, (1, 2))
    assert refined.min() >= mask.min() - 1e-6 and refined.max() <= mask.max() + 1e-6
    assert not torch.allclose(refined, mask, atol=1e-3)
    assert torch.equal(sclip.pamr(image, mask, 0, (1, 2)), mask)
    # A step edge in the image keeps the two sides apart: a left/right mask survives.
    edge = torch.zeros(1, 3, 24, 30)
    edge[..., 15:] = 1.0
    edge += 1e-3 * torch.rand(1, 3, 24, 30, generator=generator)
    sides = (torch.arange(30) >= 15).float().expand(1, 1, 24, 30)
    assert torch.allclose(sclip.pamr(edge, sides, 10, (1, 2)), sides, atol=1e-3)


def test_naclip_neighbourhood_prior_is_a_gaussian_of_patch_distance():
    std = 1.5
    omega = naclip.attention_addition(3, 4, std)
    assert omega.shape == (13, 13)
    assert (omega[0] == 0).all() and (omega[:, 0] == 0).all()
    coords = torch.tensor([(i, j) for i in range(3) for j in range(4)], dtype=torch.float32)
    distance2 = ((coords[:, None] - coords[None]) ** 2).sum(-1)
    assert torch.allclose(omega[1:, 1:], torch.exp(-distance2 / (2 * std * std)), atol=1e-6)


@pytest.mark.parametrize("method", ["sclip", "naclip"])
def test_benchmark_settings_run_with_the_authors_resize(method, model, queries):
    """The VOC21 row (SCLIP: logit scale 65, thresholds; NACLIP: whole image, PAMR) from a small original."""
    module = METHODS[method]
    assert set(module.BENCHMARK_SETTINGS) == {
        "voc20", "voc21", "context59", "context60", "coco_object", "coco_stuff", "cityscapes", "ade20k"
    }
    settings = dict(module.DEFAULTS, **module.BENCHMARK_SETTINGS["voc21"])
    settings.update(short_side=48, pamr_dilations=(1, 2))  # a tiny resize keeps the smoke test fast
    if method == "sclip":
        settings.update(crop=32, stride=16)
    probs, pred = run(method, model, queries, smooth_image(60, 90, seed=6), resize=True, **settings)
    check_output(probs, pred, (60, 90))


def test_class_file_rule_splits_synonyms_on_comma_space(tmp_path):
    path = tmp_path / "classes.txt"
    path.write_text("sky, wall, tree\nperson\ntv monitor, screen\nwood ")
    queries, query_idx = sclip.read_class_file(str(path))
    assert queries == ["sky", "wall", "tree", "person", "tv monitor", "screen", "wood "]
    assert query_idx == [0, 0, 0, 1, 2, 2, 3]
