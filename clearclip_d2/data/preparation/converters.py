"""Per benchmark: which official files are converted into which outputs, and how.

Each ``*_tasks`` function lists the :class:`~.plumbing.ConversionTask` of the requested split
(``coco_tasks``: of each requested split), refusing a missing or empty download with the fix; the converters are module-level callables so that
worker processes can receive them.
"""

import os
from typing import List, Sequence, Tuple

import numpy as np

from ...utils.errors import ClearCLIPError
from ..class_lists import ade20k_full_categories
from ..datasets.common import files_by_stem, read_id_list
from ..datasets.pascal_context import IMAGE_LIST as CONTEXT_IMAGE_LIST
from ..vocabulary import load_vocabulary_file
from . import label_maps as maps
from . import plumbing
from .plumbing import ConversionTask, LookupConversion, OutputFile
from .sources import ADE20K, ADE20K_FULL, CITYSCAPES_GTFINE, COCO_STUFFTHINGMAPS, PASCAL_CONTEXT, VOC2010, VOC2012

# ---------------------------------------------------------------------------- COCO
COCO_SOURCE_DIR = COCO_STUFFTHINGMAPS.unpack_into


def coco_tasks(root: str, splits: Sequence[str], output_dir: str) -> List[Tuple[str, List[ConversionTask]]]:
    """``(split, tasks)`` for the requested splits of ``coco/stuffthingmaps`` (missing ones skipped)."""
    sources = [(split, os.path.join(root, COCO_SOURCE_DIR, split)) for split in splits]
    expected = os.path.join(root, COCO_SOURCE_DIR, splits[0] if len(splits) == 1 else "{" + ",".join(splits) + "}")
    fix = COCO_STUFFTHINGMAPS.hint(root)
    found = plumbing.available_splits(sources, f"no COCO-Stuff label maps: {expected} does not exist; {fix}")
    return [
        (split, plumbing.folder_tasks(dict(sources)[split], os.path.join(root, output_dir, split), ".png", ".png", fix))
        for split in found
    ]


def convert_coco(args, output_dir: str, lut: np.ndarray) -> None:
    """Convert the ``args.splits`` of ``coco/stuffthingmaps`` through ``lut`` into ``output_dir``."""
    conversion = LookupConversion((lut,), maps.COCO_RAW_VALID, maps.COCO_RAW_ALLOWED, maps.COCO_RAW_HINT)
    for split, tasks in coco_tasks(args.root, args.splits, output_dir):
        plumbing.convert_and_report(split, tasks, conversion, os.path.join(args.root, output_dir, split), args)


# ---------------------------------------------------------------------------- PASCAL VOC 2012
VOC_DIR = os.path.join("VOCdevkit", "VOC2012")
VOC_OUTPUTS = (("voc20", "annotations_detectron2"), ("voc21", "annotations_detectron2_bg"))
VOC_CONVERSIONS = {"voc20": maps.voc20_lut, "voc21": maps.voc21_lut}


def voc_output_dirs(root: str, split: str, variants: Sequence[str]) -> List[str]:
    """``annotations_detectron2[_bg]/<split>`` of each variant (voc20, voc21), in order."""
    folders = dict(VOC_OUTPUTS)
    return [os.path.join(root, VOC_DIR, folders[v], split) for v in variants]


def voc_tasks(root: str, split: str, variants: Sequence[str]) -> List[ConversionTask]:
    """One task per image of ``ImageSets/Segmentation/<split>.txt``: its ``SegmentationClass`` map
    -> ``annotations_detectron2[_bg]/<split>/<id>.png`` for each variant (voc20, voc21)."""
    voc = os.path.join(root, VOC_DIR)
    fix = VOC2012.hint(root)
    plumbing.require_dir(os.path.join(voc, "SegmentationClass"), fix)
    ids = read_id_list(os.path.join(voc, "ImageSets", "Segmentation", f"{split}.txt"), "image list", fix)
    outputs = voc_output_dirs(root, split, variants)
    return [
        ConversionTask(
            os.path.join(voc, "SegmentationClass", f"{image_id}.png"),
            tuple(os.path.join(folder, f"{image_id}.png") for folder in outputs),
        )
        for image_id in ids
    ]


