"""NACLIP: the plugin with configs/methods/naclip*.yaml against tests/reference_naclip.py
(PAMR, renormalisation and, for VOC, the whole image with its two-step upsample)."""

import pytest
import torch

import reference_naclip as ref
from method_exactness import QUERY_IDX, assert_matches, build_from_preset, median_max_probability, reference_text, run_plugin, smooth_image

SHORT_SIDE = 64
FAST_PAMR = {"pamr_steps": 3, "pamr_dilations": (1, 2)}
FAST_PAMR_KEYS = {"MODEL.CLEARCLIP.PAMR_ITERATIONS": 3, "MODEL.CLEARCLIP.PAMR_DILATIONS": [1, 2]}


@pytest.fixture(scope="module")
def text(tiny_clip):
    return reference_text(tiny_clip)


def reference(tiny_clip, text, image, **settings):
    settings = dict(dict(ref.DEFAULTS, short_side=SHORT_SIDE), **settings)
    return ref.segment(tiny_clip[0], text, QUERY_IDX, image, **settings)


def plugin(tiny_model_files, preset, image, **overrides):
    model, cfg = build_from_preset(tiny_model_files, preset, **{"INPUT.MIN_SIZE_TEST": SHORT_SIDE, **overrides})
    return run_plugin(model, cfg, image)


@pytest.mark.parametrize("crop,stride", [(48, 32), (40, 24)])  # windows a patch multiple, and not
def test_naclip_preset_matches_the_authors(tiny_model_files, tiny_clip, text, crop, stride):
    """The preset as shipped (PAMR 10 steps, dilations 8 and 16; renormalised) with small windows."""
    image = smooth_image(50, 70, seed=4)
    ref_probs, ref_pred = reference(tiny_clip, text, image, crop=crop, stride=stride)
    probs = plugin(tiny_model_files, "naclip.yaml", image, **{"MODEL.CLEARCLIP.SLIDE_CROP": crop, "MODEL.CLEARCLIP.SLIDE_STRIDE": stride})
    assert torch.allclose(probs.sum(0), torch.ones(50, 70), atol=1e-5)  # renormalised
    assert_matches(probs, ref_probs, ref_pred)


def test_naclip_voc21_whole_image_threshold_matches_the_authors(tiny_model_files, tiny_clip, text):
    """VOC21: whole image (grid -> resized input -> original: 45 x 60 resized to 64 x 85, not a
    patch multiple), PAMR, the threshold on the probabilities before the renormalisation."""
    image = smooth_image(45, 60, seed=5)
    plain, _ = reference(tiny_clip, text, image, crop=0, **FAST_PAMR)
    prob_thd = median_max_probability(plain * 0.9)  # of the renormalised ones; fires on some pixels
    ref_probs, ref_pred = reference(tiny_clip, text, image, crop=0, prob_thd=prob_thd, **FAST_PAMR)
    assert (ref_pred == 0).any() and (ref_pred != 0).any()
    probs = plugin(tiny_model_files, "naclip/voc21.yaml", image, **{"MODEL.CLEARCLIP.PROB_THRESHOLD": prob_thd, **FAST_PAMR_KEYS})
    assert_matches(probs, ref_probs, ref_pred, prob_thd)


def test_whole_image_upsample_via_input_is_what_makes_the_match(tiny_model_files, tiny_clip, text):
    """Guard: with one bilinear step (WHOLE_IMAGE_UPSAMPLE direct) the plugin no longer matches."""
    image = smooth_image(45, 60, seed=5)
    ref_probs, _ = reference(tiny_clip, text, image, crop=0, pamr_steps=0)
    direct = plugin(
        tiny_model_files, "naclip/voc20.yaml", image,
        **{"MODEL.CLEARCLIP.WHOLE_IMAGE_UPSAMPLE": "direct", "MODEL.CLEARCLIP.REFINE": "none"},
    )
    assert ref_probs.shape[0] == direct.shape[0] and (direct - ref_probs).abs().max() > 1e-3
