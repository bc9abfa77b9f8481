"""Registering semantic-segmentation datasets laid out under ``$DETECTRON2_DATASETS``.

Each dataset pairs the images of ``image_root`` with the label maps of ``sem_seg_root`` by
file name (``<stem><image suffix>`` with ``<stem><label suffix>``), optionally restricted to
the stems of an image list (VOC's ``val.txt``) and one level of subfolders (Cityscapes'
cities). Loading checks the pairing both ways, so a half-prepared benchmark is reported with
the script that completes it instead of being evaluated on a subset.
"""

import logging
import os
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Set

from detectron2.data import DatasetCatalog, MetadataCatalog

from ...utils.errors import ClearCLIPError
from ..vocabulary import load_vocabulary_file

logger = logging.getLogger(__name__)

# Datasets whose records come from :func:`load_prepared_sem_seg` (cheap to load and check).
_CHECKED_DATASETS: Set[str] = set()
_SHOWN_FILES = 3  # how many missing files an error message names


def datasets_root() -> str:
    """``$DETECTRON2_DATASETS``, default ``./datasets`` (Detectron2's convention)."""
    return os.path.expanduser(os.getenv("DETECTRON2_DATASETS", "datasets"))


def class_entries(class_names_file: str) -> List[str]:
    """The entries of a class-names file, one per class, synonyms joined by ", "."""
    return [", ".join(synonyms) for synonyms in load_vocabulary_file(class_names_file).classes]


def _suffix(ext: str) -> str:
    """``"jpg"`` -> ``".jpg"``; a suffix such as ``"_leftImg8bit.png"`` or ``".tif"`` is kept."""
    return ext if ext.startswith((".", "_")) else "." + ext


@dataclass(frozen=True)
class SemSegLayout:
    """Where the images and label maps of one split are, and how they pair up."""

    image_root: str
    sem_seg_root: str
    image_suffix: str = ".jpg"
    label_suffix: str = ".png"
    image_list: Optional[str] = None  # file with one image stem a line; None = every image of image_root
    subfolders: bool = False  # files sit in one level of subfolders (the same ones in both roots)


def register_sem_seg_dataset(
    name: str,
    image_root: str,
    sem_seg_root: str,
    stuff_classes: Sequence[str],
    prepare_command: str,
    image_ext: str = "jpg",
    gt_ext: str = "png",
    ignore_label: int = 255,
    *,
    image_list: Optional[str] = None,
    subfolders: bool = False,
    **metadata,
) -> None:
    """Register ``name`` lazily: nothing is read until the dataset is used.

    ``image_ext`` / ``gt_ext``: an extension (``"jpg"``) or a file-name suffix
    (``"_leftImg8bit.png"``); an image ``<stem><image suffix>`` pairs with the label map
    ``<stem><label suffix>``. ``image_list``: a file naming the stems to use (one a line).
    ``stuff_classes`` also go to the metadata as ``clearclip_classes``, the vocabulary the model
    uses for this dataset.

    A name that is registered already (Detectron2's own ``ade20k_sem_seg_val`` and
    ``cityscapes_fine_sem_seg_val``, or another project's) is adopted if it reads the same
    folders and has as many classes: its metadata keeps its values and gains the ClearCLIP keys,
    and its loader is replaced by the checking one (same records). Otherwise it is left alone.
    """
    layout = SemSegLayout(image_root, sem_seg_root, _suffix(image_ext), _suffix(gt_ext), image_list, subfolders)
    clearclip_metadata = dict(clearclip_classes=list(stuff_classes), prepare_command=prepare_command, **metadata)
    if name in DatasetCatalog.list():
        if not _same_dataset(MetadataCatalog.get(name), layout, len(stuff_classes)):
            logger.debug(f"dataset {name} is registered already with other folders or classes; keeping it as it is")
            return
        DatasetCatalog.remove(name)
        new_metadata = dict(image_root=image_root, sem_seg_root=sem_seg_root, **clearclip_metadata)
    else:
        new_metadata = dict(
            stuff_classes=list(stuff_classes),
            image_root=image_root,
            sem_seg_root=sem_seg_root,
            evaluator_type="sem_seg",
            ignore_label=ignore_label,
            **clearclip_metadata,
        )
    DatasetCatalog.register(name, lambda: load_prepared_sem_seg(name, layout, prepare_command))
    meta = MetadataCatalog.get(name)
    meta.set(**{key: value for key, value in new_metadata.items() if meta.get(key) is None})
    _CHECKED_DATASETS.add(name)


def _same_dataset(meta, layout: SemSegLayout, num_classes: int) -> bool:
    """True if an existing registration reads the same folders and has ``num_classes`` classes."""
    image_root = meta.get("image_root") or meta.get("image_dir")
    sem_seg_root = meta.get("sem_seg_root") or meta.get("gt_dir")
    if not image_root or not sem_seg_root or len(meta.get("stuff_classes") or ()) != num_classes:
        return False
    same = lambda a, b: os.path.normpath(os.path.abspath(a)) == os.path.normpath(os.path.abspath(b))  # noqa: E731
    return same(image_root, layout.image_root) and same(sem_seg_root, layout.sem_seg_root)