def voc_conversion(variants: Sequence[str]) -> LookupConversion:
    luts = tuple(VOC_CONVERSIONS[v]() for v in variants)
    return LookupConversion(luts, maps.VOC_RAW_VALID, maps.VOC_RAW_ALLOWED, maps.VOC_RAW_HINT)


# ---------------------------------------------------------------------------- ADE20K-150
ADE20K_DIR = "ADEChallengeData2016"


def ade20k_output_dir(root: str, split: str) -> str:
    return os.path.join(root, ADE20K_DIR, "annotations_detectron2", split)


def ade20k_tasks(root: str, split: str) -> List[ConversionTask]:
    """``annotations/<split>/*.png`` -> ``annotations_detectron2/<split>/*.png``."""
    source = os.path.join(root, ADE20K_DIR, "annotations", split)
    fix = ADE20K.hint(root)
    plumbing.require_dir(source, fix)
    return plumbing.folder_tasks(source, ade20k_output_dir(root, split), ".png", ".png", fix)


ADE20K_CONVERSION = LookupConversion((maps.ade20k_lut(),), maps.ADE20K_RAW_VALID, maps.ADE20K_RAW_ALLOWED,
                                     maps.ADE20K_RAW_HINT)


# ---------------------------------------------------------------------------- Cityscapes
CITYSCAPES_GT_DIR = os.path.join("cityscapes", "gtFine")
CITYSCAPES_LABEL_IDS = "_gtFine_labelIds.png"
CITYSCAPES_TRAIN_IDS = "_gtFine_labelTrainIds.png"


def cityscapes_gt_dir(root: str, split: str) -> str:
    """``gtFine/<split>``: both the source and the output folder (outputs go beside their sources)."""
    return os.path.join(root, CITYSCAPES_GT_DIR, split)


def cityscapes_tasks(root: str, split: str) -> List[ConversionTask]:
    """``gtFine/<split>/<city>/*_gtFine_labelIds.png`` -> ``*_gtFine_labelTrainIds.png`` beside it."""
    source = cityscapes_gt_dir(root, split)
    fix = CITYSCAPES_GTFINE.hint(root)
    plumbing.require_dir(source, fix)
    return plumbing.folder_tasks(source, source, CITYSCAPES_LABEL_IDS, CITYSCAPES_TRAIN_IDS, fix, subfolders=True)


CITYSCAPES_CONVERSION = LookupConversion((maps.cityscapes_lut(),), maps.CITYSCAPES_RAW_VALID,
                                         maps.CITYSCAPES_RAW_ALLOWED, maps.CITYSCAPES_RAW_HINT)


# ---------------------------------------------------------------------------- PASCAL Context
CONTEXT_DIR = os.path.join("VOCdevkit", "VOC2010")
CONTEXT_OUTPUT_DIR = os.path.join(CONTEXT_DIR, "annotations_detectron2")
CONTEXT_VARIANTS = {"59": "pc59_val", "60": "pc60_val", "459": "pc459_val"}


def context_val_ids(root: str) -> Tuple[List[str], List[str]]:
    """(ids of VOC2010's ``ImageSets/Main/val.txt`` that have a ``trainval/<id>.mat``, those that have not)."""
    voc2010 = os.path.join(root, CONTEXT_DIR)
    val_list = os.path.join(voc2010, "ImageSets", "Main", "val.txt")
    ids = read_id_list(val_list, "VOC2010 val list", VOC2010.hint(root))
    mat_dir = os.path.join(voc2010, "trainval")
    plumbing.require_dir(mat_dir, PASCAL_CONTEXT.hint(root))
    available = set(files_by_stem(mat_dir, ".mat"))
    labelled = [i for i in ids if i in available]
    if not labelled:
        raise ClearCLIPError(f"no image of the VOC2010 val list has a label map in {mat_dir}; {PASCAL_CONTEXT.hint(root)}")
    return labelled, [i for i in ids if i not in available]


