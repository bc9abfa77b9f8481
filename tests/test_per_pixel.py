"""The fused per-pixel work (modeling/inference/per_pixel.py) against the plain implementation
it replaced (tests/reference_per_pixel.py): equal labels, probabilities to 1e-6 or, where the
plain computation's own fp32 rounding is larger (logits ~0.6 times a scale of 50), within 1e-6
of the exact (fp64) values or no farther from them than the plain computation is (so within a
few 1e-6 of it)."""

import pytest
import torch
import torch.nn.functional as F

import reference_per_pixel as reference
from clearclip_d2.modeling.inference.per_pixel import (
    SeparableLogits,
    bilinear_matrix,
    separable_labels,
    separable_probabilities,
)
from clearclip_d2.modeling.inference.slide_inference import encode_whole_image, encode_windows, logits_to_probabilities

DIM = 32
LOGIT_SCALE = 50.0


def fake_encoder(seed):
    """images [n, 3, h, w] -> [n, h/16 * w/16, DIM] features that depend on the pixels (smoothly)."""
    projection = torch.randn(3 * 16 * 16, DIM, generator=torch.Generator().manual_seed(seed))

    def encode(images):
        patches = F.unfold(images, kernel_size=16, stride=16).transpose(1, 2)  # [n, T, 768]
        return patches @ projection

    return encode