def check_dataset_prepared(name: str) -> None:
    """Raise a one-line error if ``name`` is not registered, or not (completely) prepared."""
    if name not in DatasetCatalog.list():
        raise ClearCLIPError(f"dataset {name!r} is not registered; registered: {', '.join(sorted(DatasetCatalog.list()))}")
    meta = MetadataCatalog.get(name)
    for folder in (meta.get("image_root"), meta.get("sem_seg_root")):
        if folder and not os.path.isdir(folder):
            raise ClearCLIPError(_missing_folder_message(name, folder, meta.get("prepare_command")))
    if name in _CHECKED_DATASETS:
        DatasetCatalog.get(name)  # checks that every image has its label map and the reverse


def _missing_folder_message(name: str, folder: str, prepare_command) -> str:
    fix = f"run: {prepare_command}" if prepare_command else "see datasets/README.md"
    return f"dataset {name}: folder {folder} does not exist (DETECTRON2_DATASETS={datasets_root()}); {fix}"


def files_by_stem(root: str, suffix: str, subfolders: bool = False) -> Dict[str, str]:
    """``{stem: path}`` of the files in ``root`` (or, with ``subfolders``, in its subfolders)
    ending with ``suffix``; stems include the subfolder; hidden files and folders are left out."""
    folders = [""]
    if subfolders:
        folders = sorted(entry.name for entry in os.scandir(root) if entry.is_dir() and not entry.name.startswith("."))
    files = {}
    for folder in folders:
        with os.scandir(os.path.join(root, folder)) as entries:
            for entry in entries:
                if entry.name.endswith(suffix) and not entry.name.startswith(".") and entry.is_file():
                    files[os.path.join(folder, entry.name[: -len(suffix)])] = entry.path
    return files


def read_id_list(path: str, what: str, fix: str) -> List[str]:
    """The ids of an image list (the first word of each non-empty line); ``what`` and ``fix``
    describe the file and the remedy in errors."""
    try:
        with open(path, encoding="utf-8") as f:
            ids = [line.split()[0] for line in f if line.strip()]
    except FileNotFoundError as e:
        raise ClearCLIPError(f"{what} {path} does not exist; {fix}") from e
    if not ids:
        raise ClearCLIPError(f"{what} {path} is empty; {fix}")
    return ids


def _examples(stems: Sequence[str], suffix: str) -> str:
    shown = ", ".join(stem + suffix for stem in stems[:_SHOWN_FILES])
    return shown + (", ..." if len(stems) > _SHOWN_FILES else "")


def load_prepared_sem_seg(name: str, layout: SemSegLayout, prepare_command: str) -> List[dict]:
    """Records ``{"file_name", "sem_seg_file_name"}`` sorted by stem, after checking the pairing."""
    for folder in (layout.image_root, layout.sem_seg_root):
        if not os.path.isdir(folder):
            raise ClearCLIPError(_missing_folder_message(name, folder, prepare_command))
    images = files_by_stem(layout.image_root, layout.image_suffix, layout.subfolders)
    labels = files_by_stem(layout.sem_seg_root, layout.label_suffix, layout.subfolders)
    if layout.image_list:
        stems = read_id_list(layout.image_list, f"dataset {name}: image list", f"run: {prepare_command}")
        no_image = [stem for stem in stems if stem not in images]
        if no_image:
            raise ClearCLIPError(
                f"dataset {name}: {len(no_image)} of the {len(stems)} images listed in {layout.image_list} are not "
                f"in {layout.image_root} ({_examples(no_image, layout.image_suffix)}); the image download is "
                "incomplete, see datasets/README.md"
            )
    else:
        stems = sorted(images)
        no_image = sorted(set(labels) - set(images))
        if no_image:
            raise ClearCLIPError(
                f"dataset {name}: {len(no_image)} label maps in {layout.sem_seg_root} have no image in "
                f"{layout.image_root} ({_examples(no_image, layout.label_suffix)}); the images are incomplete "
                "or the label maps belong to another split"
            )
    no_label = [stem for stem in stems if stem not in labels]
    if no_label:
        raise ClearCLIPError(
            f"dataset {name}: {len(no_label)} of the {len(stems)} images have no label map in {layout.sem_seg_root} "
            f"({_examples(no_label, layout.label_suffix)}); the preparation is incomplete: run {prepare_command}"
        )
    if not stems:
        raise ClearCLIPError(
            f"dataset {name}: no *{layout.image_suffix} images with *{layout.label_suffix} label maps in "
            f"{layout.image_root} / {layout.sem_seg_root}; run {prepare_command}"
        )
    return [{"file_name": images[stem], "sem_seg_file_name": labels[stem]} for stem in stems]


def register_benchmark(key: str, image_root: str, sem_seg_root: str, name: Optional[str] = None, **kwargs) -> None:
    """Register a benchmark of :data:`~clearclip_d2.data.benchmarks.BENCHMARKS` with its class list,
    preparation command and reference background threshold (``clearclip_prob_threshold``);
    ``name``: another split of it (default: the benchmark's own dataset name)."""
    from ..benchmarks import get_benchmark

    benchmark = get_benchmark(key)
    register_sem_seg_dataset(
        name or benchmark.dataset_name,
        image_root=image_root,
        sem_seg_root=sem_seg_root,
        stuff_classes=class_entries(benchmark.class_names_file),
        prepare_command=benchmark.prepare_command,
        clearclip_prob_threshold=benchmark.prob_threshold,
        **kwargs,
    )
