"""The plugin's ProxyCLIP (``ENCODER proxyclip``) against tests/reference_proxyclip.py.

Tiny random models: the conftest's CLIP and a timm ViT with DINO's layout, patch 8, registered
here under a timm name and loaded by the plugin from a safetensors file. Probabilities within
1e-4 and identical argmax (channel 0 compared only where the threshold did not raise it).
"""

import numpy as np
import pytest
import timm
import torch
from detectron2.modeling import build_model
from timm.models import register_model
from timm.models.vision_transformer import VisionTransformer

import reference_clearclip
import reference_proxyclip as ref
from conftest import FEW_TEMPLATES, tiny_cfg
from test_modeling_exactness import CLASSES, QUERIES, QUERY_IDX, smooth_image
from test_reference_proxyclip import random_image, tiny_vfm
from clearclip_d2.config import check_clearclip_config
from clearclip_d2.data.transforms import ResizeShortLongEdge
from clearclip_d2.modeling.methods.proxyclip import (
    build_vfm,
    dino_pos_embed,
    proxy_attention_weights,
    uses_dino_interpolation,
    vfm_patch_tokens,
)
from clearclip_d2.utils.errors import ClearCLIPError

TINY_VFM = "clearclip_test_dino_tiny_patch8"


def clearclip_test_dino_tiny_patch8(pretrained=False, pretrained_cfg=None, pretrained_cfg_overlay=None, cache_dir=None,
                                    **kwargs):
    """test_reference_proxyclip.tiny_vfm's architecture (DINO's layout, patch 8, pretrained grid 7 x 7) in timm's registry."""
    return VisionTransformer(img_size=56, patch_size=8, embed_dim=32, depth=2, num_heads=2, **kwargs)


if not timm.is_model(TINY_VFM):  # timm's registry is per process; register once
    register_model(clearclip_test_dino_tiny_patch8)


@pytest.fixture(scope="module")
def vfm_file(tmp_path_factory):
    """(reference VFM, safetensors file of its weights)."""
    from safetensors.torch import save_file

    vfm = tiny_vfm()
    path = str(tmp_path_factory.mktemp("vfm") / "tiny_dino.safetensors")
    save_file({k: v.contiguous() for k, v in vfm.state_dict().items()}, path)
    return vfm, path


@pytest.fixture(scope="module")
def reference_text(tiny_clip):
    model, tokenizer = tiny_clip
    return reference_clearclip.text_features(model, tokenizer, QUERIES, FEW_TEMPLATES)


def proxyclip_cfg(tiny_model_files, vfm_path, **overrides):
    settings = {"MODEL.CLEARCLIP.ENCODER": "proxyclip", "MODEL.CLEARCLIP.PROXY.MODEL_NAME": TINY_VFM,
                "MODEL.CLEARCLIP.PROXY.PRETRAINED": vfm_path, "MODEL.CLEARCLIP.LOGIT_SCALE": 40.0,
                "MODEL.CLEARCLIP.PROB_THRESHOLD": 0.0, "MODEL.CLEARCLIP.WINDOW_BATCH": 3}
    return tiny_cfg(tiny_model_files, **{**settings, **overrides})


def build_proxyclip(tiny_model_files, vfm_path, **overrides):
    model = build_model(proxyclip_cfg(tiny_model_files, vfm_path, **overrides)).eval()
    model.set_vocabulary(CLASSES)
    return model


def run_plugin(model, image_rgb, short_side=None):
    """The mapper's resize (when ``short_side``), then the meta-architecture: [K, H, W]."""
    height, width = image_rgb.shape[:2]
    if short_side:
        image_rgb = ResizeShortLongEdge(short_side, 2048).get_transform(image_rgb).apply_image(image_rgb)
    image = torch.from_numpy(np.ascontiguousarray(image_rgb.transpose(2, 0, 1)))
    return model([{"image": image, "height": height, "width": width}])[0]["sem_seg"]


