"""SC-CLIP (``ENCODER sc_clip``) against the plain restatement of the authors' code,
tests/reference_sc_clip.py, on a tiny random CLIP with 5 visual blocks.

Probabilities within 1e-4 and the same argmax, except the background channel at pixels below
``PROB_THRESHOLD`` (the project raises it so that argmax gives 0; the authors set the
prediction to 0 and keep the probabilities).
"""

import math
import os

import numpy as np
import pytest
import torch
from detectron2.config import get_cfg
from detectron2.modeling import build_model

import reference_clearclip as ref
import reference_sc_clip as sc
from conftest import FEW_TEMPLATES, TINY_VIT, save_random_checkpoint, tiny_cfg, write_model_config
from method_exactness import area_threshold_dropping_a_class
from test_modeling_exactness import smooth_image
from clearclip_d2 import add_clearclip_config
from clearclip_d2.config import check_clearclip_config
from clearclip_d2.modeling.methods.sc_clip import (
    fix_outliers,
    lof_outliers,
    outlier_keep_map,
)
from clearclip_d2.utils.errors import ClearCLIPError

CLASSES = ["background", "cat, kitten", "dog", "grass, lawn, meadow", "sky", "road"]
QUERIES = ["background", "cat", "kitten", "dog", "grass", "lawn", "meadow", "sky", "road"]
QUERY_IDX = [0, 1, 1, 2, 3, 3, 3, 4, 5]
# Five blocks: the four intermediate outputs (indices 0..3) stand in for ViT-B/16's eleven.
REF_SETTINGS = dict(pre_adjust_idx=2, post_adjust_idx=1, multi_start_idx=1, multi_end_idx=3)
SC_KEYS = {"PRE_ADJUST_INDEX": 2, "POST_ADJUST_INDEX": 1, "MULTI_START_INDEX": 1, "MULTI_END_INDEX": 3}
LOGIT_SCALE = 40.0


def default_cfg():
    cfg = get_cfg()
    add_clearclip_config(cfg)
    return cfg


@pytest.fixture(scope="module")
def deep_files(tmp_path_factory):
    """(model JSON, checkpoint) of a tiny random CLIP with 5 visual blocks."""
    config = {**TINY_VIT, "vision_cfg": {**TINY_VIT["vision_cfg"], "layers": 5}}
    directory = tmp_path_factory.mktemp("sc_clip_tiny")
    model_json = write_model_config(directory, "tiny-vit-5", config)
    return model_json, save_random_checkpoint(model_json, os.path.join(str(directory), "tiny-vit-5.safetensors"))


@pytest.fixture(scope="module")
def reference(deep_files):
    """(open_clip model, reference text features [Q, D]) built without the plugin."""
    import open_clip
    from safetensors.torch import load_file

    open_clip.add_model_config(deep_files[0])
    model = open_clip.create_model("tiny-vit-5", pretrained=None)
    model.load_state_dict(load_file(deep_files[1]))
    model.eval()
    return model, ref.text_features(model, open_clip.get_tokenizer("tiny-vit-5"), QUERIES, FEW_TEMPLATES)


def sc_overrides(**overrides):
    keys = {f"MODEL.CLEARCLIP.SC_CLIP.{key}": value for key, value in SC_KEYS.items()}
    return {
        "MODEL.CLEARCLIP.ENCODER": "sc_clip",
        "MODEL.CLEARCLIP.WINDOW_PADDING": "none",
        "MODEL.CLEARCLIP.LOGIT_SCALE": LOGIT_SCALE,
        "MODEL.CLEARCLIP.PROB_THRESHOLD": 0.0,
        **keys,
        **overrides,
    }


def build_segmentor(deep_files, **overrides):
    model = build_model(tiny_cfg(deep_files, **sc_overrides(**overrides))).eval()
    model.set_vocabulary(CLASSES)
    return model


def run_plugin(model, image_rgb):
    return model([{"image": torch.from_numpy(np.ascontiguousarray(image_rgb.transpose(2, 0, 1)))}])[0]["sem_seg"]


