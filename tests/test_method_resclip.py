"""ENCODER resclip against tests/reference_resclip.py (the authors' pipeline restated) on a
tiny random 5-block CLIP: probabilities within 1e-4, identical argmax.

Without synonyms the authors' renormalisation is the identity (the softmax over queries already
sums to 1), and without a resize the whole image's two upsamplings are one: RENORMALIZE and
WHOLE_IMAGE_UPSAMPLE are tested by their own tests below.
"""

import os

import numpy as np
import pytest
import torch
from detectron2.modeling import build_model

import reference_clearclip as ref
import reference_resclip as rc
from conftest import FEW_TEMPLATES, TINY_VIT, save_random_checkpoint, tiny_cfg, write_model_config
from method_exactness import assert_matches  # channel 0 left out where the authors predict 0 (threshold before renormalisation)
from clearclip_d2.config import check_clearclip_config
from clearclip_d2.modeling.methods.resclip import (
    ResCLIPEncoder,
    ResCLIPSettings,
    feedback_matrix,
    patch_modes,
    straight_paths_within_class,
)
from clearclip_d2.utils.errors import ClearCLIPError

CLASSES = ["sky", "cat", "dog", "car"]
SYNONYM_CLASSES = ["sky", "cat, kitten", "dog"]
SYNONYM_QUERIES, SYNONYM_INDEX = ["sky", "cat", "kitten", "dog"], [0, 1, 1, 2]
# Five blocks: the RCS layers 1..3 stand in for ViT-B/16's 5..8.
RES_SETTINGS = dict(temp_thd=0.1, rcs_weights=(2.0, 0.3), sfr_weights=(2.1, 0.7), rcs_layers=(1, 2, 3))
LOGIT_SCALE = 40.0


@pytest.fixture(scope="module")
def deep_files(tmp_path_factory):
    """(model-config JSON, checkpoint) of a tiny random CLIP with 5 visual blocks."""
    config = {**TINY_VIT, "vision_cfg": {**TINY_VIT["vision_cfg"], "layers": 5}}
    directory = tmp_path_factory.mktemp("resclip_tiny")
    model_json = write_model_config(directory, "tiny-vit-5", config)
    return model_json, save_random_checkpoint(model_json, os.path.join(str(directory), "tiny-vit-5.safetensors"))


@pytest.fixture(scope="module")
def deep_clip(deep_files):
    import open_clip
    from safetensors.torch import load_file

    model_json, checkpoint = deep_files
    open_clip.add_model_config(model_json)
    model = open_clip.create_model("tiny-vit-5", pretrained=None)
    model.load_state_dict(load_file(checkpoint))
    return model.eval(), open_clip.get_tokenizer("tiny-vit-5")


def reference_text(deep_clip, queries):
    model, tokenizer = deep_clip
    return ref.text_features(model, tokenizer, queries, FEW_TEMPLATES)


def resclip_overrides(crop, stride, prob_thd=0.0, **settings):
    settings = {**RES_SETTINGS, **settings}
    return {
        "MODEL.CLEARCLIP.ENCODER": "resclip",
        "MODEL.CLEARCLIP.WINDOW_PADDING": "none",
        "MODEL.CLEARCLIP.LOGIT_SCALE": LOGIT_SCALE,
        "MODEL.CLEARCLIP.PROB_THRESHOLD": prob_thd,
        "MODEL.CLEARCLIP.SLIDE_CROP": crop,
        "MODEL.CLEARCLIP.SLIDE_STRIDE": stride,
        "MODEL.CLEARCLIP.RESCLIP.RCS_LAYERS": list(settings["rcs_layers"]),
        "MODEL.CLEARCLIP.RESCLIP.RCS_WEIGHTS": list(settings["rcs_weights"]),
        "MODEL.CLEARCLIP.RESCLIP.SFR_WEIGHTS": list(settings["sfr_weights"]),
        "MODEL.CLEARCLIP.RESCLIP.FIRST_PASS_THRESHOLD": settings["temp_thd"],
    }


