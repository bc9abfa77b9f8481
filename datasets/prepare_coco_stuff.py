#!/usr/bin/env python
"""Convert the official COCO-Stuff label maps to the 171 contiguous classes ClearCLIP uses.

Input, from ``stuffthingmaps_trainval2017.zip`` unpacked under ``$DETECTRON2_DATASETS``::

    coco/stuffthingmaps/{train2017,val2017}/*.png   # COCO-Stuff id - 1 (0..181), 255 = unlabeled

Output, read by the ``coco_2017_{train,val}_stuff_sem_seg`` datasets::

    coco/stuffthingmaps_detectron2/{train2017,val2017}/*.png   # 0..170, 255 = ignore

The 182 ids of COCO-Stuff leave 11 thing ids unused; the 171 used ids keep their order
(``person`` -> 0, ..., ``banner`` (91) -> 80, ..., ``wood`` (181) -> 170) and everything
else becomes 255. Usage::

    python datasets/prepare_coco_stuff.py [--root DIR] [--splits val2017] [--workers N] [--force]
"""

import argparse
import functools
import io
import multiprocessing as mp
import os
import sys
from typing import Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np
from PIL import Image
from tqdm import tqdm

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from clearclip_d2.constants import class_names_file  # noqa: E402
from clearclip_d2.data.datasets import datasets_root  # noqa: E402
from clearclip_d2.data.vocabulary import load_vocabulary_file  # noqa: E402
from clearclip_d2.utils.cli import exit_on_user_error  # noqa: E402
from clearclip_d2.utils.errors import ClearCLIPError, some_values  # noqa: E402
from clearclip_d2.utils.io import atomic_write  # noqa: E402

PROGRAM = "prepare_coco_stuff.py"
SPLITS = ("train2017", "val2017")
SOURCE_DIR = os.path.join("coco", "stuffthingmaps")
OUTPUT_DIR = os.path.join("coco", "stuffthingmaps_detectron2")
ZIP_NAME = "stuffthingmaps_trainval2017.zip"
ZIP_URL = f"http://calvin.inf.ed.ac.uk/wp-content/uploads/data/cocostuffdataset/{ZIP_NAME}"

NUM_RAW_IDS = 182  # COCO-Stuff ids 1..182, stored as 0..181
NUM_CLASSES = 171
IGNORE_LABEL = 255
# 0-based pixel values of the 11 thing ids COCO never used (1-based ids 12, 26, 29, 30, 45,
# 66, 68, 69, 71, 83, 91).
UNUSED_RAW_IDS = (11, 25, 28, 29, 44, 65, 67, 68, 70, 82, 90)
# (raw pixel value, class index, class name) that pin the mapping to the bundled class list.
CLASS_LIST_ANCHORS = ((0, 0, "person"), (91, 80, "banner"), (181, 170, "wood"))


def used_raw_ids() -> List[int]:
    """The 171 raw pixel values that are classes, in increasing order."""
    return [raw for raw in range(NUM_RAW_IDS) if raw not in UNUSED_RAW_IDS]


@functools.lru_cache(maxsize=None)
def _id_map() -> np.ndarray:
    """The lookup table, built once and read-only (see :func:`coco_stuff_id_map`)."""
    used = used_raw_ids()
    if len(used) != NUM_CLASSES:
        raise RuntimeError(f"COCO-Stuff mapping has {len(used)} classes, expected {NUM_CLASSES}")
    lut = np.full(256, IGNORE_LABEL, dtype=np.uint8)
    lut[used] = np.arange(NUM_CLASSES, dtype=np.uint8)
    lut.setflags(write=False)
    return lut


_id_map()  # fails at import unless exactly 171 ids are used


def coco_stuff_id_map() -> np.ndarray:
    """Lookup table (256 uint8 entries): raw pixel value -> class index 0..170, else 255."""
    return _id_map().copy()


def convert_label(label: np.ndarray) -> np.ndarray:
    """Map a raw COCO-Stuff label map (uint8, values 0..181 or 255) to 0..170 / 255."""
    return _id_map()[label]


def check_class_list(class_names: Sequence[str]) -> None:
    """Check the mapping against the bundled class list: 171 names, anchors in place."""
    if len(class_names) != NUM_CLASSES:
        raise ClearCLIPError(f"COCO-Stuff class list has {len(class_names)} classes, expected {NUM_CLASSES}")
    lut = _id_map()
    for raw, index, name in CLASS_LIST_ANCHORS:
        if lut[raw] != index or class_names[index] != name:
            raise ClearCLIPError(
                f"the COCO-Stuff id mapping and the class list disagree: raw id {raw} maps to {lut[raw]} "
                f"and class {index} is {class_names[index]!r}; expected {index} = {name!r}"
            )


def read_raw_label(path: str) -> np.ndarray:
    """Read an official label map as an HxW uint8 array, refusing anything else."""
    try:
        with Image.open(path) as image:
            mode = image.mode
            label = np.array(image)
    except Exception as e:  # PIL raises OSError, ValueError, SyntaxError, DecompressionBombError...
        raise ClearCLIPError(f"cannot read label map {path}: {type(e).__name__}: {e}") from e
    if label.ndim != 2 or label.dtype != np.uint8:
        raise ClearCLIPError(
            f"label map {path} is not a single-channel 8-bit image (PIL mode {mode}, shape {label.shape})"
        )
    return label


def check_raw_values(label: np.ndarray, path: str) -> None:
    """Refuse pixel values that are neither a COCO-Stuff id (0..181) nor 255."""
    bad = (label >= NUM_RAW_IDS) & (label != IGNORE_LABEL)
    if bad.any():
        raise ClearCLIPError(
            f"label map {path} has {int(bad.sum())} pixels with values outside 0..181 and 255 "
            f"(values {some_values(np.unique(label[bad]))}); is it an official COCO-Stuff stuffthingmap?"
        )