def assert_matches(probs, ref_probs, ref_pred, prob_thd=0.0):
    """1e-4 in probability (background channel: only where the reference's maximum is at
    least ``prob_thd``) and the same argmax everywhere."""
    assert probs.shape == ref_probs.shape
    compared = torch.ones_like(probs, dtype=torch.bool)
    compared[0] = ref_probs.max(0).values >= prob_thd
    assert (probs - ref_probs).abs()[compared].max() <= 1e-4, (probs - ref_probs).abs()[compared].max()
    assert torch.equal(probs.argmax(0), ref_pred)


def threshold_between_pixels(max_probs):
    """A threshold near the median of ``max_probs`` [H, W] at least 1e-4 away from every
    pixel's value, so that 1e-5 numerical differences cannot move a pixel across it."""
    values = max_probs.flatten().unique()  # sorted
    gaps = values[1:] - values[:-1]
    wide = (gaps > 2e-4).nonzero().flatten()
    index = wide[(wide - len(values) // 2).abs().argmin()]
    return float(values[index] + gaps[index] / 2)


# ----------------------------------------------------------------------------- pieces
def test_lof_is_the_authors_per_window():
    tokens = torch.from_numpy(np.random.default_rng(1).normal(size=(3, 64, 8))).float()
    tokens[1, [5, 40]] += 30.0
    flags = lof_outliers(tokens, 30, 0.05)
    for window in range(3):
        expected = torch.zeros(64, dtype=torch.bool)
        expected[sc.lof_outliers(tokens[window])] = True
        assert torch.equal(flags[window], expected)
    assert flags[1, 5] and flags[1, 40]  # the planted outliers
    assert (flags.sum(dim=1) == math.ceil(64 * 0.05)).all()  # the contamination share


def test_outlier_fix_is_the_authors_and_follows_their_positions_on_non_square_grids():
    rng = np.random.default_rng(2)
    tokens = torch.from_numpy(rng.normal(size=(2, 28, 5))).float()  # a 4 x 7 grid
    flags = torch.zeros(2, 28, dtype=torch.bool)
    flags[0, [0, 9, 13]] = True  # authors' positions (0, 0), (2, 1), (3, 1)
    fixed = fix_outliers(tokens, outlier_keep_map(flags, 4, 7))
    rows, cols = sc.outlier_positions(torch.tensor([0, 9, 13]), 4, 7)
    assert (rows.tolist(), cols.tolist()) == ([0, 2, 3], [0, 1, 1])
    expected = sc.fix_tokens(tokens[:1].permute(1, 0, 2), rows, cols, (4, 7)).permute(1, 0, 2)
    assert torch.allclose(fixed[:1], expected, atol=1e-6) and torch.equal(fixed[1], tokens[1])
    flags[1, 27] = True  # 27 // 4 = 6: outside the 4 rows, where the authors' code fails
    with pytest.raises(ClearCLIPError, match="4x7 patch grid.*authors' position rule.*square windows"):
        outlier_keep_map(flags, 4, 7)


def test_encoder_matches_the_authors_one_window_at_a_time_and_batched(deep_files, reference):
    model, _ = reference
    encoder = build_segmentor(deep_files).encoder
    for size in (112, 100):  # a multiple of the patch, and one the patch embedding truncates
        images = torch.stack([ref.preprocess(smooth_image(size, size, seed))[0] for seed in range(3)])
        with torch.no_grad():
            batched = encoder(images)
            for image, features in zip(images, batched):
                expected = sc.encode_image(model.visual, image[None], **REF_SETTINGS)[0]
                assert torch.allclose(features, expected, atol=1e-4), (features - expected).abs().max()
                assert torch.allclose(encoder(image[None])[0], features, atol=1e-5)


# ----------------------------------------------------------------------------- pipeline
@pytest.mark.parametrize("crop,stride", [(112, 64), (100, 60)])
def test_sliding_windows_and_synonyms(deep_files, reference, crop, stride):
    model, text = reference
    image = smooth_image(150, 190, seed=4)
    ref_probs, ref_pred = sc.segment(model, text, QUERY_IDX, image, crop=crop, stride=stride, logit_scale=LOGIT_SCALE,
                                     resize=False, **REF_SETTINGS)
    segmentor = build_segmentor(deep_files, **{"MODEL.CLEARCLIP.SLIDE_CROP": crop, "MODEL.CLEARCLIP.SLIDE_STRIDE": stride,
                                               "MODEL.CLEARCLIP.WINDOW_BATCH": 3})
    assert_matches(run_plugin(segmentor, image), ref_probs, ref_pred)


@pytest.mark.parametrize("size", [128, 120])
def test_whole_image(deep_files, reference, size):
    model, text = reference
    image = smooth_image(size, size, seed=5)
    ref_probs, ref_pred = sc.segment(model, text, QUERY_IDX, image, crop=0, logit_scale=LOGIT_SCALE, resize=False, **REF_SETTINGS)
    segmentor = build_segmentor(deep_files, **{"MODEL.CLEARCLIP.SLIDE_CROP": 0})
    assert_matches(run_plugin(segmentor, image), ref_probs, ref_pred)


def test_probability_threshold(deep_files, reference):
    model, text = reference
    image = smooth_image(150, 170, seed=6)
    kwargs = dict(crop=112, stride=64, logit_scale=LOGIT_SCALE, resize=False, **REF_SETTINGS)
    plain, _ = sc.segment(model, text, QUERY_IDX, image, **kwargs)
    threshold = threshold_between_pixels(plain.max(0).values)
    ref_probs, ref_pred = sc.segment(model, text, QUERY_IDX, image, prob_thd=threshold, **kwargs)
    segmentor = build_segmentor(deep_files, **{"MODEL.CLEARCLIP.SLIDE_CROP": 112, "MODEL.CLEARCLIP.SLIDE_STRIDE": 64,
                                               "MODEL.CLEARCLIP.PROB_THRESHOLD": threshold})
    assert 0 < (ref_pred == 0).float().mean() < 1
    assert_matches(run_plugin(segmentor, image), ref_probs, ref_pred, prob_thd=threshold)


def test_area_threshold(deep_files, reference):
    model, text = reference
    image = smooth_image(150, 170, seed=12)  # predicts two foreground classes (seed 7: one)
    kwargs = dict(crop=112, stride=64, logit_scale=LOGIT_SCALE, resize=False, **REF_SETTINGS)
    _, plain_pred = sc.segment(model, text, QUERY_IDX, image, **kwargs)
    area_thd = area_threshold_dropping_a_class(plain_pred, len(CLASSES))
    ref_probs, ref_pred = sc.segment(model, text, QUERY_IDX, image, area_thd=area_thd, **kwargs)
    segmentor = build_segmentor(deep_files, **{"MODEL.CLEARCLIP.SLIDE_CROP": 112, "MODEL.CLEARCLIP.SLIDE_STRIDE": 64,
                                               "MODEL.CLEARCLIP.AREA_THRESHOLD": area_thd})
    assert not torch.equal(ref_pred, plain_pred)
    assert_matches(run_plugin(segmentor, image), ref_probs, ref_pred)


# ----------------------------------------------------------------------------- refusals
def test_windows_too_small_for_the_lof_are_refused(deep_files):
    with pytest.raises(ClearCLIPError, match="SLIDE_CROP 80 has 5x5 patches.*LOF_NEIGHBOURS \\+ 1 = 31"):
        build_segmentor(deep_files, **{"MODEL.CLEARCLIP.SLIDE_CROP": 80, "MODEL.CLEARCLIP.SLIDE_STRIDE": 40})
    segmentor = build_segmentor(deep_files, **{"MODEL.CLEARCLIP.SLIDE_CROP": 112, "MODEL.CLEARCLIP.SLIDE_STRIDE": 64})
    with pytest.raises(ClearCLIPError, match="64x112-pixel window has 4x7 patches"):
        run_plugin(segmentor, smooth_image(64, 150, seed=8))


def test_bad_settings_are_refused_in_one_line(deep_files):
    cfg = default_cfg()
    cfg.MODEL.CLEARCLIP.ENCODER = "sc_clip"
    check_clearclip_config(cfg)  # the authors' defaults
    cfg.MODEL.CLEARCLIP.SC_CLIP.LOF_CONTAMINATION = 1.0
    with pytest.raises(ClearCLIPError, match="SC_CLIP.LOF_CONTAMINATION must be in \\[0, 1\\)"):
        check_clearclip_config(cfg)
    # ViT-B/16's indices on 5 blocks: layer 8 does not exist.
    with pytest.raises(ClearCLIPError, match="SC_CLIP.PRE_ADJUST_INDEX must be >= 0 and below 4"):
        build_segmentor(deep_files, **{"MODEL.CLEARCLIP.SC_CLIP.PRE_ADJUST_INDEX": 8})
