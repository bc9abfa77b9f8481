"""From the official label files to the label maps the registered datasets read.

Pure functions on arrays, one section per source download; the ``datasets/prepare_*.py``
scripts apply them to files. Every mapping is a lookup table indexed by the raw value.
"""

import functools
import re
from typing import Dict, List, Sequence, Tuple

import cv2
import numpy as np

from ...utils.errors import ClearCLIPError
from ..class_lists import ade20k_full_categories
from .plumbing import valid_values

IGNORE = 255
IGNORE_16BIT = 65535


def _read_only(table: np.ndarray) -> np.ndarray:
    table.setflags(write=False)
    return table


def _normalized(name: str) -> str:
    """Lower case without white space: "horse-drawn carriage" and "horse-drawncarriage" match."""
    return re.sub(r"\s+", "", name.lower())


def check_class_anchors(class_names: Sequence[str], count: int, anchors: Dict[int, str], what: str) -> None:
    """Check a bundled class list against a mapping: ``count`` classes, ``anchors[i]`` at index i."""
    if len(class_names) != count:
        raise ClearCLIPError(f"the {what} class list has {len(class_names)} classes, expected {count}")
    for index, name in anchors.items():
        if _normalized(class_names[index]) != _normalized(name):
            raise ClearCLIPError(
                f"the {what} label mapping and its class list disagree: class {index} is "
                f"{class_names[index]!r}, expected {name!r}"
            )


# ---------------------------------------------------------------------------- COCO (stuffthingmaps)
COCO_NUM_RAW_IDS = 182  # COCO-Stuff ids 1..182, stored as 0..181
COCO_STUFF_NUM_CLASSES = 171
COCO_NUM_THINGS = 80
# 0-based pixel values of the 11 thing ids COCO never used (1-based ids 12, 26, 29, 30, 45,
# 66, 68, 69, 71, 83, 91).
COCO_UNUSED_RAW_IDS = (11, 25, 28, 29, 44, 65, 67, 68, 70, 82, 90)
COCO_RAW_VALID = valid_values(np.uint8, (0, COCO_NUM_RAW_IDS - 1), (IGNORE, IGNORE))
COCO_RAW_ALLOWED = "0..181 and 255"
COCO_RAW_HINT = "is it an official COCO-Stuff stuffthingmap?"
# class index -> name that pin the mappings to the bundled class lists.
COCO_STUFF_ANCHORS = {0: "person", 80: "banner", 170: "wood"}
COCO_OBJECT_ANCHORS = {0: "background", 1: "person", 80: "toothbrush"}


def coco_used_raw_ids() -> List[int]:
    """The 171 raw pixel values that are COCO-Stuff classes, in increasing order."""
    return [raw for raw in range(COCO_NUM_RAW_IDS) if raw not in COCO_UNUSED_RAW_IDS]


@functools.lru_cache(maxsize=None)
def coco_stuff_lut() -> np.ndarray:
    """Raw value -> COCO-Stuff class 0..170, else 255 (256 uint8 entries, read-only)."""
    used = coco_used_raw_ids()
    if len(used) != COCO_STUFF_NUM_CLASSES:
        raise RuntimeError(f"COCO-Stuff mapping has {len(used)} classes, expected {COCO_STUFF_NUM_CLASSES}")
    lut = np.full(256, IGNORE, dtype=np.uint8)
    lut[used] = np.arange(COCO_STUFF_NUM_CLASSES, dtype=np.uint8)
    return _read_only(lut)


@functools.lru_cache(maxsize=None)
def coco_object_lut() -> np.ndarray:
    """Raw value -> COCO-Object class: the 80 things (COCO-Stuff classes 0..79) -> 1..80, every
    other value (stuff, unlabeled 255, unused ids) -> 0 = background (256 uint8 entries)."""
    stuff = coco_stuff_lut().astype(np.int64)
    lut = np.where(stuff < COCO_NUM_THINGS, stuff + 1, 0).astype(np.uint8)
    return _read_only(lut)


# ---------------------------------------------------------------------------- PASCAL VOC 2012
VOC_NUM_CLASSES = 20
VOC_RAW_VALID = valid_values(np.uint8, (0, VOC_NUM_CLASSES), (IGNORE, IGNORE))
VOC_RAW_ALLOWED = "0..20 and 255"
VOC_RAW_HINT = "is it an official VOC2012 SegmentationClass map (palette PNG)?"


