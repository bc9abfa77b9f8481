"""Detectron2's ``SemSegEvaluator``, with label files checked, resumable, and outputs written atomically."""

import os
import shutil

import numpy as np
from detectron2.utils import comm
from PIL import Image

from ..utils.errors import ClearCLIPError
from .resumable import ResumableSemSegEvaluator


def load_label_map(path: str, dtype=int) -> np.ndarray:
    """Read a label PNG/TIFF as an integer array, naming the file if it cannot be read."""
    try:
        with Image.open(path) as img:
            return np.array(img, dtype=dtype)
    except FileNotFoundError as e:
        raise ClearCLIPError(f"label map {path} does not exist") from e
    except Exception as e:
        raise ClearCLIPError(f"cannot read label map {path}: {type(e).__name__}: {e}") from e


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


class ClearCLIPSemSegEvaluator(ResumableSemSegEvaluator):
    """``SemSegEvaluator`` (mIoU, fwIoU, mACC, pACC, per-class IoU/ACC, boundary IoU).

    Differences: per-image results, resumable, and bad label maps (unreadable, of another size
    than the prediction, values outside the classes) stop the evaluation naming the file or,
    with ``skip_bad_images``, are skipped (see :class:`~.resumable.ResumableSemSegEvaluator`);
    ``sem_seg_predictions.json``, ``sem_seg_evaluation.pth`` and ``skipped.txt`` are written to a
    temporary folder and moved into ``output_dir`` only when complete; ``mIoU-mmseg``
    (:func:`mmseg_metrics`, the paper's definition) is added beside Detectron2's ``mIoU``.
    """

    def __init__(self, dataset_name: str, distributed: bool = True, output_dir: str = None, *, skip_bad_images: bool = False):
        super().__init__(
            dataset_name,
            distributed=distributed,
            output_dir=output_dir,
            skip_bad_images=skip_bad_images,
            sem_seg_loading_fn=load_label_map,
        )

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
