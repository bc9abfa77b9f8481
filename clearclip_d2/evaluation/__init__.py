"""Evaluation: :class:`ClearCLIPSemSegEvaluator` (Detectron2's ``DatasetEvaluator``) with its
metrics computed from the summed confusion matrices (``metrics.py``), the per-image shards and
run fingerprint of resumable evaluations (``shards.py``, ``fingerprint.py``, ``resumable.py``)
and the checks of bad inputs (``bad_inputs.py``)."""

from .metrics import mmseg_metrics, sem_seg_metrics
from .sem_seg_evaluation import ClearCLIPSemSegEvaluator, load_label_map

__all__ = ["ClearCLIPSemSegEvaluator", "load_label_map", "mmseg_metrics", "sem_seg_metrics"]
