"""Detectron2's ``SemSegEvaluator``, with label files checked, resumable, and outputs written atomically."""

import os
import shutil

import numpy as np
from detectron2.utils import comm
from PIL import Image

from ..utils.errors import ClearCLIPError
from .metrics import mmseg_metrics
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
