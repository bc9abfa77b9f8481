"""Registering semantic-segmentation datasets laid out under ``$DETECTRON2_DATASETS``."""

import logging
import os
from typing import List, Sequence

from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.datasets import load_sem_seg

from ...utils.errors import ClearCLIPError
from ..vocabulary import load_vocabulary_file

logger = logging.getLogger(__name__)


def datasets_root() -> str:
    """``$DETECTRON2_DATASETS``, default ``./datasets`` (Detectron2's convention)."""
    return os.path.expanduser(os.getenv("DETECTRON2_DATASETS", "datasets"))


def class_entries(class_names_file: str) -> List[str]:
    """The entries of a class-names file, one per class, synonyms joined by ", "."""
    return [", ".join(synonyms) for synonyms in load_vocabulary_file(class_names_file).classes]


def register_sem_seg_dataset(
    name: str,
    image_root: str,
    sem_seg_root: str,
    stuff_classes: Sequence[str],
    prepare_command: str,
    image_ext: str = "jpg",
    gt_ext: str = "png",
    ignore_label: int = 255,
    **metadata,
) -> None:
    """Register ``name`` lazily: nothing is read until the dataset is used.

    A name that another project registered already is left alone (same name, same layout).
    """
    if name in DatasetCatalog.list():
        logger.debug(f"dataset {name} is registered already; keeping that registration")
        return
    DatasetCatalog.register(
        name,
        lambda: load_prepared_sem_seg(name, image_root, sem_seg_root, prepare_command, image_ext, gt_ext),
    )
    MetadataCatalog.get(name).set(
        stuff_classes=list(stuff_classes),
        image_root=image_root,
        sem_seg_root=sem_seg_root,
        evaluator_type="sem_seg",
        ignore_label=ignore_label,
        prepare_command=prepare_command,
        **metadata,
    )


def check_dataset_prepared(name: str) -> None:
    """Raise a one-line error naming the missing folder and the script that makes it."""
    if name not in DatasetCatalog.list():
        raise ClearCLIPError(f"dataset {name!r} is not registered; registered: {', '.join(sorted(DatasetCatalog.list()))}")
    meta = MetadataCatalog.get(name)
    for folder in (meta.get("image_root"), meta.get("sem_seg_root")):
        if folder and not os.path.isdir(folder):
            raise ClearCLIPError(_missing_folder_message(name, folder, meta.get("prepare_command")))


def _missing_folder_message(name: str, folder: str, prepare_command) -> str:
    fix = f"run: {prepare_command}" if prepare_command else "see datasets/README.md"
    return f"dataset {name}: folder {folder} does not exist (DETECTRON2_DATASETS={datasets_root()}); {fix}"


def load_prepared_sem_seg(name, image_root, sem_seg_root, prepare_command, image_ext, gt_ext):
    for folder in (image_root, sem_seg_root):
        if not os.path.isdir(folder):
            raise ClearCLIPError(_missing_folder_message(name, folder, prepare_command))
    dicts = load_sem_seg(sem_seg_root, image_root, gt_ext=gt_ext, image_ext=image_ext)
    if not dicts:
        raise ClearCLIPError(f"dataset {name}: no *.{image_ext} images with *.{gt_ext} labels in {image_root} / {sem_seg_root}")
    return dicts
