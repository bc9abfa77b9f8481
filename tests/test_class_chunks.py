"""The class-chunked path: the same prediction as the plain one, within the documented memory bound."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from conftest import REPO_ROOT
from test_modeling_exactness import CLASSES, build_segmentor, run_plugin, smooth_image
from clearclip_d2.modeling.inference.class_chunks import CONFIDENCE_KEY, LABELS_KEY, RUNTIME_BYTES
from clearclip_d2.utils.errors import ClearCLIPError

CHUNKED = {"MODEL.CLEARCLIP.MAX_DENSE_ELEMENTS": 0}


def run_chunked(tiny_model_files, image, chunk, **overrides):
    from clearclip_d2.data.transforms import ResizeShortLongEdge

    model = build_segmentor(tiny_model_files, **CHUNKED, **{"MODEL.CLEARCLIP.CLASS_CHUNK": chunk}, **overrides)
    height, width = image.shape[:2]
    resized = ResizeShortLongEdge(448, 2048).get_transform(image).apply_image(image)
    inputs = [{"image": torch.from_numpy(np.ascontiguousarray(resized.transpose(2, 0, 1))), "height": height, "width": width}]
    output = model(inputs)[0]
    assert "sem_seg" not in output
    return output[LABELS_KEY], output[CONFIDENCE_KEY]


@pytest.mark.parametrize(
    "overrides, chunk",
    [
        ({}, 1),
        ({}, 4),  # chunks split the synonyms of a class
        ({"MODEL.CLEARCLIP.SLIDE_CROP": 224, "MODEL.CLEARCLIP.SLIDE_STRIDE": 150}, 5),
        ({"MODEL.CLEARCLIP.SLIDE_CROP": 0}, 2),  # whole-image mode
        ({"MODEL.CLEARCLIP.PROB_THRESHOLD": 0.3}, 3),
    ],
)
def test_chunked_labels_equal_the_plain_argmax(tiny_model_files, overrides, chunk):
    image = smooth_image(333, 517, seed=4)
    probs = run_plugin(build_segmentor(tiny_model_files, **overrides), image)
    labels, confidence = run_chunked(tiny_model_files, image, chunk, **overrides)
    assert labels.dtype == torch.int64 and labels.shape == probs.shape[1:]
    assert torch.equal(labels, probs.argmax(0))
    assert len(torch.unique(labels)) > 2
    threshold = overrides.get("MODEL.CLEARCLIP.PROB_THRESHOLD", 0.0)
    kept = confidence >= threshold
    if threshold:
        assert 0 < kept.float().mean() < 1, "the threshold must matter in this test"
    # The highest class probability of the plain path (where the threshold did not raise class 0).
    assert torch.allclose(confidence[kept], probs.max(0).values[kept], atol=1e-5)


def test_plain_output_until_the_limit(tiny_model_files):
    image = smooth_image(60, 80, seed=1)
    queries = 9  # CLASSES has 9 queries (synonyms included)
    at_limit = build_segmentor(tiny_model_files, **{"MODEL.CLEARCLIP.MAX_DENSE_ELEMENTS": queries * 60 * 80})
    assert "sem_seg" in at_limit([_input(image)])[0]
    above = build_segmentor(tiny_model_files, **{"MODEL.CLEARCLIP.MAX_DENSE_ELEMENTS": queries * 60 * 80 - 1})
    assert LABELS_KEY in above([_input(image)])[0]


def _input(image):
    return {"image": torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1))), "height": image.shape[0], "width": image.shape[1]}


def test_predictor_labels_on_the_chunked_path(tiny_model_files):
    from conftest import tiny_cfg
    from clearclip_d2.engine import ClearCLIPPredictor

    image = smooth_image(120, 160, seed=2)
    plain = ClearCLIPPredictor(tiny_cfg(tiny_model_files))
    chunked = ClearCLIPPredictor(tiny_cfg(tiny_model_files, **CHUNKED))
    for predictor in (plain, chunked):
        predictor.set_vocabulary(CLASSES)
    assert torch.equal(chunked.predict_labels(image), plain(image).argmax(0))
    with pytest.raises(ClearCLIPError, match="MAX_DENSE_ELEMENTS 0; use predict_labels"):
        chunked(image)


def test_bad_chunk_settings_are_refused(tiny_model_files):
    from conftest import tiny_cfg
    from clearclip_d2.config import check_clearclip_config

    with pytest.raises(ClearCLIPError, match="CLASS_CHUNK 0 must be > 0"):
        check_clearclip_config(tiny_cfg(tiny_model_files, **{"MODEL.CLEARCLIP.CLASS_CHUNK": 0}))


def measure_peak_memory(tiny_model_files, cases):
    """The memory probe's measurements of ``cases`` (see tests/memory_probe.py), in a fresh process."""
    env = dict(os.environ, PYTHONPATH=REPO_ROOT, PYTHONWARNINGS="ignore", OMP_NUM_THREADS="1",
               MALLOC_MMAP_THRESHOLD_="131072")  # freed large buffers go back to the system at once
    result = subprocess.run(
        [sys.executable, os.path.join(REPO_ROOT, "tests", "memory_probe.py"), *tiny_model_files, json.dumps(cases)],
        env=env, capture_output=True, text=True, timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    measurements = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
    assert len(measurements) == len(cases)
    return measurements


def test_small_image_upscaled_for_the_encoder_stays_within_the_bound(tiny_model_files):
    """A 64 x 48 image with 500 classes: the output map is 500 x 3,072 floats, within
    MAX_DENSE_ELEMENTS, but the logits are averaged at the resized 298 x 224 (33 M floats, 133 MB a
    copy). The bound must cover that intermediate: the image takes the chunked path. With a limit
    that allows the intermediate, the plain path is taken and stays within its own bound."""
    resized_map = 500 * 224 * 300  # the resized image is 224 x 299
    low_limit, high_limit = measure_peak_memory(
        tiny_model_files, [(48, 64, 500, 32, 224, 2_000_000), (48, 64, 500, 32, 224, resized_map)]
    )
    assert low_limit["path"] == "chunked" and high_limit["path"] == "plain", (low_limit, high_limit)
    for measured in (low_limit, high_limit):
        assert measured["increase"] <= measured["guaranteed_bound"] + RUNTIME_BYTES, measured


def test_dense_elements_cover_the_output_and_the_resized_image():
    from clearclip_d2.modeling.inference.class_chunks import dense_elements, use_class_chunks

    assert dense_elements(10, (48, 64), (224, 298)) == 10 * 224 * 298
    assert dense_elements(10, (3000, 4000), (448, 597)) == 10 * 3000 * 4000
    assert use_class_chunks(10, (48, 64), (224, 298), 10 * 48 * 64)
    assert not use_class_chunks(10, (48, 64), (224, 298), 10 * 224 * 298)


def test_peak_memory_stays_within_the_documented_bound(tiny_model_files):
    """A 4000 x 3000 photo (32 classes x 12 M pixels = 384 M floats) and a 2,000-class vocabulary
    (2000 x 173 k = 346 M floats), both past the plain-output limit; measured in a fresh process
    as the rise of the peak resident size during one forward."""
    cases = [(3000, 4000, 32, 4, 448), (360, 480, 2000, 32, 224)]  # height, width, classes, chunk, short edge
    for measured in measure_peak_memory(tiny_model_files, cases):
        assert measured["classes"] > 1
        assert measured["increase"] <= measured["bound"] + RUNTIME_BYTES, measured
        # The bound is below one copy of the plain [Q, H, W] map, of which the plain path holds several.
        assert measured["bound"] + RUNTIME_BYTES < measured["dense_copy"], measured