@functools.lru_cache(maxsize=None)
def zero_ignored_lut(num_classes: int) -> np.ndarray:
    """Raw 1..num_classes -> 0..num_classes-1; 0 and everything else -> 255 (256 uint8 entries)."""
    lut = np.full(256, IGNORE, dtype=np.uint8)
    lut[1 : num_classes + 1] = np.arange(num_classes, dtype=np.uint8)
    return _read_only(lut)


def voc20_lut() -> np.ndarray:
    """Raw 1..20 -> 0..19; background 0 and border 255 -> 255."""
    return zero_ignored_lut(VOC_NUM_CLASSES)


@functools.lru_cache(maxsize=None)
def voc21_lut() -> np.ndarray:
    """Raw 0..20 kept (0 = background); border 255 kept."""
    lut = np.full(256, IGNORE, dtype=np.uint8)
    lut[: VOC_NUM_CLASSES + 1] = np.arange(VOC_NUM_CLASSES + 1, dtype=np.uint8)
    return _read_only(lut)


# ---------------------------------------------------------------------------- ADE20K-150
ADE20K_NUM_CLASSES = 150
ADE20K_RAW_VALID = valid_values(np.uint8, (0, ADE20K_NUM_CLASSES))
ADE20K_RAW_ALLOWED = "0..150"
ADE20K_RAW_HINT = "is it an official ADEChallengeData2016 annotation?"


def ade20k_lut() -> np.ndarray:
    """Raw 1..150 -> 0..149; 0 ("other") -> 255."""
    return zero_ignored_lut(ADE20K_NUM_CLASSES)


# ---------------------------------------------------------------------------- Cityscapes
# (label id, train id, name) of the 19 evaluated classes of Cityscapes' label definition
# (cityscapesscripts/helpers/labels.py); every other label id 0..33 is ignored (255).
CITYSCAPES_TRAIN_LABELS = (
    (7, 0, "road"), (8, 1, "sidewalk"), (11, 2, "building"), (12, 3, "wall"), (13, 4, "fence"),
    (17, 5, "pole"), (19, 6, "traffic light"), (20, 7, "traffic sign"), (21, 8, "vegetation"),
    (22, 9, "terrain"), (23, 10, "sky"), (24, 11, "person"), (25, 12, "rider"), (26, 13, "car"),
    (27, 14, "truck"), (28, 15, "bus"), (31, 16, "train"), (32, 17, "motorcycle"), (33, 18, "bicycle"),
)  # fmt: skip
CITYSCAPES_NUM_LABEL_IDS = 34
CITYSCAPES_RAW_VALID = valid_values(np.uint8, (0, CITYSCAPES_NUM_LABEL_IDS - 1))
CITYSCAPES_RAW_ALLOWED = "0..33"
CITYSCAPES_RAW_HINT = "is it an official Cityscapes *_gtFine_labelIds.png?"


@functools.lru_cache(maxsize=None)
def cityscapes_lut() -> np.ndarray:
    """Label id -> train id 0..18, else 255."""
    lut = np.full(256, IGNORE, dtype=np.uint8)
    for label_id, train_id, _ in CITYSCAPES_TRAIN_LABELS:
        lut[label_id] = train_id
    return _read_only(lut)


def cityscapes_anchors() -> Dict[int, str]:
    return {train_id: name for _, train_id, name in CITYSCAPES_TRAIN_LABELS}


# ---------------------------------------------------------------------------- PASCAL Context
CONTEXT_NUM_LABELS = 459
CONTEXT_RAW_VALID = valid_values(np.uint16, (0, CONTEXT_NUM_LABELS))
CONTEXT_RAW_ALLOWED = "0..459"
CONTEXT_RAW_HINT = "is it a LabelMap of PASCAL-Context's trainval.tar.gz?"


def parse_context_labels(text: str, path: str) -> Dict[int, str]:
    """``labels.txt`` of trainval.tar.gz (``"<id>: <name>"`` a line) -> {id: name}, ids 1..459."""
    labels = {}
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        match = re.fullmatch(r"\s*(\d+)\s*:\s*(.+?)\s*", line)
        if not match:
            raise ClearCLIPError(f"{path}, line {number}: expected '<id>: <name>', got {line.strip()!r}")
        labels[int(match.group(1))] = match.group(2)
    if sorted(labels) != list(range(1, CONTEXT_NUM_LABELS + 1)):
        raise ClearCLIPError(f"{path} must name the ids 1..{CONTEXT_NUM_LABELS}, found {len(labels)} ids")
    return labels