def context_labels(root: str) -> dict:
    path = os.path.join(root, CONTEXT_DIR, "labels.txt")
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except FileNotFoundError as e:
        raise ClearCLIPError(f"{path} does not exist; {PASCAL_CONTEXT.hint(root)}") from e
    return maps.parse_context_labels(text, path)


def context_output_dirs(root: str, variants: Sequence[str]) -> List[str]:
    """``annotations_detectron2/pc{59,60,459}_val`` of each variant, in order."""
    return [os.path.join(root, CONTEXT_OUTPUT_DIR, CONTEXT_VARIANTS[v]) for v in variants]


def context_tasks(root: str, ids: Sequence[str], variants: Sequence[str]) -> List[ConversionTask]:
    extension = {"59": ".png", "60": ".png", "459": ".tif"}
    outputs = list(zip(context_output_dirs(root, variants), (extension[v] for v in variants)))
    return [
        ConversionTask(
            os.path.join(root, CONTEXT_DIR, "trainval", f"{i}.mat"),
            tuple(os.path.join(folder, i + suffix) for folder, suffix in outputs),
        )
        for i in ids
    ]


def read_context_label_map(path: str) -> np.ndarray:
    """The ``LabelMap`` (HxW, ids 0..459) of a PASCAL-Context ``.mat`` file as uint16."""
    import scipy.io

    try:
        label = scipy.io.loadmat(path)["LabelMap"]
    except KeyError as e:
        raise ClearCLIPError(f"{path} has no LabelMap; {maps.CONTEXT_RAW_HINT}") from e
    except Exception as e:
        raise ClearCLIPError(f"cannot read {path}: {type(e).__name__}: {e}") from e
    if label.ndim != 2 or label.dtype.kind not in "ui":
        raise ClearCLIPError(f"{path}: LabelMap is {label.dtype} {label.shape}, expected an HxW integer map")
    if label.min() < 0 or label.max() > np.iinfo(np.uint16).max:
        raise ClearCLIPError(f"{path}: LabelMap values {label.min()}..{label.max()} are outside 0..459")
    return label.astype(np.uint16)


class ContextConversion:
    """``.mat`` LabelMap -> the requested variants: 59 / 60 classes (PNG), 459 classes (uint16 TIFF)."""

    def __init__(self, variants: Sequence[str], subset_ids: Sequence[int]):
        self.variants = tuple(variants)
        self.luts = {"59": maps.context59_lut(subset_ids), "60": maps.context60_lut(subset_ids)}

    def __call__(self, task: ConversionTask) -> List[OutputFile]:
        label = read_context_label_map(task.source)
        plumbing.check_values(label, maps.CONTEXT_RAW_VALID, task.source, maps.CONTEXT_RAW_ALLOWED, maps.CONTEXT_RAW_HINT)
        outputs = []
        for variant, path in zip(self.variants, task.outputs):
            if variant == "459":
                outputs.append(plumbing.tiff16_output(path, maps.context459_labels(label)))
            else:
                outputs.append(plumbing.png_output(path, self.luts[variant][label]))
        return outputs


def context59_subset_ids(root: str) -> List[int]:
    """labels.txt ids of the 59 classes, in the order of the bundled context59 class list."""
    from ...constants import class_names_file

    names = load_vocabulary_file(class_names_file("context59")).class_names
    context60 = load_vocabulary_file(class_names_file("context60")).class_names
    if context60[1:] != names or context60[0] != "background":
        raise ClearCLIPError("the bundled context60 class list is not background + the context59 classes")
    return maps.context_subset_ids(context_labels(root), names, os.path.join(root, CONTEXT_DIR, "labels.txt"))


