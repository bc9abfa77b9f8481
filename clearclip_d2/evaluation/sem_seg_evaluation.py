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


class ClearCLIPSemSegEvaluator(SemSegEvaluator):
    """``SemSegEvaluator`` (mIoU, fwIoU, mACC, pACC, per-class IoU/ACC, boundary IoU).

    Differences: a label map whose size differs from the prediction is refused with its
    file name, and ``sem_seg_predictions.json`` / ``sem_seg_evaluation.pth`` are written to
    a temporary folder and moved into ``output_dir`` only when complete.
    """

    def __init__(self, dataset_name: str, distributed: bool = True, output_dir: str = None):
        super().__init__(dataset_name, distributed=distributed, output_dir=output_dir, sem_seg_loading_fn=load_label_map)

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
            return super().evaluate()
        staging = os.path.join(final_dir, f".staging-{self._dataset_name}-{os.getpid()}")
        self._output_dir = staging
        try:
            results = super().evaluate()
            if comm.is_main_process() and os.path.isdir(staging):
                for name in os.listdir(staging):
                    os.replace(os.path.join(staging, name), os.path.join(final_dir, name))
        finally:
            self._output_dir = final_dir
            shutil.rmtree(staging, ignore_errors=True)
        return results
