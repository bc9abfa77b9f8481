"""The evaluator's metrics against a plain per-class computation from the label maps.

Random label maps with ignored pixels, a class absent from the ground truth but predicted, and a
class absent from both; the expected values are counted class by class with boolean masks, not
through a confusion matrix, and the boundary maps are eroded with numpy, not OpenCV.
"""

import math
import uuid

import numpy as np
import pytest
import torch
from detectron2.data import DatasetCatalog, MetadataCatalog
from PIL import Image

from clearclip_d2.data.datasets.common import register_sem_seg_dataset
from clearclip_d2.evaluation import ClearCLIPSemSegEvaluator
from clearclip_d2.evaluation.metrics import mask_to_boundary

# 20 classes: boundary cells (K+1) * pred + gt pass 255 (a uint8 count would wrap around).
CLASSES = ["c0", "c1", "c2", "only-predicted"] + [f"c{i}" for i in range(4, 19)] + ["absent"]
GT_CLASSES = [0, 1, 2] + list(range(4, 19))  # class 3 is only predicted, class 19 appears nowhere
IGNORE = 255
SIZES = [(23, 31), (40, 17), (12, 12)]


def plain_boundary(label_map: np.ndarray, ratio: float = 0.02) -> np.ndarray:
    """Label map minus its erosion: a 3x3 minimum, zero outside the image, repeated d times."""
    height, width = label_map.shape
    eroded = label_map.astype(np.int64)
    for _ in range(max(1, int(round(ratio * math.hypot(height, width))))):
        padded = np.pad(eroded, 1, constant_values=0)
        eroded = np.min([padded[dy : dy + height, dx : dx + width] for dy in range(3) for dx in range(3)], axis=0)
    return label_map.astype(np.int64) - eroded


def per_class_counts(pairs, classes):
    """(tp, gt pixels, predicted pixels) per class over (prediction, ground truth) pairs whose
    ground truth is ``len(classes)`` where ignored."""
    ignored = len(classes)
    tp, gt_count, pred_count = (np.zeros(len(classes)) for _ in range(3))
    for pred, gt in pairs:
        valid = (gt != ignored) & (pred != ignored)
        for c in range(len(classes)):
            tp[c] += np.sum((pred == c) & (gt == c) & valid)
            gt_count[c] += np.sum((gt == c) & valid)
            pred_count[c] += np.sum((pred == c) & valid)
    return tp, gt_count, pred_count


def plain_metrics(predictions, labels):
    """Every metric of the evaluator, in %, from the label maps."""
    pairs = [(p, np.where(g == IGNORE, len(CLASSES), g)) for p, g in zip(predictions, labels)]
    tp, in_gt, in_pred = per_class_counts(pairs, CLASSES)
    iou = [tp[c] / (in_gt[c] + in_pred[c] - tp[c]) if in_gt[c] else math.nan for c in range(len(CLASSES))]
    acc = [tp[c] / in_gt[c] if in_gt[c] else math.nan for c in range(len(CLASSES))]
    b_tp, b_gt, b_pred = per_class_counts([(plain_boundary(p), plain_boundary(g)) for p, g in pairs], CLASSES)
    b_union = b_gt + b_pred - b_tp
    b_iou = [b_tp[c] / b_union[c] if b_union[c] else math.nan for c in range(len(CLASSES))]
    either = [c for c in range(len(CLASSES)) if in_gt[c] + in_pred[c]]
    present = [c for c in range(len(CLASSES)) if in_gt[c]]
    expected = {
        "mIoU": np.mean([iou[c] for c in present]),
        "fwIoU": sum(in_gt[c] / in_gt.sum() * iou[c] for c in present),
        "mACC": np.mean([acc[c] for c in present]),
        "pACC": tp.sum() / in_gt.sum(),
        "mIoU-mmseg": np.mean([tp[c] / (in_gt[c] + in_pred[c] - tp[c]) for c in either]),
    }
    for c, name in enumerate(CLASSES):
        expected[f"IoU-{name}"], expected[f"ACC-{name}"] = iou[c], acc[c]
        expected[f"BoundaryIoU-{name}"] = b_iou[c]
        expected[f"min(IoU, B-Iou)-{name}"] = iou[c] if math.isnan(b_iou[c]) else min(iou[c], b_iou[c])
    return {key: 100 * value for key, value in expected.items()}


@pytest.fixture
def random_dataset(tmp_path):
    """Label maps with ignored pixels and only the GT_CLASSES; predictions over all classes but the last."""
    rng = np.random.default_rng(7)
    (tmp_path / "img").mkdir()
    (tmp_path / "lbl").mkdir()
    labels, predictions = [], []
    for index, (height, width) in enumerate(SIZES):
        label = rng.choice(GT_CLASSES, (height, width)).astype(np.uint8)
        label[rng.random((height, width)) < 0.15] = IGNORE
        label[: height // 2, : width // 2] = GT_CLASSES[-1 - index]  # regions with boundaries
        Image.fromarray(np.zeros((height, width, 3), np.uint8)).save(tmp_path / "img" / f"{index}.jpg")
        Image.fromarray(label).save(tmp_path / "lbl" / f"{index}.png")
        prediction = np.where(rng.random((height, width)) < 0.6, np.where(label == IGNORE, 0, label), rng.integers(0, len(CLASSES) - 1, (height, width)))
        labels.append(label)
        predictions.append(prediction.astype(np.int64))
    name = f"metrics_test_{uuid.uuid4().hex[:8]}"
    register_sem_seg_dataset(name, str(tmp_path / "img"), str(tmp_path / "lbl"), CLASSES, "make it")
    yield name, [str(tmp_path / "img" / f"{i}.jpg") for i in range(len(SIZES))], predictions, labels
    DatasetCatalog.remove(name)
    MetadataCatalog.remove(name)


def test_metrics_equal_a_plain_computation_from_the_label_maps(random_dataset, tmp_path):
    name, images, predictions, labels = random_dataset
    evaluator = ClearCLIPSemSegEvaluator(name, distributed=False, output_dir=str(tmp_path / "out"))
    evaluator.reset()
    for image, prediction in zip(images, predictions):
        evaluator.process([{"file_name": image}], [{"sem_seg_labels": torch.from_numpy(prediction)}])
    results = evaluator.evaluate()
    metrics = results["sem_seg"]
    expected = plain_metrics(predictions, labels)
    assert set(metrics) == set(expected)
    for key, value in expected.items():
        assert metrics[key] == pytest.approx(value, rel=1e-12, nan_ok=True), key
    assert math.isnan(metrics["IoU-only-predicted"]) and math.isnan(metrics["IoU-absent"])
    assert metrics["mIoU-mmseg"] < metrics["mIoU"]  # the only-predicted class counts with IoU 0
    assert results["evaluation"] == {"images": len(SIZES), "skipped_images": 0}
    saved = torch.load(tmp_path / "out" / "sem_seg_evaluation.pth", weights_only=True)  # plain floats
    assert saved == pytest.approx({k: v for k, v in metrics.items() if k != "mIoU-mmseg"}, nan_ok=True)


def test_boundary_is_the_label_map_minus_its_erosion():
    rng = np.random.default_rng(3)
    for height, width in [(5, 7), (60, 90), (1, 9)]:
        label_map = rng.integers(0, 6, (height, width)).astype(np.uint8)
        label_map[height // 3 :, width // 3 :] = 4
        assert np.array_equal(mask_to_boundary(label_map), plain_boundary(label_map))
