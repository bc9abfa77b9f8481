"""Semantic-segmentation metrics from a confusion matrix."""

import numpy as np


def mmseg_metrics(conf_matrix: np.ndarray) -> dict:
    """mmseg's mIoU (%): the mean IoU over classes present in the ground truth OR the prediction
    (a class only predicted counts with IoU 0); Detectron2's ``mIoU`` averages over classes
    present in the ground truth only.

    Args:
        conf_matrix: [K+1, K+1] counts of Detectron2's evaluator: row = predicted class, column =
            ground-truth class, the last row/column = ignored pixels (left out).
    """
    counts = conf_matrix[:-1, :-1].astype(np.float64)
    intersection = np.diag(counts)
    union = counts.sum(axis=0) + counts.sum(axis=1) - intersection
    present = union > 0
    miou = float(np.mean(intersection[present] / union[present])) if present.any() else float("nan")
    return {"mIoU-mmseg": 100 * miou}
