"""SCLIP: the plugin with configs/methods/sclip*.yaml against tests/reference_sclip.py."""

import pytest
import torch

import reference_sclip as ref
from method_exactness import (
    CLASSES,
    QUERY_IDX,
    area_threshold_dropping_a_class,
    assert_matches,
    build_from_preset,
    median_max_probability,
    reference_text,
    run_plugin,
    smooth_image,
)

SHORT_SIDE = 64  # a small resize keeps the tiny model fast; the rule is the authors'


@pytest.fixture(scope="module")
def text(tiny_clip):
    return reference_text(tiny_clip)


def reference(tiny_clip, text, image, **settings):
    settings = dict(dict(ref.DEFAULTS, short_side=SHORT_SIDE), **settings)
    return ref.segment(tiny_clip[0], text, QUERY_IDX, image, **settings)


def plugin(tiny_model_files, preset, image, crop, stride, **overrides):
    model, cfg = build_from_preset(
        tiny_model_files, preset, **{"INPUT.MIN_SIZE_TEST": SHORT_SIDE, "MODEL.CLEARCLIP.SLIDE_CROP": crop,
                                     "MODEL.CLEARCLIP.SLIDE_STRIDE": stride, **overrides}
    )
    return run_plugin(model, cfg, image)


@pytest.mark.parametrize("crop,stride", [(48, 32), (40, 24), (0, 0)])  # patch multiple, not, whole image
def test_sclip_preset_matches_the_authors(tiny_model_files, tiny_clip, text, crop, stride):
    image = smooth_image(50, 70, seed=1)  # resized to 64 x 90: the last windows are not multiples either
    ref_probs, ref_pred = reference(tiny_clip, text, image, crop=crop, stride=stride)
    assert_matches(plugin(tiny_model_files, "sclip.yaml", image, crop, stride), ref_probs, ref_pred)


def test_sclip_voc21_thresholds_and_area_threshold_match_the_authors(tiny_model_files, tiny_clip, text):
    """The VOC21 preset (logit scale 65) with thresholds that fire on this image."""
    image = smooth_image(60, 66, seed=2)
    plain, plain_pred = reference(tiny_clip, text, image, crop=40, stride=24, logit_scale=65.0)
    area_thd = area_threshold_dropping_a_class(plain_pred, len(CLASSES))
    prob_thd = median_max_probability(plain)
    ref_probs, ref_pred = reference(
        tiny_clip, text, image, crop=40, stride=24, logit_scale=65.0, prob_thd=prob_thd, area_thd=area_thd
    )
    assert (ref_pred == 0).sum() > (plain_pred == 0).sum()  # the threshold fired
    assert ((ref_probs[1:] == 0).all(-1).all(-1)).any()  # the area threshold dropped a class
    probs = plugin(
        tiny_model_files, "sclip/voc21.yaml", image, 40, 24,
        **{"MODEL.CLEARCLIP.PROB_THRESHOLD": prob_thd, "MODEL.CLEARCLIP.AREA_THRESHOLD": area_thd},
    )
    assert_matches(probs, ref_probs, ref_pred, prob_thd)


def test_sclip_with_pamr_matches_the_authors(tiny_model_files, tiny_clip, text):
    """PAMR (off in SCLIP's configs) on the per-query logits at the original size, sliding windows."""
    image = smooth_image(44, 60, seed=3)
    ref_probs, ref_pred = reference(tiny_clip, text, image, crop=40, stride=24, pamr_steps=3, pamr_dilations=(1, 2))
    plain, _ = reference(tiny_clip, text, image, crop=40, stride=24)
    assert not torch.allclose(ref_probs, plain, atol=1e-3)
    probs = plugin(
        tiny_model_files, "sclip.yaml", image, 40, 24,
        **{"MODEL.CLEARCLIP.REFINE": "pamr", "MODEL.CLEARCLIP.PAMR_ITERATIONS": 3, "MODEL.CLEARCLIP.PAMR_DILATIONS": [1, 2]},
    )
    assert_matches(probs, ref_probs, ref_pred)
