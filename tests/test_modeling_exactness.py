"""The plugin's ClearCLIP against an independent re-statement of the authors' code.

Tolerance: probabilities within 1e-4 (fp32) and argmax agreeing on >= 99.9% of pixels.
"""

import numpy as np
import pytest
import torch
from detectron2.modeling import build_model

import reference_clearclip as ref
from conftest import FEATURE_ATOL, FEW_TEMPLATES, tiny_cfg
from clearclip_d2.data.transforms import ResizeShortLongEdge
from clearclip_d2.data.vocabulary import vocabulary_from_names
from clearclip_d2.modeling.clip.dense_encoder import DenseCLIPEncoder
from clearclip_d2.modeling.inference.slide_inference import centred_padding, slide_window_boxes
from clearclip_d2.modeling.clip.text_classifier import build_text_classifier

CLASSES = ["background", "cat, kitten", "dog", "grass, lawn, meadow", "sky", "road"]
QUERIES = ["background", "cat", "kitten", "dog", "grass", "lawn", "meadow", "sky", "road"]
QUERY_IDX = [0, 1, 1, 2, 3, 3, 3, 4, 5]


def smooth_image(height, width, seed):
    """A random but spatially smooth RGB image (so predictions form regions)."""
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (max(height // 40, 2), max(width // 40, 2), 3)).astype(np.uint8)
    import cv2

    image = cv2.resize(small, (width, height), interpolation=cv2.INTER_CUBIC)
    return np.clip(image.astype(np.int16) + rng.integers(-20, 21, image.shape), 0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def reference_text(tiny_clip):
    model, tokenizer = tiny_clip
    return ref.text_features(model, tokenizer, QUERIES, FEW_TEMPLATES)


def build_segmentor(tiny_model_files, **overrides):
    cfg = tiny_cfg(tiny_model_files, **overrides)
    model = build_model(cfg).eval()
    model.set_vocabulary(CLASSES)
    return model


def run_plugin(model, image_rgb, resize=True):
    """The plugin's path: reference resize (as the mapper does), then the meta-architecture."""
    height, width = image_rgb.shape[:2]
    resized = ResizeShortLongEdge(448, 2048).get_transform(image_rgb).apply_image(image_rgb) if resize else image_rgb
    inputs = [{"image": torch.from_numpy(np.ascontiguousarray(resized.transpose(2, 0, 1))), "height": height, "width": width}]
    return model(inputs)[0]["sem_seg"]


def assert_matches_reference(probs, ref_probs, ref_pred):
    assert probs.shape == ref_probs.shape
    assert torch.allclose(probs, ref_probs, atol=1e-4, rtol=0), (probs - ref_probs).abs().max()
    agreement = (probs.argmax(0) == ref_pred).float().mean().item()
    assert agreement >= 0.999, agreement


def test_text_classifier_matches_per_query_loop(tiny_clip, reference_text):
    model, tokenizer = tiny_clip
    ours = build_text_classifier(model, tokenizer, QUERIES, FEW_TEMPLATES, batch_size=4)
    assert torch.allclose(ours, reference_text, atol=1e-5)
    assert torch.allclose(ours.norm(dim=-1), torch.ones(len(QUERIES)), atol=1e-5)


def test_default_templates_are_the_80_openai_imagenet_ones():
    from clearclip_d2.constants import openai_imagenet_templates

    templates = openai_imagenet_templates()
    assert len(templates) == 80
    assert templates[0] == "a bad photo of a {}."
    assert all(t.count("{}") == 1 for t in templates)


def test_qk_with_residual_and_ffn_reproduces_open_clip_tokens(tiny_clip):
    model, _ = tiny_clip
    visual = model.visual
    images = torch.randn(2, 3, 224, 224)
    encoder = DenseCLIPEncoder(visual, attention="qk", residual=True, ffn=True)
    visual.output_tokens = True
    try:
        with torch.no_grad():
            _, tokens = visual(images)
            ours = encoder(images)
    finally:
        visual.output_tokens = False
    assert torch.allclose(ours, tokens @ visual.proj, atol=FEATURE_ATOL), (ours - tokens @ visual.proj).abs().max()


@pytest.mark.parametrize("size", [(224, 224), (448, 448), (448, 224), (160, 320), (112, 448)])
@pytest.mark.parametrize("variant", [("ClearCLIP", True), ("vanilla", False), ("vanilla", True), ("ClearCLIP", False)])
def test_dense_features_match_reference(tiny_clip, size, variant):
    model, _ = tiny_clip
    model_type, ignore_residual = variant
    attention = "qq" if model_type == "ClearCLIP" else "qk"
    encoder = DenseCLIPEncoder(model.visual, attention=attention, residual=not ignore_residual, ffn=not ignore_residual)
    images = torch.randn(1, 3, *size)
    with torch.no_grad():
        expected = ref.encode_image(model.visual, images, model_type, ignore_residual)
        assert torch.allclose(encoder(images), expected, atol=FEATURE_ATOL), (encoder(images) - expected).abs().max()


def test_qq_differs_from_qk(tiny_clip):
    """Guards the comparison above against a switch that does nothing."""
    model, _ = tiny_clip
    images = torch.randn(1, 3, 448, 448)
    with torch.no_grad():
        qq = DenseCLIPEncoder(model.visual, "qq")(images)
        qk = DenseCLIPEncoder(model.visual, "qk")(images)
    assert (qq - qk).abs().max() > 1e-2


@pytest.mark.parametrize("grid", [(28, 28), (28, 37), (14, 14), (7, 28), (5, 9)])
def test_positional_embedding_interpolation_matches_reference(tiny_clip, grid):
    model, _ = tiny_clip
    encoder = DenseCLIPEncoder(model.visual)
    tokens = torch.zeros(1, grid[0] * grid[1] + 1, 64)
    if tokens.shape[1] == model.visual.positional_embedding.shape[0]:
        expected = model.visual.positional_embedding  # the reference uses it as is
    else:
        expected = ref.interpolate_pos_encoding(model.visual, tokens, grid[0] * 16, grid[1] * 16)[0]
    assert torch.allclose(encoder.interpolated_pos_embed(*grid), expected, atol=1e-6)


@pytest.mark.parametrize("shape", [(448, 597), (597, 448), (448, 448), (300, 250), (100, 1000), (448, 896)])
@pytest.mark.parametrize("crop_stride", [(448, 224), (224, 224), (224, 112), (300, 200)])
def test_window_boxes_match_reference_loops(shape, crop_stride):
    height, width = shape
    crop, stride = crop_stride
    expected = []
    for h_idx in range(max(height - crop + stride - 1, 0) // stride + 1):
        for w_idx in range(max(width - crop + stride - 1, 0) // stride + 1):
            y2, x2 = min(h_idx * stride + crop, height), min(w_idx * stride + crop, width)
            expected.append((max(y2 - crop, 0), max(x2 - crop, 0), y2, x2))
    boxes = slide_window_boxes(height, width, crop, stride)
    assert boxes == expected
    count = np.zeros(shape, dtype=int)
    for y1, x1, y2, x2 in boxes:
        count[y1:y2, x1:x2] += 1
    assert count.min() >= 1


@pytest.mark.parametrize("hw", [(448, 448), (447, 449), (300, 250), (17, 31), (16, 32)])
def test_centred_padding_matches_reference(hw):
    assert centred_padding(hw[0], hw[1], 16) == ref.compute_padsize(hw[0], hw[1], 16)


@pytest.mark.parametrize(
    "name, original_size, crop, stride, threshold",
    [
        ("voc", (375, 500), 448, 224, 0.0),
        ("voc21", (500, 333), 448, 224, 0.2),
        ("coco", (480, 640), 448, 224, 0.0),
        ("coco_object", (427, 640), 448, 224, 0.15),
        ("cityscapes", (512, 1024), 224, 224, 0.0),
        ("odd_stride", (333, 517), 300, 170, 0.0),
    ],
)
def test_segmentation_matches_reference(tiny_model_files, tiny_clip, reference_text, name, original_size, crop, stride, threshold):
    model, _ = tiny_clip
    segmentor = build_segmentor(
        tiny_model_files, **{"MODEL.CLEARCLIP.SLIDE_CROP": crop, "MODEL.CLEARCLIP.SLIDE_STRIDE": stride,
                             "MODEL.CLEARCLIP.PROB_THRESHOLD": threshold, "MODEL.CLEARCLIP.WINDOW_BATCH": 3}
    )
    image = smooth_image(*original_size, seed=len(name))
    ref_probs, ref_pred = ref.segment(model, reference_text, QUERY_IDX, image, crop, stride, threshold)
    probs = run_plugin(segmentor, image)
    if threshold > 0:
        below = ref_probs.max(0).values < threshold
        assert 0 < below.float().mean() < 1, "the threshold must matter in this test"
        # Outside the thresholded pixels the probabilities are the reference's.
        assert torch.allclose(probs[:, ~below], ref_probs[:, ~below], atol=1e-4)
        assert torch.allclose(probs[1:, below], ref_probs[1:, below], atol=1e-4)
        assert (probs.argmax(0)[below] == 0).all()
        agreement = (probs.argmax(0) == ref_pred).float().mean().item()
        assert agreement >= 0.999
    else:
        assert_matches_reference(probs, ref_probs, ref_pred)
    assert len(torch.unique(ref_pred)) > 1, "a constant prediction would make the comparison weak"


@pytest.mark.parametrize("size", [(300, 250), (301, 253), (200, 460)])
def test_crops_smaller_than_the_window_match_reference(tiny_model_files, tiny_clip, reference_text, size):
    model, _ = tiny_clip
    segmentor = build_segmentor(tiny_model_files)
    image = smooth_image(*size, seed=7)
    ref_probs, ref_pred = ref.segment(model, reference_text, QUERY_IDX, image, resize=False)
    assert_matches_reference(run_plugin(segmentor, image, resize=False), ref_probs, ref_pred)


def test_whole_image_mode_matches_reference(tiny_model_files, tiny_clip, reference_text):
    model, _ = tiny_clip
    segmentor = build_segmentor(tiny_model_files, **{"MODEL.CLEARCLIP.SLIDE_CROP": 0})
    image = smooth_image(250, 330, seed=3)
    ref_probs, ref_pred = ref.segment(model, reference_text, QUERY_IDX, image, crop=0)
    assert_matches_reference(run_plugin(segmentor, image), ref_probs, ref_pred)


def test_plain_clip_ablation_matches_reference(tiny_model_files, tiny_clip, reference_text):
    model, _ = tiny_clip
    segmentor = build_segmentor(
        tiny_model_files, **{"MODEL.CLEARCLIP.ATTENTION": "qk", "MODEL.CLEARCLIP.RESIDUAL": True, "MODEL.CLEARCLIP.FFN": True}
    )
    image = smooth_image(375, 500, seed=11)
    ref_probs, ref_pred = ref.segment(model, reference_text, QUERY_IDX, image, model_type="vanilla", ignore_residual=False)
    assert_matches_reference(run_plugin(segmentor, image), ref_probs, ref_pred)


def test_window_batch_does_not_change_results(tiny_model_files):
    image = smooth_image(480, 640, seed=5)
    one = run_plugin(build_segmentor(tiny_model_files, **{"MODEL.CLEARCLIP.WINDOW_BATCH": 1}), image)
    many = run_plugin(build_segmentor(tiny_model_files, **{"MODEL.CLEARCLIP.WINDOW_BATCH": 16}), image)
    assert torch.allclose(one, many, atol=1e-5)


def test_bgr_input_format_gives_the_same_probabilities(tiny_model_files):
    image = smooth_image(375, 500, seed=2)
    rgb = run_plugin(build_segmentor(tiny_model_files), image)
    bgr_model = build_segmentor(
        tiny_model_files, **{"INPUT.FORMAT": "BGR", "MODEL.PIXEL_MEAN": [104.094, 116.746, 122.771],
                             "MODEL.PIXEL_STD": [70.323, 66.632, 68.501]}
    )
    bgr = run_plugin(bgr_model, np.ascontiguousarray(image[:, :, ::-1]))
    assert torch.allclose(rgb, bgr, atol=1e-5)


def test_set_vocabulary_changes_channels_not_the_encoder(tiny_model_files):
    segmentor = build_segmentor(tiny_model_files)
    encoder = segmentor.encoder
    image = smooth_image(200, 300, seed=1)
    assert run_plugin(segmentor, image).shape[0] == len(CLASSES)
    segmentor.set_vocabulary(vocabulary_from_names(["a", "b, c"]))
    assert run_plugin(segmentor, image).shape[0] == 2
    assert segmentor.encoder is encoder
