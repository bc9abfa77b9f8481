"""Dataset registrations (on import) under ``$DETECTRON2_DATASETS``."""

from . import ade20k, cityscapes, coco_object, coco_stuff, pascal_context, voc  # noqa: F401
from .common import check_dataset_prepared, datasets_root, register_benchmark, register_sem_seg_dataset

__all__ = ["check_dataset_prepared", "datasets_root", "register_benchmark", "register_sem_seg_dataset"]
