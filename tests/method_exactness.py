"""Shared by tests/test_method_<method>.py: the plugin built from a method's preset (tiny random
CLIP, the mapper's resize) against that method's plain reference (tests/reference_<method>.py).

Comparison (METHODS_PLAN): probabilities within 1e-4 everywhere except channel 0 where the
background threshold may have fired (the plugin raises it there so that argmax gives 0; the
authors set the prediction to 0 instead): with a threshold, channel 0 is left out where the
authors predict 0 (NACLIP decides on the probabilities before renormalising them, which its
reference does not return). The same argmax everywhere.
"""

import os

import numpy as np
import torch

import reference_clearclip
from conftest import FEW_TEMPLATES, REPO_ROOT
from clearclip_d2.config import load_clearclip_config
from clearclip_d2.data.transforms import ResizeShortLongEdge

# 6 classes, 10 queries: synonyms in classes 0, 1 and 3.
CLASSES = ["background, sky", "cat, kitten", "dog", "grass, lawn, meadow", "road", "car"]
QUERIES = [q.strip() for entry in CLASSES for q in entry.split(",")]
QUERY_IDX = [i for i, entry in enumerate(CLASSES) for _ in entry.split(",")]


def smooth_image(height: int, width: int, seed: int) -> np.ndarray:
    """A random, spatially smooth HxWx3 uint8 RGB image with some noise (regions and edges)."""
    import cv2

    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (3, 4, 3)).astype(np.uint8)
    image = cv2.resize(small, (width, height), interpolation=cv2.INTER_CUBIC)
    return np.clip(image.astype(np.int16) + rng.integers(-20, 21, image.shape), 0, 255).astype(np.uint8)


def reference_text(tiny_clip) -> torch.Tensor:
    model, tokenizer = tiny_clip
    return reference_clearclip.text_features(model, tokenizer, QUERIES, FEW_TEMPLATES)


def build_from_preset(tiny_model_files, preset: str, **overrides):
    """``build_model`` of ``configs/methods/<preset>`` with the tiny model (and ``KEY=value``
    overrides, dots as in the config), vocabulary :data:`CLASSES`."""
    from detectron2.modeling import build_model

    model_json, checkpoint = tiny_model_files
    opts = {
        "MODEL.DEVICE": "cpu", "MODEL.CLEARCLIP.MODEL_NAME": model_json, "MODEL.CLEARCLIP.PRETRAINED": checkpoint,
        "MODEL.CLEARCLIP.PROMPT_TEMPLATES": list(FEW_TEMPLATES), "MODEL.CLEARCLIP.CACHE_DIR": "", **overrides,
    }
    flat = [item for key, value in opts.items() for item in (key, value)]
    cfg = load_clearclip_config(os.path.join(REPO_ROOT, "configs", "methods", preset), flat)
    model = build_model(cfg).eval()
    model.set_vocabulary(CLASSES)
    return model, cfg


def run_plugin(model, cfg, image_rgb: np.ndarray) -> torch.Tensor:
    """The mapper's resize (INPUT.MIN_SIZE_TEST / MAX_SIZE_TEST), then the model: [K, H, W]."""
    height, width = image_rgb.shape[:2]
    resize = ResizeShortLongEdge(cfg.INPUT.MIN_SIZE_TEST, cfg.INPUT.MAX_SIZE_TEST)
    resized = resize.get_transform(image_rgb).apply_image(image_rgb)
    inputs = [{"image": torch.from_numpy(np.ascontiguousarray(resized.transpose(2, 0, 1))), "height": height, "width": width}]
    with torch.no_grad():
        return model(inputs)[0]["sem_seg"]


def assert_matches(probs: torch.Tensor, ref_probs: torch.Tensor, ref_pred: torch.Tensor, prob_thd: float = 0.0) -> None:
    """1e-4 in probability (with a threshold, channel 0 left out where the authors predict 0),
    identical argmax."""
    assert probs.shape == ref_probs.shape
    fired = ref_pred == 0 if prob_thd > 0 else torch.zeros_like(ref_pred, dtype=torch.bool)
    compared = torch.ones_like(probs, dtype=torch.bool)
    compared[0] = ~fired
    difference = (probs - ref_probs).abs()[compared]
    assert difference.max() <= 1e-4, difference.max()
    mismatches = int((probs.argmax(0) != ref_pred).sum())
    assert mismatches == 0, f"{mismatches} of {ref_pred.numel()} pixels predict another class"


def median_max_probability(probs: torch.Tensor) -> float:
    """A threshold that sends about half of the pixels to the background."""
    return float(probs.max(0).values.median())


def area_threshold_dropping_a_class(pred: torch.Tensor, num_classes: int) -> float:
    """An area fraction that drops the smallest predicted foreground class (and keeps the largest)."""
    area = torch.bincount(pred.flatten(), minlength=num_classes)[1:].float()
    assert (area > 0).sum() >= 2, "the image must predict several foreground classes"
    return float((area / area.sum())[area > 0].min()) + 1e-3
