"""Detectron2's ``SemSegEvaluator``, with label files checked and outputs written atomically."""

import os
import shutil

import numpy as np
from detectron2.evaluation import SemSegEvaluator
from detectron2.utils import comm
from PIL import Image

from ..utils.errors import ClearCLIPError


def load_label_map(path: str, dtype=int) -> np.ndarray:
    """Read a label PNG/TIFF as an integer array, naming the file if it cannot be read."""
    try:
        with Image.open(path) as img:
            return np.array(img, dtype=dtype)
    except FileNotFoundError as e:
        raise ClearCLIPError(f"label map {path} does not exist") from e
    except Exception as e:
        raise ClearCLIPError(f"cannot read label map {path}: {type(e).__name__}: {e}") from e


def check_label_values(label: np.ndarray, num_classes: int, ignore_label: int, path: str, dataset_name: str) -> None:
    """Refuse a label map with values that are neither a class index (0..num_classes-1) nor the
    ignore label, counting them and naming the file (Detectron2 would fail on them later)."""
    if label.ndim != 2:
        raise ClearCLIPError(f"label map {path} has shape {label.shape}; expected a single-channel label map")
    bad = ((label < 0) | (label >= num_classes)) & (label != ignore_label)
    if bad.any():
        values = np.unique(label[bad])
        shown = ", ".join(str(v) for v in values[:10]) + (", ..." if len(values) > 10 else "")
        raise ClearCLIPError(
            f"label map {path} has {int(bad.sum())} pixels with values outside 0..{num_classes - 1} that are not the "
            f"ignore label {ignore_label} (values {shown}); dataset {dataset_name} has {num_classes} classes: "
            "prepare it again with its datasets/prepare_*.py script"
        )


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


class ClearCLIPSemSegEvaluator(SemSegEvaluator):
    """``SemSegEvaluator`` (mIoU, fwIoU, mACC, pACC, per-class IoU/ACC, boundary IoU).

    Differences: a label map whose size differs from the prediction, or with values that are
    neither a class nor ``ignore_label`` (e.g. 65535 for the 16-bit TIFF sets), is refused with its
    file name; ``mIoU-mmseg`` (:func:`mmseg_metrics`, the paper's definition) is added beside
    Detectron2's ``mIoU``; ``sem_seg_predictions.json`` / ``sem_seg_evaluation.pth`` are written
    to a temporary folder and moved into ``output_dir`` only when complete.
    """

    def __init__(self, dataset_name: str, distributed: bool = True, output_dir: str = None):
        super().__init__(dataset_name, distributed=distributed, output_dir=output_dir, sem_seg_loading_fn=load_label_map)
        self.sem_seg_loading_fn = self.load_checked_label_map

    def load_checked_label_map(self, path: str, dtype=int) -> np.ndarray:
        label = load_label_map(path, dtype)
        check_label_values(label, self._num_classes, self._ignore_label, path, self._dataset_name)
        return label

    def process(self, inputs, outputs):
        for input, output in zip(inputs, outputs):
            gt_file = self.input_file_to_gt_file[input["file_name"]]
            pred_shape = tuple(output["sem_seg"].shape[-2:])
            with Image.open(gt_file) as gt:
                gt_shape = (gt.height, gt.width)
            if gt_shape != pred_shape:
                raise ClearCLIPError(
                    f"label map {gt_file} is {gt_shape[1]}x{gt_shape[0]} but its image "
                    f"{input['file_name']} is {pred_shape[1]}x{pred_shape[0]}; labels must match their image"
                )
        super().process(inputs, outputs)

    def evaluate(self):
        final_dir = self._output_dir
        if not final_dir:
            return self._evaluate_all_metrics()
        staging = os.path.join(final_dir, f".staging-{self._dataset_name}-{os.getpid()}")
        self._output_dir = staging
        try:
            results = self._evaluate_all_metrics()
            if comm.is_main_process() and os.path.isdir(staging):
                for name in os.listdir(staging):
                    os.replace(os.path.join(staging, name), os.path.join(final_dir, name))
        finally:
            self._output_dir = final_dir
            shutil.rmtree(staging, ignore_errors=True)
        return results

    def _evaluate_all_metrics(self):
        """Detectron2's metrics plus :func:`mmseg_metrics` (None on processes other than the main one)."""
        results = super().evaluate()
        if results is not None:  # the main process: self._conf_matrix now holds every process's counts
            results["sem_seg"].update(mmseg_metrics(self._conf_matrix))
        return results
