"""Training data for Detectron2 semantic-segmentation heads on the ClearCLIP backbone."""

from typing import List

from detectron2.data import DatasetMapper
from detectron2.data import transforms as T


def sem_seg_train_augmentations(cfg) -> List[T.Augmentation]:
    """Resize the short side (``INPUT.MIN_SIZE_TRAIN`` / ``MAX_SIZE_TRAIN`` /
    ``MIN_SIZE_TRAIN_SAMPLING``), then crop (``INPUT.CROP``), then flip (``INPUT.RANDOM_FLIP``).

    Detectron2's default train mapper crops *before* resizing (a detection recipe); semantic
    segmentation crops the resized image, as Detectron2's DeepLab project does.
    """
    augmentations = [
        T.ResizeShortestEdge(cfg.INPUT.MIN_SIZE_TRAIN, cfg.INPUT.MAX_SIZE_TRAIN, cfg.INPUT.MIN_SIZE_TRAIN_SAMPLING)
    ]
    if cfg.INPUT.CROP.ENABLED:
        augmentations.append(T.RandomCrop(cfg.INPUT.CROP.TYPE, cfg.INPUT.CROP.SIZE))
    if cfg.INPUT.RANDOM_FLIP != "none":
        augmentations.append(
            T.RandomFlip(horizontal=cfg.INPUT.RANDOM_FLIP == "horizontal", vertical=cfg.INPUT.RANDOM_FLIP == "vertical")
        )
    return augmentations


def build_sem_seg_train_mapper(cfg) -> DatasetMapper:
    """Detectron2's ``DatasetMapper`` (image and ``sem_seg`` label map) with :func:`sem_seg_train_augmentations`."""
    return DatasetMapper(cfg, is_train=True, augmentations=sem_seg_train_augmentations(cfg))
