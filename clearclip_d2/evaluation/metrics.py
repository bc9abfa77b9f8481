"""Semantic-segmentation metrics from confusion matrices, in Detectron2's result format.

A confusion matrix here is Detectron2's: [K+1, K+1] int64 pixel counts, row = predicted class,
column = ground-truth class, the last row/column = ignored pixels (ground truth ``ignore_label``),
which every metric leaves out. The metrics are those of Detectron2's ``SemSegEvaluator`` (main
branch), computed here so that they do not depend on the installed Detectron2's version or its
private attributes, plus mmseg's mIoU.

Two definitions of mIoU are in use, and they differ only for classes predicted but absent from
the ground truth (such a class has IoU 0):

* ``mIoU`` -- Detectron2 main: the mean over classes present in the ground truth; a class only
  predicted lowers the IoU of the classes it was predicted on, but is not itself averaged.
  ``IoU-<class>`` is NaN for a class absent from the ground truth.
* ``mIoU-mmseg`` -- mmseg's (the paper's numbers) and Detectron2 v0.6's ``mIoU``: the mean over
  classes present in the ground truth OR the prediction, a class only predicted counting with
  IoU 0.

Boundary IoU (``BoundaryIoU-<class>``, ``min(IoU, B-Iou)-<class>``) follows Detectron2 main:
each label map is reduced to its inner boundary by :func:`mask_to_boundary` and the boundary
maps are counted into their own confusion matrix. Like Detectron2, it needs OpenCV and fewer
than 255 classes (the label maps are eroded as uint8). One difference, Detectron2's uint8
overflow from 16 classes on, which :func:`confusion_cells` avoids by counting in int64:
docs/DESIGN.md#boundary-iou. The other metrics are Detectron2's to the last bit.
"""

from collections import OrderedDict
from typing import Optional, Sequence

import numpy as np

try:
    import cv2
except ImportError:  # OpenCV is optional for Detectron2 too: no boundary IoU without it
    cv2 = None

BOUNDARY_DILATION_RATIO = 0.02  # of the image diagonal, as in Detectron2 and the Boundary IoU paper


def boundary_iou_supported(num_classes: int) -> bool:
    """Whether boundary IoU can be computed: OpenCV is installed and the K+1 labels fit in uint8
    with the ignore label mapped to K (Detectron2 main's conditions)."""
    return cv2 is not None and num_classes < np.iinfo(np.uint8).max


def mask_to_boundary(label_map: np.ndarray, dilation_ratio: float = BOUNDARY_DILATION_RATIO) -> np.ndarray:
    """The inner boundary of a label map, as Detectron2 main's ``SemSegEvaluator`` defines it.

    The map is eroded (a 3x3 minimum filter, zero outside the image) ``d`` times, with
    ``d = max(1, round(dilation_ratio * diagonal))`` pixels, and subtracted from itself: a pixel
    keeps a non-zero value where the erosion reached a smaller label within ``d`` pixels.

    Args:
        label_map: [H, W] uint8 labels.

    Returns:
        [H, W] uint8: ``label_map - eroded`` (never negative: erosion only lowers values).
    """
    if label_map.ndim != 2 or label_map.dtype != np.uint8:
        raise ValueError(f"mask_to_boundary expects an [H, W] uint8 label map, got {label_map.dtype} {label_map.shape}")
    height, width = label_map.shape
    dilation = max(1, int(round(dilation_ratio * np.sqrt(height**2 + width**2))))
    padded = cv2.copyMakeBorder(label_map, 1, 1, 1, 1, cv2.BORDER_CONSTANT, value=0)
    eroded = cv2.erode(padded, np.ones((3, 3), dtype=np.uint8), iterations=dilation)[1:-1, 1:-1]
    return label_map - eroded


def confusion_cells(pred: np.ndarray, gt: np.ndarray, num_classes: int) -> np.ndarray:
    """Each pixel's flat index into the [K+1, K+1] confusion matrix: ``pred * (K + 1) + gt``.

    Args:
        pred, gt: [H, W] integer labels in ``0..K`` (``gt`` with the ignore label mapped to K).
    """
    return (num_classes + 1) * pred.reshape(-1).astype(np.int64) + gt.reshape(-1).astype(np.int64)