def encode_png(label: np.ndarray) -> bytes:
    """PNG bytes of an HxW uint8 label map (grayscale)."""
    buffer = io.BytesIO()
    Image.fromarray(label, mode="L").save(buffer, format="PNG")
    return buffer.getvalue()


def same_label(path: str, label: np.ndarray) -> bool:
    """True if ``path`` is a readable label map with exactly the pixels of ``label``."""
    try:
        with Image.open(path) as image:
            existing = np.array(image)
    except Exception:  # a corrupt output is a differing output
        return False
    return existing.dtype == label.dtype and np.array_equal(existing, label)


def convert_file(task: Tuple[str, str], force: bool = False) -> str:
    """Convert one label map ``(source, output)``; return ``"written"`` or ``"unchanged"``.

    An existing output with the same pixels is left alone; one with other pixels is refused
    unless ``force``.
    """
    source, output = task
    raw = read_raw_label(source)
    check_raw_values(raw, source)
    label = convert_label(raw)
    if os.path.exists(output):
        if same_label(output, label):
            return "unchanged"
        if not force:
            raise ClearCLIPError(
                f"output {output} exists and differs from the conversion of {source}; "
                "rerun with --force to overwrite it"
            )
    with atomic_write(output, "wb") as f:
        f.write(encode_png(label))
    return "written"


def split_tasks(root: str, split: str) -> List[Tuple[str, str]]:
    """(source, output) pairs of one split's label maps, sorted by file name."""
    source_dir = os.path.join(root, SOURCE_DIR, split)
    output_dir = os.path.join(root, OUTPUT_DIR, split)
    names = sorted(name for name in os.listdir(source_dir) if name.lower().endswith(".png"))
    if not names:
        raise ClearCLIPError(
            f"{source_dir} holds no *.png label maps; "
            f"unpack {ZIP_NAME} ({ZIP_URL}) into {os.path.join(root, SOURCE_DIR)}{os.sep}"
        )
    return [(os.path.join(source_dir, name), os.path.join(output_dir, name)) for name in names]


def available_splits(root: str, splits: Sequence[str]) -> List[str]:
    """The requested splits whose source folder exists; say which are skipped, fail if none."""
    found = []
    for split in splits:
        source_dir = os.path.join(root, SOURCE_DIR, split)
        if os.path.isdir(source_dir):
            found.append(split)
        else:
            print(f"skipping {split}: {source_dir} does not exist", flush=True)
    if not found:
        expected = os.path.join(root, SOURCE_DIR, splits[0] if len(splits) == 1 else "{" + ",".join(splits) + "}")
        raise ClearCLIPError(
            f"no COCO-Stuff label maps: {expected} does not exist; download {ZIP_NAME} from {ZIP_URL} "
            f"and unpack it into {os.path.join(root, SOURCE_DIR)}{os.sep}"
        )
    return found


def _outcomes(work, tasks: List[Tuple[str, str]], workers: int) -> Iterator[str]:
    """``work`` applied to each task, in this process or in a pool of ``workers``."""
    workers = min(workers, len(tasks))
    if workers <= 1:
        yield from map(work, tasks)
        return
    with mp.Pool(workers) as pool:
        yield from pool.imap_unordered(work, tasks, chunksize=16)


def convert_split(tasks: List[Tuple[str, str]], split: str, workers: int, force: bool) -> Dict[str, int]:
    """Convert one split's files (with a progress bar); return the count of each outcome."""
    counts = {"written": 0, "unchanged": 0}
    work = functools.partial(convert_file, force=force)
    with tqdm(total=len(tasks), desc=split, unit="file", disable=None) as bar:
        for outcome in _outcomes(work, tasks, workers):
            counts[outcome] += 1
            bar.update()
    return counts


def positive_int(text: str) -> int:
    """argparse type: an integer >= 1."""
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    """The command-line options (``argv`` defaults to ``sys.argv[1:]``)."""
    parser = argparse.ArgumentParser(
        prog=PROGRAM,
        description="Convert COCO-Stuff stuffthingmaps (ids 0..181) to the 171 contiguous classes "
        "(0..170, 255 = ignore) of coco_2017_{train,val}_stuff_sem_seg.",
    )
    parser.add_argument(
        "--root",
        default=datasets_root(),
        help="datasets root holding coco/stuffthingmaps/ "
        "(default: $DETECTRON2_DATASETS or ./datasets; now %(default)s)",
    )
    parser.add_argument(
        "--splits", nargs="+", choices=SPLITS, default=list(SPLITS), help="splits to convert (default: both)"
    )
    parser.add_argument(
        "--workers",
        type=positive_int,
        default=min(8, os.cpu_count() or 1),
        help="worker processes (default: min(8, CPU count) = %(default)s)",
    )
    parser.add_argument("--force", action="store_true", help="overwrite existing outputs that differ")
    return parser.parse_args(argv)


def main(argv: Optional[Sequence[str]] = None) -> None:
    """Convert the requested splits; a user error ends the run with one line and status 2."""
    args = parse_args(argv)
    with exit_on_user_error(PROGRAM):
        check_class_list(load_vocabulary_file(class_names_file("coco_stuff")).class_names)
        splits = list(dict.fromkeys(args.splits))
        for split in available_splits(args.root, splits):
            tasks = split_tasks(args.root, split)
            counts = convert_split(tasks, split, args.workers, args.force)
            output_dir = os.path.join(args.root, OUTPUT_DIR, split)
            print(f"{split}: {counts['written']} written, {counts['unchanged']} unchanged -> {output_dir}", flush=True)


if __name__ == "__main__":
    main()