def assert_matches(probs, ref_probs, ref_pred, threshold=0.0):
    """1e-4 in probability (channel 0 only where the threshold did not raise it), same argmax."""
    assert probs.shape == ref_probs.shape
    below = ref_probs.max(0).values < threshold
    difference = torch.cat([(probs - ref_probs)[1:].flatten(), (probs[0] - ref_probs[0])[~below]]).abs().max()
    assert difference < 1e-4, difference
    assert torch.equal(probs.argmax(0), ref_pred)
    assert len(ref_pred.unique()) > 1, "a constant prediction would make the comparison weak"


SLIDE_CASES = [
    # name, (height, width), crop, stride: windows of 56 (a multiple of 8, 16 and 56), 48 (of 8 and 16, padded
    # to 56), 60 (of neither patch, padded to 112), and an image smaller than the crop (non-square window).
    ("crop multiple of 56", (96, 128), 56, 28),
    ("crop padded to 56", (96, 128), 48, 32),
    ("crop of neither patch", (100, 150), 60, 40),
    ("image smaller than crop", (40, 72), 64, 32),
]


@pytest.mark.parametrize("name, size, crop, stride", SLIDE_CASES, ids=[c[0] for c in SLIDE_CASES])
def test_sliding_windows_match_reference(tiny_model_files, tiny_clip, vfm_file, reference_text, name, size, crop, stride):
    vfm, path = vfm_file
    image = random_image(*size, seed=len(name))
    model = build_proxyclip(tiny_model_files, path, **{"MODEL.CLEARCLIP.SLIDE_CROP": crop, "MODEL.CLEARCLIP.SLIDE_STRIDE": stride})
    ref_probs, ref_pred = ref.segment(tiny_clip[0], vfm, reference_text, QUERY_IDX, image, crop=crop, stride=stride,
                                      resize=False)
    assert_matches(run_plugin(model, image), ref_probs, ref_pred)


def test_default_pipeline_with_the_authors_resize_matches_reference(tiny_model_files, tiny_clip, vfm_file, reference_text):
    """Short side 336, windows 336 / 112: VFM grid 42 (DINO interpolation from 7), CLIP grid 21."""
    vfm, path = vfm_file
    image = random_image(60, 95, seed=4)
    model = build_proxyclip(tiny_model_files, path, **{"MODEL.CLEARCLIP.SLIDE_CROP": 336, "MODEL.CLEARCLIP.SLIDE_STRIDE": 112})
    ref_probs, ref_pred = ref.segment(tiny_clip[0], vfm, reference_text, QUERY_IDX, image)
    assert_matches(run_plugin(model, image, short_side=336), ref_probs, ref_pred)


def test_whole_image_mode_matches_reference(tiny_model_files, tiny_clip, vfm_file, reference_text):
    """Unpadded, sizes of neither patch: the VFM truncates to 11 x 15 patches, CLIP to 5 x 7."""
    vfm, path = vfm_file
    image = random_image(90, 123, seed=5)
    model = build_proxyclip(tiny_model_files, path, **{"MODEL.CLEARCLIP.SLIDE_CROP": 0})
    ref_probs, ref_pred = ref.segment(tiny_clip[0], vfm, reference_text, QUERY_IDX, image, crop=0, resize=False)
    assert_matches(run_plugin(model, image), ref_probs, ref_pred)


def test_threshold_matches_reference(tiny_model_files, tiny_clip, vfm_file, reference_text):
    vfm, path = vfm_file
    image = random_image(96, 128, seed=6)
    settings = dict(crop=56, stride=28, resize=False)
    plain, _ = ref.segment(tiny_clip[0], vfm, reference_text, QUERY_IDX, image, **settings)
    threshold = round(float(plain.max(0).values.median()), 2)
    assert (plain.max(0).values - threshold).abs().min() > 1e-5, "no pixel may sit on the threshold"
    ref_probs, ref_pred = ref.segment(tiny_clip[0], vfm, reference_text, QUERY_IDX, image, prob_thd=threshold, **settings)
    model = build_proxyclip(tiny_model_files, path, **{"MODEL.CLEARCLIP.SLIDE_CROP": 56, "MODEL.CLEARCLIP.SLIDE_STRIDE": 28,
                                                      "MODEL.CLEARCLIP.PROB_THRESHOLD": threshold})
    below = ref_probs.max(0).values < threshold
    assert below.any() and (~below).any(), "the threshold must matter in this test"
    assert_matches(run_plugin(model, image), ref_probs, ref_pred, threshold)


