"""Tiny copies of the official benchmark downloads, and the labels they must become.

Each ``make_*`` writes a few raw files in the layout and format of the official download
under ``root`` and returns ``{dataset name: [Sample]}``: the image and the label map the
preparation must produce, computed here from the raw values with mappings written out
independently of the package (from the benchmarks' own documentation: VOC's class ids,
COCO-Stuff's unused ids, Cityscapes' labels.py, the PASCAL-Context ids of the 59 classes as
used by mmseg/detail-api, a few rows of MaskFormer's ADE20K-full table).
"""

import json
import os
from dataclasses import dataclass
from typing import Dict, List

import numpy as np
import scipy.io
from PIL import Image

from test_modeling_exactness import smooth_image

SIZES = [(40, 56), (50, 36)]


@dataclass
class Sample:
    image: str  # path of the image the registered dataset must list
    label: np.ndarray  # the prepared label map it must pair with
    ignore: int  # the dataset's ignore value


def blocky(shape, values, rng, block=8) -> np.ndarray:
    """A label map of ``block``-sized regions with values drawn from ``values``."""
    h, w = shape
    grid = rng.choice(np.asarray(values), size=(h // block + 1, w // block + 1))
    return np.kron(grid, np.ones((block, block), dtype=grid.dtype))[:h, :w]


def save_jpeg(path, image) -> str:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.fromarray(image).save(path, quality=95)
    return path


def save_png(path, array, mode=None) -> str:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.fromarray(array, mode=mode).save(path)
    return path


def lookup(raw: np.ndarray, mapping: Dict[int, int], default: int, dtype) -> np.ndarray:
    out = np.full(raw.shape, default, dtype=dtype)
    for value, target in mapping.items():
        out[raw == value] = target
    return out


# ---------------------------------------------------------------------------- PASCAL VOC 2012
VOC_VAL_IDS = ["2007_000033", "2007_000042"]


def voc_palette() -> List[int]:
    """The VOC colour map (bit-interleaved), as in the official palette PNGs."""
    palette = []
    for index in range(256):
        r = g = b = 0
        c = index
        for bit in range(8):
            r |= ((c >> 0) & 1) << (7 - bit)
            g |= ((c >> 1) & 1) << (7 - bit)
            b |= ((c >> 2) & 1) << (7 - bit)
            c >>= 3
        palette += [r, g, b]
    return palette


def make_voc(root, rng) -> Dict[str, List[Sample]]:
    voc = os.path.join(root, "VOCdevkit", "VOC2012")
    samples = {"voc_2012_val_20": [], "voc_2012_val_21": []}
    ids = VOC_VAL_IDS + ["2007_000032"]  # the last one is a training image: not in val.txt
    for index, (image_id, size) in enumerate(zip(ids, SIZES + SIZES[:1])):
        image = save_jpeg(os.path.join(voc, "JPEGImages", image_id + ".jpg"), smooth_image(*size, seed=10 + index))
        raw = blocky(size, [0, 0, 1, 5, 15, 20, 9], rng).astype(np.uint8)
        raw[:, :2] = 255  # object borders
        png = Image.fromarray(raw, mode="P")
        png.putpalette(voc_palette())
        os.makedirs(os.path.join(voc, "SegmentationClass"), exist_ok=True)
        png.save(os.path.join(voc, "SegmentationClass", image_id + ".png"))
        if image_id in VOC_VAL_IDS:
            voc20 = np.where((raw >= 1) & (raw <= 20), raw.astype(int) - 1, 255).astype(np.uint8)
            samples["voc_2012_val_20"].append(Sample(image, voc20, 255))
            samples["voc_2012_val_21"].append(Sample(image, raw.copy(), 255))
    os.makedirs(os.path.join(voc, "ImageSets", "Segmentation"), exist_ok=True)
    with open(os.path.join(voc, "ImageSets", "Segmentation", "val.txt"), "w") as f:
        f.write("\n".join(VOC_VAL_IDS) + "\n")
    return samples


# ---------------------------------------------------------------------------- PASCAL Context
# labels.txt ids of the 59 classes (mmseg's / detail-api's mapping); sorted they follow the
# alphabetical order of the 59 class names.
CONTEXT59_IDS = sorted([
    2, 259, 260, 415, 324, 9, 258, 144, 18, 19, 22, 23, 397, 25, 284, 158, 159, 416, 33, 162, 420, 454, 295,
    296, 427, 44, 45, 46, 308, 59, 440, 445, 31, 232, 65, 354, 424, 68, 326, 72, 458, 34, 207, 80, 355, 85,
    347, 220, 349, 360, 98, 187, 104, 105, 366, 189, 368, 113, 115,
])  # fmt: skip
CONTEXT_VAL_IDS = ["2008_000002", "2008_000003"]
CONTEXT_VAL_WITHOUT_MAT = "2008_000007"


def context_label_names() -> List[str]:
    """labels.txt's names: the bundled 459-class list written without spaces, as in the download."""
    path = os.path.join(os.path.dirname(os.path.dirname(__file__)), "clearclip_d2", "resources", "class_names",
                        "context459.txt")
    with open(path) as f:
        return [line.strip().replace(" ", "") for line in f if line.strip()]


def make_context(root, rng) -> Dict[str, List[Sample]]:
    voc2010 = os.path.join(root, "VOCdevkit", "VOC2010")
    samples = {"pascal_context_59_val": [], "pascal_context_60_val": [], "pascal_context_459_val": []}
    values = [0, 2, 9, 458, 459, 1, 100, 284, 397, 44]
    all_ids = CONTEXT_VAL_IDS + ["2008_000008"]  # a training image with a .mat
    for index, (image_id, size) in enumerate(zip(all_ids, SIZES + SIZES[:1])):
        image = save_jpeg(os.path.join(voc2010, "JPEGImages", image_id + ".jpg"), smooth_image(*size, seed=20 + index))
        raw = blocky(size, values, rng).astype(np.uint16)
        os.makedirs(os.path.join(voc2010, "trainval"), exist_ok=True)
        scipy.io.savemat(os.path.join(voc2010, "trainval", image_id + ".mat"), {"LabelMap": raw})
        if image_id in CONTEXT_VAL_IDS:
            pc59 = lookup(raw, {v: i for i, v in enumerate(CONTEXT59_IDS)}, 255, np.uint8)
            pc60 = lookup(raw, {v: i + 1 for i, v in enumerate(CONTEXT59_IDS)}, 0, np.uint8)
            pc459 = np.where(raw == 0, 65535, raw.astype(np.int64) - 1).astype(np.uint16)
            samples["pascal_context_59_val"].append(Sample(image, pc59, 255))
            samples["pascal_context_60_val"].append(Sample(image, pc60, 255))
            samples["pascal_context_459_val"].append(Sample(image, pc459, 65535))
    save_jpeg(os.path.join(voc2010, "JPEGImages", CONTEXT_VAL_WITHOUT_MAT + ".jpg"), smooth_image(30, 30, seed=29))
    os.makedirs(os.path.join(voc2010, "ImageSets", "Main"), exist_ok=True)
    with open(os.path.join(voc2010, "ImageSets", "Main", "val.txt"), "w") as f:
        f.write("\n".join(CONTEXT_VAL_IDS + [CONTEXT_VAL_WITHOUT_MAT]) + "\n")
    with open(os.path.join(voc2010, "labels.txt"), "w") as f:
        f.write("".join(f"{i}: {name}\n" for i, name in enumerate(context_label_names(), 1)))
    return samples


# ---------------------------------------------------------------------------- COCO
COCO_UNUSED = [11, 25, 28, 29, 44, 65, 67, 68, 70, 82, 90]  # 1-based ids 12, 26, ..., 91 minus one
COCO_IDS = ["000000000139", "000000000285"]


def coco_stuff_expected(raw: np.ndarray) -> np.ndarray:
    used = [v for v in range(182) if v not in COCO_UNUSED]
    return lookup(raw, {v: i for i, v in enumerate(used)}, 255, np.uint8)


def coco_object_expected(raw: np.ndarray) -> np.ndarray:
    things = [v for v in range(91) if v not in COCO_UNUSED]
    assert len(things) == 80
    return lookup(raw, {v: i + 1 for i, v in enumerate(things)}, 0, np.uint8)


def make_coco(root, rng) -> Dict[str, List[Sample]]:
    samples = {"coco_2017_val_stuff_sem_seg": [], "coco_2017_val_object_sem_seg": []}
    for index, (image_id, size) in enumerate(zip(COCO_IDS, SIZES)):
        image = save_jpeg(os.path.join(root, "coco", "val2017", image_id + ".jpg"), smooth_image(*size, seed=30 + index))
        raw = blocky(size, [0, 1, 89, 91, 100, 181, 255, 56], rng).astype(np.uint8)
        save_png(os.path.join(root, "coco", "stuffthingmaps", "val2017", image_id + ".png"), raw)
        samples["coco_2017_val_stuff_sem_seg"].append(Sample(image, coco_stuff_expected(raw), 255))
        samples["coco_2017_val_object_sem_seg"].append(Sample(image, coco_object_expected(raw), 255))
    return samples


# ---------------------------------------------------------------------------- Cityscapes
# label id -> train id of the 19 evaluated classes (cityscapesscripts/helpers/labels.py).
CITYSCAPES_TRAIN_IDS = {7: 0, 8: 1, 11: 2, 12: 3, 13: 4, 17: 5, 19: 6, 20: 7, 21: 8, 22: 9, 23: 10, 24: 11,
                        25: 12, 26: 13, 27: 14, 28: 15, 31: 16, 32: 17, 33: 18}
CITYSCAPES_FILES = [("frankfurt", "frankfurt_000000_000294"), ("lindau", "lindau_000001_000019")]


def make_cityscapes(root, rng) -> Dict[str, List[Sample]]:
    city = os.path.join(root, "cityscapes")
    samples = []
    for index, ((town, stem), size) in enumerate(zip(CITYSCAPES_FILES, [(32, 64), (24, 48)])):
        image = smooth_image(*size, seed=40 + index)
        image_path = save_png(os.path.join(city, "leftImg8bit", "val", town, stem + "_leftImg8bit.png"), image)
        raw = blocky(size, [0, 1, 7, 8, 11, 26, 33, 24, 4], rng).astype(np.uint8)
        gt = os.path.join(city, "gtFine", "val", town, stem)
        save_png(gt + "_gtFine_labelIds.png", raw)
        save_png(gt + "_gtFine_instanceIds.png", raw.astype(np.uint16) * 1000)
        save_png(gt + "_gtFine_color.png", np.zeros(size + (3,), np.uint8))
        with open(gt + "_gtFine_polygons.json", "w") as f:
            json.dump({"imgHeight": size[0], "imgWidth": size[1], "objects": []}, f)
        samples.append(Sample(image_path, lookup(raw, CITYSCAPES_TRAIN_IDS, 255, np.uint8), 255))
    return {"cityscapes_fine_sem_seg_val": samples}


# ---------------------------------------------------------------------------- ADE20K-150
def make_ade20k(root, rng) -> Dict[str, List[Sample]]:
    ade = os.path.join(root, "ADEChallengeData2016")
    samples = []
    for index, size in enumerate(SIZES):
        stem = f"ADE_val_{index + 1:08d}"
        image = save_jpeg(os.path.join(ade, "images", "validation", stem + ".jpg"), smooth_image(*size, seed=50 + index))
        raw = blocky(size, [0, 1, 2, 150, 75, 13], rng).astype(np.uint8)
        save_png(os.path.join(ade, "annotations", "validation", stem + ".png"), raw)
        samples.append(Sample(image, np.where(raw == 0, 255, raw.astype(int) - 1).astype(np.uint8), 255))
    return {"ade20k_sem_seg_val": samples}


# ---------------------------------------------------------------------------- ADE20K-full
# A few (ADE20K object id, train id) rows of MaskFormer's ADE20K_SEM_SEG_FULL_CATEGORIES.
ADE_FULL_ROWS = {2978: 0, 312: 1, 1831: 11, 1981: 130, 1974: 188, 1223: 268, 3148: 846}
ADE_FULL_OTHER_IDS = [0, 7, 5000]  # not among the 847 classes


def ade_full_seg_png(class_ids: np.ndarray, rng) -> np.ndarray:
    """An ADE20K ``_seg.png``: R // 10 = id // 256, G = id % 256, B = instance."""
    seg = np.zeros(class_ids.shape + (3,), dtype=np.uint8)
    seg[..., 0] = (class_ids // 256) * 10 + rng.integers(0, 10, class_ids.shape)
    seg[..., 1] = class_ids % 256
    seg[..., 2] = rng.integers(0, 256, class_ids.shape)
    return seg


def make_ade20k_full(root, rng) -> Dict[str, List[Sample]]:
    ade = os.path.join(root, "ADE20K_2021_17_01")
    samples = []
    scenes = ["cultural/apse__indoor", "home_or_hotel/bathroom"]
    for index, (scene, size) in enumerate(zip(scenes, SIZES)):
        stem = f"ADE_val_{index + 1:08d}"
        folder = os.path.join(ade, "images", "ADE", "validation", scene)
        photo = smooth_image(*size, seed=60 + index)
        if index == 1:  # a grayscale photo (ADE20K has some): prepared as RGB
            photo = photo.mean(axis=2).astype(np.uint8)
        save_jpeg(os.path.join(folder, stem + ".jpg"), photo)
        ids = blocky(size, list(ADE_FULL_ROWS) + ADE_FULL_OTHER_IDS, rng).astype(np.int64)
        save_png(os.path.join(folder, stem + "_seg.png"), ade_full_seg_png(ids, rng))
        save_png(os.path.join(folder, stem + "_parts_1.png"), np.zeros(size + (3,), np.uint8))
        with open(os.path.join(folder, stem + ".json"), "w") as f:
            json.dump({"annotation": {}}, f)
        image = os.path.join(ade, "images_detectron2", "validation", stem + ".jpg")
        samples.append(Sample(image, lookup(ids, ADE_FULL_ROWS, 65535, np.uint16), 65535))
    return {"ade20k_full_sem_seg_val": samples}


MAKERS = (make_voc, make_context, make_coco, make_cityscapes, make_ade20k, make_ade20k_full)