def context_subset_ids(labels: Dict[int, str], class_names: Sequence[str], path: str) -> List[int]:
    """The label ids (1..459) of ``class_names`` (matched by name, ignoring case and spaces)."""
    by_name = {_normalized(name): label_id for label_id, name in labels.items()}
    missing = [name for name in class_names if _normalized(name) not in by_name]
    if missing:
        raise ClearCLIPError(f"{path} has no label named {', '.join(repr(m) for m in missing)}")
    return [by_name[_normalized(name)] for name in class_names]


def context59_lut(subset_ids: Sequence[int]) -> np.ndarray:
    """Label id -> index 0..58 of the 59 classes, every other id and 0 (unlabeled) -> 255 (460 uint8 entries)."""
    lut = np.full(CONTEXT_NUM_LABELS + 1, IGNORE, dtype=np.uint8)
    lut[list(subset_ids)] = np.arange(len(subset_ids), dtype=np.uint8)
    return _read_only(lut)


def context60_lut(subset_ids: Sequence[int]) -> np.ndarray:
    """Label id -> 1..59 for the 59 classes, every other id and 0 -> 0 = background."""
    lut = np.zeros(CONTEXT_NUM_LABELS + 1, dtype=np.uint8)
    lut[list(subset_ids)] = np.arange(1, len(subset_ids) + 1, dtype=np.uint8)
    return _read_only(lut)


def context459_labels(label_map: np.ndarray) -> np.ndarray:
    """LabelMap ids 1..459 -> 0..458; 0 (unlabeled) -> 65535 (uint16)."""
    out = label_map.astype(np.int64) - 1
    out[label_map == 0] = IGNORE_16BIT
    return out.astype(np.uint16)


# ---------------------------------------------------------------------------- ADE20K-full
ADE_FULL_MAX_SHORT_SIDE = 512  # images and labels are shrunk to this short side, as the Detectron2 projects do


@functools.lru_cache(maxsize=None)
def ade20k_full_lut() -> np.ndarray:
    """ADE20K object class id ((R // 10) * 256 + G, 0..6655) -> train id 0..846, else 65535."""
    lut = np.full(26 * 256, IGNORE_16BIT, dtype=np.uint16)
    for category in ade20k_full_categories():
        lut[category.ade_id] = category.train_id
    return _read_only(lut)


def ade20k_full_class_ids(seg_rgb: np.ndarray) -> np.ndarray:
    """ADE20K object class ids of an HxWx3 uint8 ``*_seg.png``: ``(R // 10) * 256 + G``."""
    return (seg_rgb[..., 0].astype(np.int64) // 10) * 256 + seg_rgb[..., 1].astype(np.int64)


def ade20k_full_labels(seg_rgb: np.ndarray) -> np.ndarray:
    """HxW uint16 train ids (65535 = not one of the 847 classes) of a ``*_seg.png``."""
    return ade20k_full_lut()[ade20k_full_class_ids(seg_rgb)]


def ade20k_full_size(height: int, width: int) -> Tuple[int, int]:
    """(height, width) after shrinking the short side to 512 (sizes with a short side <= 512 stay);
    the long side is ``round(long / short * 512)`` (Python's round, as the reference script)."""
    short = min(height, width)
    if short <= ADE_FULL_MAX_SHORT_SIDE:
        return height, width
    if width >= height:
        return ADE_FULL_MAX_SHORT_SIDE, round(width / float(height) * ADE_FULL_MAX_SHORT_SIDE)
    return round(height / float(width) * ADE_FULL_MAX_SHORT_SIDE), ADE_FULL_MAX_SHORT_SIDE


def ade20k_full_resize(image_rgb: np.ndarray, labels: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """Shrink image (bilinear) and labels (nearest) to :func:`ade20k_full_size` with OpenCV."""
    height, width = ade20k_full_size(*labels.shape)
    if (height, width) == labels.shape:
        return image_rgb, labels
    image = cv2.resize(image_rgb, (width, height), interpolation=cv2.INTER_LINEAR)
    return image, cv2.resize(labels, (width, height), interpolation=cv2.INTER_NEAREST)