def test_where_the_authors_give_nan_the_plugin_is_finite_and_elsewhere_the_same(tiny_model_files, tiny_clip, vfm_file,
                                                                                reference_text):
    """A smooth image has near-uniform windows, whose tokens the random VFM finds alike (mean
    similarity > 1 / beta): the authors' masking empties their rows and gives NaN, which spreads
    over those windows' pixels. The plugin keeps each token's own value there."""
    vfm, path = vfm_file
    image = smooth_image(96, 128, seed=19)
    model = build_proxyclip(tiny_model_files, path, **{"MODEL.CLEARCLIP.SLIDE_CROP": 56, "MODEL.CLEARCLIP.SLIDE_STRIDE": 28})
    ref_probs, ref_pred = ref.segment(tiny_clip[0], vfm, reference_text, QUERY_IDX, image, crop=56, stride=28, resize=False)
    probs = run_plugin(model, image)
    finite = torch.isfinite(ref_probs).all(0)
    assert 0.05 < (~finite).float().mean() < 0.95, "the case must occur in this test"
    assert torch.isfinite(probs).all()
    assert (probs - ref_probs)[:, finite].abs().max() < 1e-4
    assert torch.equal(probs.argmax(0)[finite], ref_pred[finite])


def test_window_batch_does_not_change_results(tiny_model_files, vfm_file):
    """The adaptive normalisation's mean is per window (the authors' spans the batch)."""
    _, path = vfm_file
    image = smooth_image(96, 128, seed=8)
    crop = {"MODEL.CLEARCLIP.SLIDE_CROP": 48, "MODEL.CLEARCLIP.SLIDE_STRIDE": 32}
    one = run_plugin(build_proxyclip(tiny_model_files, path, **crop, **{"MODEL.CLEARCLIP.WINDOW_BATCH": 1}), image)
    many = run_plugin(build_proxyclip(tiny_model_files, path, **crop, **{"MODEL.CLEARCLIP.WINDOW_BATCH": 16}), image)
    assert torch.allclose(one, many, atol=1e-5)


def test_window_multiple_is_the_key(tiny_model_files, vfm_file):
    _, path = vfm_file
    image = smooth_image(48, 96, seed=9)
    crop = {"MODEL.CLEARCLIP.SLIDE_CROP": 48, "MODEL.CLEARCLIP.SLIDE_STRIDE": 24}
    authors = build_proxyclip(tiny_model_files, path, **crop)
    assert authors.encoder.window_multiple == 56 and authors.encoder.patch_size == 8
    by_patch = build_proxyclip(tiny_model_files, path, **crop, **{"MODEL.CLEARCLIP.PROXY.WINDOW_MULTIPLE": 16})
    assert (run_plugin(authors, image) - run_plugin(by_patch, image)).abs().max() > 1e-3


def test_uniform_window_keeps_each_token_instead_of_nan():
    """Where the authors' masking empties every row (mean similarity > 1 / beta) and gives NaN,
    each token attends to itself; elsewhere the diagonal survives the mask anyway."""
    uniform = torch.ones(2, 6, 4)
    weights = proxy_attention_weights(uniform + 1e-3 * torch.randn(2, 6, 4), 1.2, 3.0)
    assert torch.isfinite(weights).all()
    torch.testing.assert_close(weights, torch.eye(6).expand(2, 6, 6))


def test_proxy_weights_are_per_window():
    torch.manual_seed(0)
    tokens = torch.randn(3, 10, 8)
    together = proxy_attention_weights(tokens, 1.2, 3.0)
    alone = torch.cat([proxy_attention_weights(t[None], 1.2, 3.0) for t in tokens])
    torch.testing.assert_close(together, alone)