def write_context_image_list(root: str, ids: Sequence[str], force: bool) -> str:
    path = os.path.join(root, CONTEXT_OUTPUT_DIR, CONTEXT_IMAGE_LIST)
    data = "".join(f"{i}\n" for i in ids).encode()
    return plumbing.write_output(OutputFile(path, data), "the VOC2010 val list", force)


# ---------------------------------------------------------------------------- ADE20K-full
ADE_FULL_DIR = "ADE20K_2021_17_01"


def ade20k_full_tasks(root: str, split: str) -> List[ConversionTask]:
    """Every ``images/ADE/<split>/**/ADE_<val|train>_*.jpg`` with its ``_seg.png`` ->
    ``images_detectron2/<split>/<name>.jpg`` and ``annotations_detectron2/<split>/<name>.tif``."""
    source = os.path.join(root, ADE_FULL_DIR, "images", "ADE", split)
    fix = ADE20K_FULL.hint(root)
    plumbing.require_dir(source, fix)
    prefix = "ADE_val_" if split == "validation" else "ADE_train_"
    images = {}
    for folder, _, names in sorted(os.walk(source)):
        for name in sorted(names):
            if name.startswith(prefix) and name.endswith(".jpg"):
                if name in images:
                    raise ClearCLIPError(f"{name} is in both {images[name]} and {folder}; each image may appear once")
                images[name] = folder
    if not images:
        raise ClearCLIPError(f"{os.path.join(source, '')} holds no {prefix}*.jpg images; {fix}")
    out = os.path.join(root, ADE_FULL_DIR)
    tasks = []
    for name, folder in sorted(images.items()):
        stem = name[: -len(".jpg")]
        seg = os.path.join(folder, stem + "_seg.png")
        if not os.path.isfile(seg):
            raise ClearCLIPError(f"image {os.path.join(folder, name)} has no segmentation {seg}; {fix}")
        tasks.append(
            ConversionTask(
                seg,
                (os.path.join(out, "images_detectron2", split, name),
                 os.path.join(out, "annotations_detectron2", split, stem + ".tif")),
                inputs=(os.path.join(folder, name),),
            )
        )
    return tasks


def read_ade_segmentation(path: str) -> np.ndarray:
    """An ADE20K ``*_seg.png`` as HxWx3 uint8 (R, G encode the object class)."""
    seg, mode = plumbing.read_array(path, "segmentation")
    if seg.ndim != 3 or seg.shape[2] != 3 or seg.dtype != np.uint8:
        raise ClearCLIPError(f"segmentation {path} is not an 8-bit RGB image (PIL mode {mode}); is it an ADE20K *_seg.png?")
    return seg


def convert_ade20k_full(task: ConversionTask) -> List[OutputFile]:
    """Photo and ``_seg.png`` -> shrunk JPEG photo and uint16 TIFF of train ids (65535 = other)."""
    (image_path,) = task.inputs
    seg = read_ade_segmentation(task.source)
    image = plumbing.read_rgb_image(image_path)
    if image.shape[:2] != seg.shape[:2]:
        raise ClearCLIPError(
            f"image {image_path} is {image.shape[1]}x{image.shape[0]} but its segmentation {task.source} "
            f"is {seg.shape[1]}x{seg.shape[0]}"
        )
    image, labels = maps.ade20k_full_resize(image, maps.ade20k_full_labels(seg))
    image_out, label_out = task.outputs
    return [plumbing.jpeg_output(image_out, image), plumbing.tiff16_output(label_out, labels)]


def check_ade20k_full_class_list() -> None:
    """The bundled ade20k_full class list must have one entry per category of the table."""
    from ...constants import class_names_file

    names = load_vocabulary_file(class_names_file("ade20k_full")).classes
    if len(names) != len(ade20k_full_categories()):
        raise ClearCLIPError(f"the ade20k_full class list has {len(names)} classes, the category table {len(ade20k_full_categories())}")
