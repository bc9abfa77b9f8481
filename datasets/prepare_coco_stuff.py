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

import os
import sys
from typing import Optional, Sequence

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from clearclip_d2.constants import class_names_file  # noqa: E402
from clearclip_d2.data.preparation import converters  # noqa: E402
from clearclip_d2.data.preparation import label_maps as maps  # noqa: E402
from clearclip_d2.data.preparation import plumbing  # noqa: E402
from clearclip_d2.data.vocabulary import load_vocabulary_file  # noqa: E402
from clearclip_d2.utils.cli import exit_on_user_error  # noqa: E402
from clearclip_d2.utils.errors import ClearCLIPError  # noqa: E402,F401  (re-exported for callers)

PROGRAM = "prepare_coco_stuff.py"
SPLITS = ("train2017", "val2017")
OUTPUT_DIR = os.path.join("coco", "stuffthingmaps_detectron2")


def coco_stuff_id_map() -> np.ndarray:
    """Lookup table (256 uint8 entries): raw pixel value -> class index 0..170, else 255."""
    return maps.coco_stuff_lut().copy()


def convert_label(label: np.ndarray) -> np.ndarray:
    """Map a raw COCO-Stuff label map (uint8, values 0..181 or 255) to 0..170 / 255."""
    return maps.coco_stuff_lut()[label]


def check_class_list(class_names: Sequence[str]) -> None:
    """Check the mapping against the bundled class list: 171 names, anchors in place."""
    maps.check_class_anchors(class_names, maps.COCO_STUFF_NUM_CLASSES, maps.COCO_STUFF_ANCHORS, "COCO-Stuff")


def main(argv: Optional[Sequence[str]] = None) -> None:
    """Convert the requested splits; a user error ends the run with one line and status 2."""
    parser = plumbing.preparation_parser(
        PROGRAM,
        "Convert COCO-Stuff stuffthingmaps (ids 0..181) to the 171 contiguous classes "
        "(0..170, 255 = ignore) of coco_2017_{train,val}_stuff_sem_seg.",
        "coco/stuffthingmaps/",
        SPLITS,
        SPLITS,
    )
    args = parser.parse_args(argv)
    with exit_on_user_error(PROGRAM):
        check_class_list(load_vocabulary_file(class_names_file("coco_stuff")).class_names)
        converters.convert_coco(args, OUTPUT_DIR, maps.coco_stuff_lut())


if __name__ == "__main__":
    main()