def test_vfm_tokens_and_position_interpolation_match_reference(vfm_file):
    vfm, path = vfm_file
    plugin_vfm = build_vfm(TINY_VFM, path)
    assert uses_dino_interpolation(plugin_vfm)
    for height, width in [(56, 56), (72, 72), (48, 88), (57, 56)]:
        x = torch.randn(2, 3, height, width)
        tokens = torch.zeros(1, 1 + (height // 8) * (width // 8), 32)
        with torch.no_grad():
            torch.testing.assert_close(vfm_patch_tokens(plugin_vfm, x), ref.vfm_patch_tokens(vfm, x), atol=1e-5, rtol=1e-5)
            expected = ref.dino_interpolate_pos_encoding(vfm, tokens, height, width)
            torch.testing.assert_close(dino_pos_embed(plugin_vfm, height, width), expected, atol=1e-6, rtol=0)


def test_register_token_vits_use_timms_forward():
    """DINOv2 with registers: timm's own dynamic-size forward, register and class tokens dropped."""
    torch.manual_seed(0)
    vfm = VisionTransformer(img_size=56, patch_size=14, embed_dim=32, depth=1, num_heads=2, num_classes=0,
                            reg_tokens=4, no_embed_class=True, dynamic_img_size=True).eval()
    assert not uses_dino_interpolation(vfm)
    x = torch.randn(1, 3, 70, 42)
    with torch.no_grad():
        tokens = vfm_patch_tokens(vfm, x)
        torch.testing.assert_close(tokens, vfm.forward_features(x)[:, 5:])
    assert tokens.shape == (1, 5 * 3, 32)


# --------------------------------------------------------------------------- loading and refusals
def test_pretrained_file_is_loaded(vfm_file):
    vfm, path = vfm_file
    loaded = build_vfm(TINY_VFM, path)
    assert all(torch.equal(loaded.state_dict()[k], v) for k, v in vfm.state_dict().items())
    assert not torch.equal(build_vfm(TINY_VFM, "").pos_embed, vfm.pos_embed)  # "" = random


def test_pickled_pretrained_file_is_refused(tmp_path):
    path = str(tmp_path / "pickled.pth")
    torch.save({"pos_embed": torch.zeros(1), "extra": object()}, path)
    with pytest.raises(ClearCLIPError, match=r"refusing checkpoint .*pickled\.pth: it holds pickled Python objects"):
        build_vfm(TINY_VFM, path)


def test_pretrained_file_of_another_model_is_refused(tmp_path, vfm_file):
    from safetensors.torch import save_file

    vfm, _ = vfm_file
    state = {k: v.contiguous() for k, v in vfm.state_dict().items() if k != "norm.weight"}
    state["pos_embed"] = torch.zeros(1, 5, 32)
    path = str(tmp_path / "other.safetensors")
    save_file(state, path)
    with pytest.raises(ClearCLIPError, match=r"PROXY.PRETRAINED .* does not fit .*missing norm.weight.*pos_embed has shape"):
        build_vfm(TINY_VFM, path)


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"MODEL.CLEARCLIP.PROXY.MODEL_NAME": "dino_vitb8"}, r"PROXY.MODEL_NAME 'dino_vitb8' is not a timm model"),
        ({"MODEL.CLEARCLIP.PROXY.MODEL_NAME": "resnet18"}, r"PROXY.MODEL_NAME 'resnet18' is not a timm VisionTransformer"),
        ({"MODEL.CLEARCLIP.PROXY.PRETRAINED": "/no/such.safetensors"}, r"PROXY.PRETRAINED '/no/such.safetensors' is not a file"),
        ({"MODEL.CLEARCLIP.PROXY.WINDOW_MULTIPLE": 0}, r"PROXY.WINDOW_MULTIPLE must be a positive integer"),
        ({"MODEL.CLEARCLIP.PROXY.GAMMA": -3.0}, r"PROXY.GAMMA must be positive"),
    ],
)
def test_bad_proxy_settings_are_one_line(tiny_model_files, vfm_file, overrides, message):
    cfg = proxyclip_cfg(tiny_model_files, vfm_file[1], **overrides)
    if overrides.get("MODEL.CLEARCLIP.PROXY.MODEL_NAME") != "resnet18":  # the config check needs no model
        with pytest.raises(ClearCLIPError, match=message):
            check_clearclip_config(cfg)
    with pytest.raises(ClearCLIPError, match=message) as error:
        build_model(cfg)
    assert "\n" not in str(error.value)