def class_counts(conf_matrix: np.ndarray):
    """(true positives, ground-truth pixels, predicted pixels) per class, float64 [K] each,
    ignored pixels left out."""
    counts = conf_matrix[:-1, :-1]
    return counts.diagonal().astype(float), counts.sum(axis=0).astype(float), counts.sum(axis=1).astype(float)


def _ratio_where(numerator: np.ndarray, denominator: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """``numerator / denominator`` where ``valid``, NaN elsewhere."""
    ratio = np.full(numerator.shape, np.nan, dtype=float)
    ratio[valid] = numerator[valid] / denominator[valid]
    return ratio


def _mean_where(values: np.ndarray, valid: np.ndarray) -> float:
    """Mean of ``values[valid]`` (NaN when nothing is valid), summed as Detectron2 sums it."""
    count = int(np.sum(valid))
    return float(np.sum(values[valid]) / count) if count else float("nan")


def sem_seg_metrics(
    conf_matrix: np.ndarray, class_names: Sequence[str], boundary_conf_matrix: Optional[np.ndarray] = None
) -> "OrderedDict[str, float]":
    """Detectron2 main's ``SemSegEvaluator`` result dict: its metrics (%), keys in its order.

    Args:
        conf_matrix: [K+1, K+1] pixel counts (see the module docstring).
        class_names: K names, for the per-class keys.
        boundary_conf_matrix: [K+1, K+1] counts of the boundary maps, or None: no boundary keys.

    Returns:
        ``mIoU, fwIoU, IoU-<c> (with BoundaryIoU-<c>, min(IoU, B-Iou)-<c>), mACC, pACC, ACC-<c>``
        as Python floats; NaN for a class absent from the ground truth. :func:`mmseg_metrics`
        gives ``mIoU-mmseg`` from the same matrix.
    """
    tp, pos_gt, pos_pred = class_counts(conf_matrix)
    union = pos_gt + pos_pred - tp
    in_gt = pos_gt > 0
    acc = _ratio_where(tp, pos_gt, in_gt)
    iou_valid = in_gt & (union > 0)
    iou = _ratio_where(tp, union, iou_valid)
    total_gt = np.sum(pos_gt)
    class_weights = pos_gt / total_gt if total_gt else np.zeros_like(pos_gt)
    boundary_iou = None if boundary_conf_matrix is None else _boundary_iou(boundary_conf_matrix)

    res = OrderedDict()
    res["mIoU"] = 100 * _mean_where(iou, iou_valid)
    res["fwIoU"] = 100 * float(np.sum(iou[iou_valid] * class_weights[iou_valid]))
    for i, name in enumerate(class_names):
        res[f"IoU-{name}"] = 100 * float(iou[i])
        if boundary_iou is not None:
            res[f"BoundaryIoU-{name}"] = 100 * float(boundary_iou[i])
            # Python's min, as Detectron2: NaN when the IoU is NaN, the IoU when only B-IoU is NaN.
            res[f"min(IoU, B-Iou)-{name}"] = 100 * float(min(iou[i], boundary_iou[i]))
    res["mACC"] = 100 * _mean_where(acc, in_gt)
    res["pACC"] = 100 * float(np.sum(tp) / total_gt) if total_gt else float("nan")
    for i, name in enumerate(class_names):
        res[f"ACC-{name}"] = 100 * float(acc[i])
    return res


def _boundary_iou(boundary_conf_matrix: np.ndarray) -> np.ndarray:
    """[K] IoU of the boundary maps, NaN where a class has no boundary pixel in either map."""
    tp, pos_gt, pos_pred = class_counts(boundary_conf_matrix)
    union = pos_gt + pos_pred - tp
    return _ratio_where(tp, union, union > 0)


def mmseg_metrics(conf_matrix: np.ndarray) -> dict:
    """mmseg's mIoU (%): the mean IoU over classes present in the ground truth OR the prediction
    (a class only predicted counts with IoU 0); see the module docstring.

    Args:
        conf_matrix: [K+1, K+1] counts: row = predicted class, column = ground-truth class, the
            last row/column = ignored pixels (left out).
    """
    tp, pos_gt, pos_pred = class_counts(conf_matrix)
    union = pos_gt + pos_pred - tp
    present = union > 0
    miou = float(np.mean(tp[present] / union[present])) if present.any() else float("nan")
    return {"mIoU-mmseg": 100 * miou}
