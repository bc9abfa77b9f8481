"""Dataset registrations (on import) under ``$DETECTRON2_DATASETS``."""

from . import coco_stuff  # noqa: F401
from .common import check_dataset_prepared, datasets_root, register_sem_seg_dataset

__all__ = ["check_dataset_prepared", "datasets_root", "register_sem_seg_dataset"]