def build(deep_files, classes=CLASSES, **overrides):
    model = build_model(tiny_cfg(deep_files, **overrides)).eval()
    model.set_vocabulary(classes)
    return model


def random_image(height, width, seed=0):
    return np.random.default_rng(seed).integers(0, 256, size=(height, width, 3), dtype=np.uint8)


def run_plugin(model, image_rgb, out_size=None):
    inputs = {"image": torch.from_numpy(np.ascontiguousarray(image_rgb.transpose(2, 0, 1)))}
    if out_size is not None:
        inputs.update(height=out_size[0], width=out_size[1])
    return model([inputs])[0]["sem_seg"]


# ----------------------------------------------------------------------------- pieces
def test_feedback_matrix_is_the_authors():
    rng = np.random.default_rng(3)
    for shape in [(2, 3), (5, 7), (1, 4)]:
        classes = torch.from_numpy(rng.integers(0, 3, shape))
        for delete in (True, False):
            ours = feedback_matrix(classes, 1.5, delete)
            assert torch.allclose(ours[None], rc.sfr_attention(classes, 1.5, delete), atol=1e-7)


def test_straight_paths_one_step_at_a_time_equal_the_authors_all_at_once():
    classes = torch.from_numpy(np.random.default_rng(4).integers(0, 2, (6, 5)))
    stays, steps = straight_paths_within_class(classes)
    index = torch.arange(30)
    i, j = torch.meshgrid(index, index, indexing="ij")
    start = torch.stack((i // 5, i % 5), -1).view(-1, 2)
    end = torch.stack((j // 5, j % 5), -1).view(-1, 2)
    assert torch.equal(stays.view(-1), rc.straight_path_same_class(start, end, classes))
    assert steps.max() == 5 and not stays.all()


def test_patch_modes_are_the_authors_block_modes():
    labels = torch.from_numpy(np.random.default_rng(5).integers(0, 4, (37, 50)))
    probs = torch.nn.functional.one_hot(labels, 4).permute(2, 0, 1)[None].float()
    assert torch.equal(patch_modes(labels, (2, 3), 16), rc.patch_classes(probs, (2, 3), 16, temp_thd=0.0))


def test_batched_windows_equal_one_at_a_time(deep_files, deep_clip):
    """Per-window state (RCS, first-pass classes, feedback maximum) stays per window."""
    model, _ = deep_clip
    text = reference_text(deep_clip, CLASSES)
    encoder = build(deep_files, **resclip_overrides(64, 32)).encoder
    windows = torch.stack([ref.preprocess(random_image(64, 80, seed))[0] for seed in (6, 7, 8)])
    with torch.no_grad():
        batched = encoder(windows, text_embeddings=text)
        single = torch.cat([encoder(w[None], text_embeddings=text) for w in windows])
        expected = torch.cat([rc.encode_image(model.visual, w[None], text, LOGIT_SCALE, **RES_SETTINGS) for w in windows])
    assert torch.allclose(batched, single, atol=1e-5)
    assert torch.allclose(batched, expected, atol=5e-5), (batched - expected).abs().max()


def test_feedback_changes_the_features(deep_files):
    """Guards the comparisons: the second pass differs from the first (lambda_s 0)."""
    text = torch.nn.functional.normalize(torch.randn(4, 32), dim=-1)
    windows = ref.preprocess(random_image(64, 64, seed=9))
    with_sfr = build(deep_files, **resclip_overrides(64, 32)).encoder
    without = build(deep_files, **resclip_overrides(64, 32, sfr_weights=(1.0, 0.0))).encoder
    with torch.no_grad():
        assert not torch.allclose(with_sfr(windows, text_embeddings=text), without(windows, text_embeddings=text), atol=1e-3)


# ----------------------------------------------------------------------------- pipeline
@pytest.mark.parametrize("crop,stride", [(64, 32), (56, 28)])  # multiple of the patch, and not
def test_sliding_windows_match_the_reference(deep_files, deep_clip, crop, stride):
    model = build(deep_files, **resclip_overrides(crop, stride))
    image = random_image(90, 120, seed=1)
    probs = run_plugin(model, image)
    ref_probs, ref_pred = rc.segment(
        deep_clip[0], reference_text(deep_clip, CLASSES), [0, 1, 2, 3], image, crop=crop, stride=stride,
        logit_scale=LOGIT_SCALE, resize=False, **RES_SETTINGS,
    )
    assert_matches(probs, ref_probs, ref_pred)


def test_whole_image_and_threshold_match_the_reference(deep_files, deep_clip):
    model = build(deep_files, **resclip_overrides(0, 0, prob_thd=0.4))
    image = random_image(70, 90, seed=2)  # a 4 x 5 grid, truncated
    probs = run_plugin(model, image)
    ref_probs, ref_pred = rc.segment(
        deep_clip[0], reference_text(deep_clip, CLASSES), [0, 1, 2, 3], image, crop=0, prob_thd=0.4,
        logit_scale=LOGIT_SCALE, resize=False, **RES_SETTINGS,
    )
    assert (ref_probs.max(0).values < 0.4).any() and (ref_probs.max(0).values >= 0.4).any()
    assert_matches(probs, ref_probs, ref_pred, prob_thd=0.4)


def test_window_batch_and_class_chunks_do_not_change_results(deep_files):
    image = random_image(80, 100, seed=3)
    plain = run_plugin(build(deep_files, **resclip_overrides(64, 32)), image)
    small = build(deep_files, **resclip_overrides(64, 32), **{"MODEL.CLEARCLIP.WINDOW_BATCH": 1, "MODEL.CLEARCLIP.CLASS_CHUNK": 1})
    assert torch.allclose(run_plugin(small, image), plain, atol=1e-5)
    chunked = build(deep_files, **resclip_overrides(64, 32), **{"MODEL.CLEARCLIP.MAX_DENSE_ELEMENTS": 0})
    out = chunked([{"image": torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1)))}])[0]
    assert torch.equal(out["sem_seg_labels"], plain.argmax(0))


def test_synonyms_and_renormalisation_match_the_reference(deep_files, deep_clip):
    model = build(deep_files, classes=SYNONYM_CLASSES, **resclip_overrides(64, 32, prob_thd=0.3), **{"MODEL.CLEARCLIP.RENORMALIZE": True})
    image = random_image(80, 100, seed=4)
    ref_probs, ref_pred = rc.segment(
        deep_clip[0], reference_text(deep_clip, SYNONYM_QUERIES), SYNONYM_INDEX, image, crop=64, stride=32, prob_thd=0.3,
        logit_scale=LOGIT_SCALE, resize=False, **RES_SETTINGS,
    )
    assert_matches(run_plugin(model, image), ref_probs, ref_pred, prob_thd=0.3)


def test_whole_image_two_step_upsample_matches_the_reference(deep_files, deep_clip):
    model = build(deep_files, **resclip_overrides(0, 0), **{"MODEL.CLEARCLIP.WHOLE_IMAGE_UPSAMPLE": "via_input"})
    image = random_image(60, 75, seed=5)
    resized = ref.mmcv_rescale(image, short=96)
    ref_probs, ref_pred = rc.segment(
        deep_clip[0], reference_text(deep_clip, CLASSES), [0, 1, 2, 3], image, crop=0, short_side=96,
        logit_scale=LOGIT_SCALE, **RES_SETTINGS,
    )
    assert_matches(run_plugin(model, resized, out_size=image.shape[:2]), ref_probs, ref_pred)


def test_final_pamr_on_logits_matches_the_reference(deep_files, deep_clip):
    overrides = {"MODEL.CLEARCLIP.REFINE": "pamr", "MODEL.CLEARCLIP.PAMR_ITERATIONS": 2, "MODEL.CLEARCLIP.PAMR_DILATIONS": [1, 2]}
    model = build(deep_files, **resclip_overrides(64, 32), **overrides)
    image = random_image(80, 100, seed=6)
    ref_probs, ref_pred = rc.segment(
        deep_clip[0], reference_text(deep_clip, CLASSES), [0, 1, 2, 3], image, crop=64, stride=32, pamr_steps=2,
        pamr_dilations=(1, 2), logit_scale=LOGIT_SCALE, resize=False, **RES_SETTINGS,
    )
    assert_matches(run_plugin(model, image), ref_probs, ref_pred)


# ----------------------------------------------------------------------------- errors
def test_rcs_layers_past_the_model_are_one_line(deep_files):
    with pytest.raises(ClearCLIPError, match=r"RCS_LAYERS \[1, 4\] .*0\.\.3"):
        build(deep_files, **resclip_overrides(64, 32, rcs_layers=(1, 4)))


def test_bad_settings_are_refused_by_the_config_check(deep_files):
    cfg = tiny_cfg(deep_files, **resclip_overrides(64, 32, sfr_weights=(2.0, 1.5)))
    with pytest.raises(ClearCLIPError, match=r"RESCLIP.SFR_WEIGHTS \[2.0, 1.5\]"):
        check_clearclip_config(cfg)


def test_the_encoder_needs_the_text(deep_files):
    encoder = build(deep_files, **resclip_overrides(64, 32)).encoder
    assert encoder.uses_text and isinstance(encoder, ResCLIPEncoder)
    with pytest.raises(ClearCLIPError, match="needs the text embeddings"):
        encoder(torch.zeros(1, 3, 32, 32))


def test_settings_take_the_pipelines_logit_scale_and_class_chunk(deep_files):
    cfg = tiny_cfg(deep_files, **resclip_overrides(64, 32), **{"MODEL.CLEARCLIP.CLASS_CHUNK": 7})
    settings = ResCLIPSettings.from_config(cfg)
    assert settings.logit_scale == LOGIT_SCALE and settings.class_chunk == 7 and settings.rcs_layers == (1, 2, 3)


# ----------------------------------------------------------------------------- presets
def test_presets_are_the_authors_settings_per_benchmark():
    """configs/methods/resclip.yaml (COCO-Stuff) and resclip/<benchmark>.yaml against the
    reference's BENCHMARK_SETTINGS (the authors' configs)."""
    from clearclip_d2.config import load_clearclip_config
    from conftest import REPO_ROOT

    for benchmark, settings in rc.BENCHMARK_SETTINGS.items():
        name = "resclip.yaml" if benchmark == "coco_stuff" else f"resclip/{benchmark}.yaml"
        cfg = load_clearclip_config(os.path.join(REPO_ROOT, "configs", "methods", name))
        cc, res = cfg.MODEL.CLEARCLIP, cfg.MODEL.CLEARCLIP.RESCLIP
        expected = {"crop": 224, "prob_thd": 0.0, **settings}
        assert dict(
            short_side=cfg.INPUT.MIN_SIZE_TEST, crop=cc.SLIDE_CROP, prob_thd=cc.PROB_THRESHOLD, temp_thd=res.FIRST_PASS_THRESHOLD,
            rcs_weights=tuple(res.RCS_WEIGHTS), sfr_weights=tuple(res.SFR_WEIGHTS),
        ) == expected, name
        assert (cc.ENCODER, cc.LOGIT_SCALE, cc.WINDOW_PADDING, cc.RENORMALIZE, cc.REFINE) == ("resclip", 40.0, "none", True, "none")
        assert tuple(res.RCS_LAYERS) == rc.RCS_LAYERS and cc.SLIDE_STRIDE == 112 and cfg.INPUT.MAX_SIZE_TEST == 2048