def smooth_image(height, width, seed):
    small = torch.rand(1, 3, height // 40 + 2, width // 40 + 2, generator=torch.Generator().manual_seed(seed))
    return F.interpolate(small, size=(height, width), mode="bicubic", align_corners=False)[0] * 4 - 2


def vocabulary(queries, classes, seed):
    """[Q, D] unit embeddings and [Q] consecutive classes (the first classes get the extra synonyms)."""
    text = F.normalize(torch.randn(queries, DIM, generator=torch.Generator().manual_seed(seed)), dim=-1)
    extra = torch.arange(queries - classes) % classes
    return text, torch.cat([torch.arange(classes), extra]).sort().values


CASES = [
    # image (h, w), output (H, W), crop, stride, queries, classes, threshold
    ((448, 640), (448, 640), 448, 224, 3, 3, 0.0),
    ((448, 597), (480, 640), 448, 224, 40, 32, 0.3),  # resize to the original size, synonyms
    ((300, 500), (333, 517), 224, 150, 19, 19, 0.0),  # 2 x 3 windows, uneven overlaps
    ((200, 180), (200, 180), 224, 150, 7, 5, 0.0),  # image smaller than the window
    ((448, 640), (448, 640), 448, 224, 171, 171, 0.2),
]


def encoded(image_size, crop, stride, seed=0):
    image = smooth_image(*image_size, seed)
    return encode_windows([image], fake_encoder(seed), 16, crop, stride, window_batch=4)


def exact_probabilities(separable, text, out_size, query_to_class, classes, threshold):
    """The plain computation in fp64 (no fp32 rounding after the patch-grid cosines)."""
    rows = bilinear_matrix(separable.image_size[0], out_size[0]) @ separable.row_matrix
    cols = bilinear_matrix(separable.image_size[1], out_size[1]) @ separable.col_matrix
    logits = torch.einsum("ha,qab,wb->qhw", rows, separable.coarse(text).double(), cols)
    return reference.logits_to_probabilities(logits, out_size, LOGIT_SCALE, query_to_class, classes, threshold)


@pytest.mark.parametrize("image_size, out_size, crop, stride, queries, classes, threshold", CASES)
def test_fused_probabilities_and_labels_equal_the_plain_computation(image_size, out_size, crop, stride, queries, classes, threshold):
    windows = encoded(image_size, crop, stride)
    text, query_to_class = vocabulary(queries, classes, seed=1)
    logits = reference.average_window_logits(windows, text, image_size)
    expected = reference.logits_to_probabilities(logits, out_size, LOGIT_SCALE, query_to_class, classes, threshold)
    separable = SeparableLogits.from_windows(windows, image_size)
    assert (separable(text) - logits).abs().max() < 1e-6
    probs = separable_probabilities(separable, text, out_size, LOGIT_SCALE, query_to_class, classes, threshold)
    assert probs.shape == expected.shape
    difference = float((probs - expected).abs().max())
    if difference >= 1e-6:
        exact = exact_probabilities(separable, text, out_size, query_to_class, classes, threshold)
        fused_error, plain_error = ((p.double() - exact).abs().max() for p in (probs, expected))
        assert fused_error < 1e-6 or fused_error <= plain_error + 1e-7  # the rounding depends on the CPU's kernels
        assert difference < 5e-6  # both within ~1e-6 of the exact values
    for chunk in (queries, 3):
        labels, confidence = separable_labels(separable, text, out_size, LOGIT_SCALE, query_to_class, threshold, chunk)
        assert torch.equal(labels, expected.argmax(0)), chunk
        kept = labels != 0 if threshold else torch.ones_like(labels, dtype=torch.bool)
        assert (confidence[kept] - expected.max(0).values[kept]).abs().max() <= 2 * max(difference, 1e-6)  # chunks: one more rounding
    assert len(labels.unique()) > 1


def test_whole_image_mode_equals_the_plain_computation():
    image = smooth_image(333, 517, seed=3)
    features, grid = encode_whole_image(image, fake_encoder(3), 16)
    text, query_to_class = vocabulary(9, 6, seed=2)
    logits = reference.patch_logits(features, grid, text)
    expected = reference.logits_to_probabilities(logits, (333, 517), LOGIT_SCALE, query_to_class, 6, 0.0)
    separable = SeparableLogits.from_patch_grid(features, grid)
    probs = separable_probabilities(separable, text, (333, 517), LOGIT_SCALE, query_to_class, 6, 0.0)
    assert (probs - expected).abs().max() < 1e-6
    labels, _ = separable_labels(separable, text, (333, 517), LOGIT_SCALE, query_to_class, 0.0, 4)
    assert torch.equal(labels, expected.argmax(0))


@pytest.mark.parametrize("in_size, out_size", [(28, 448), (448, 480), (597, 640), (640, 597), (5, 5)])
def test_bilinear_matrix_is_the_interpolation(in_size, out_size):
    values = torch.randn(in_size, 3, generator=torch.Generator().manual_seed(0))
    resized = F.interpolate(values.t()[None, :, :, None], size=(out_size, 1), mode="bilinear", align_corners=False)[0, :, :, 0].t()
    assert (bilinear_matrix(in_size, out_size).float() @ values - resized).abs().max() < 1e-6


def test_ties_go_to_the_first_query_as_argmax_does():
    windows = encoded((224, 224), 224, 224)
    text, _ = vocabulary(4, 4, seed=5)
    text = torch.cat([text[:2], text[1:2], text[2:]])  # query 2 duplicates query 1: tied everywhere
    separable = SeparableLogits.from_windows(windows, (224, 224))
    expected = reference.logits_to_probabilities(separable(text), (224, 224), LOGIT_SCALE, torch.arange(5), 5, 0.0)
    for chunk in (5, 2):
        labels, _ = separable_labels(separable, text, (224, 224), LOGIT_SCALE, torch.arange(5), 0.0, chunk)
        assert torch.equal(labels, expected.argmax(0))
        assert not (labels == 2).any()


@pytest.mark.parametrize("area_threshold, renormalize, refine", [(0.0, True, False), (0.05, False, False), (0.05, True, True)])
def test_pipeline_keys_fused_equal_the_dense_path(area_threshold, renormalize, refine):
    """AREA_THRESHOLD, RENORMALIZE and a refiner of the probabilities on the fused path give the
    package's dense path (:func:`logits_to_probabilities` of the whole logits)."""
    windows = encoded((300, 500), 224, 150)
    text, query_to_class = vocabulary(19, 12, seed=4)
    separable = SeparableLogits.from_windows(windows, (300, 500))
    sharpen = (lambda probs: probs * 2) if refine else None  # exact in fp32
    options = dict(refine=sharpen, area_threshold=area_threshold, renormalize=renormalize)
    expected = logits_to_probabilities(separable(text), (333, 517), LOGIT_SCALE, query_to_class, 12, 0.4, **options)
    probs = separable_probabilities(separable, text, (333, 517), LOGIT_SCALE, query_to_class, 12, 0.4, **options)
    assert (probs - expected).abs().max() < 2e-6
    assert torch.equal(probs.argmax(0), expected.argmax(0))
    assert len(expected.argmax(0).unique()) > 1


def test_whole_image_via_input_equals_two_resizes():
    """WHOLE_IMAGE_UPSAMPLE via_input: patch grid -> resized input -> output, as two interpolations."""
    image = smooth_image(333, 517, seed=3)
    features, grid = encode_whole_image(image, fake_encoder(3), 16)
    text, query_to_class = vocabulary(9, 6, seed=2)
    at_input = F.interpolate(reference.patch_logits(features, grid, text)[None], size=(333, 517), mode="bilinear", align_corners=False)[0]
    expected = logits_to_probabilities(at_input, (400, 600), LOGIT_SCALE, query_to_class, 6, 0.0)
    separable = SeparableLogits.from_patch_grid(features, grid, input_size=(333, 517))
    assert (separable(text) - at_input).abs().max() < 1e-6
    probs = separable_probabilities(separable, text, (400, 600), LOGIT_SCALE, query_to_class, 6, 0.0)
    assert (probs - expected).abs().max() < 2e-6
