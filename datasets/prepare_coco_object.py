#!/usr/bin/env python
"""Make COCO-Object label maps (80 thing classes + background) from the COCO-Stuff stuffthingmaps.

Input, from ``stuffthingmaps_trainval2017.zip`` unpacked under ``$DETECTRON2_DATASETS``::

    coco/stuffthingmaps/val2017/*.png   # COCO-Stuff id - 1 (0..181), 255 = unlabeled

Output, read by the ``coco_2017_val_object_sem_seg`` dataset::

    coco/objectmaps_detectron2/val2017/*.png   # 0 = background, 1..80 the thing classes

The 80 thing classes of COCO-Stuff (raw values 0..90 less the 11 unused ids) become 1..80 in
their order (``person`` = 1, ..., ``toothbrush`` = 80); stuff classes and unlabeled pixels
become background (0), as in the COCO-Object of GroupViT/SCLIP/ClearCLIP. Usage::

    python datasets/prepare_coco_object.py [--root DIR] [--splits val2017 train2017] [--workers N] [--force]
"""

import os
import sys
from typing import Optional, Sequence

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from clearclip_d2.constants import class_names_file  # noqa: E402
from clearclip_d2.data.preparation import converters, plumbing  # noqa: E402
from clearclip_d2.data.preparation import label_maps as maps  # noqa: E402
from clearclip_d2.data.vocabulary import load_vocabulary_file  # noqa: E402
from clearclip_d2.utils.cli import exit_on_user_error  # noqa: E402

PROGRAM = "prepare_coco_object.py"
SPLITS = ("train2017", "val2017")
OUTPUT_DIR = os.path.join("coco", "objectmaps_detectron2")


def main(argv: Optional[Sequence[str]] = None) -> None:
    parser = plumbing.preparation_parser(
        PROGRAM,
        "Make COCO-Object label maps (0 = background, 1..80 things) of coco_2017_val_object_sem_seg "
        "from COCO-Stuff stuffthingmaps.",
        "coco/stuffthingmaps/",
        SPLITS,
        ["val2017"],
    )
    args = parser.parse_args(argv)
    with exit_on_user_error(PROGRAM):
        names = load_vocabulary_file(class_names_file("coco_object")).class_names
        maps.check_class_anchors(names, maps.COCO_NUM_THINGS + 1, maps.COCO_OBJECT_ANCHORS, "COCO-Object")
        converters.convert_coco(args, OUTPUT_DIR, maps.coco_object_lut())


if __name__ == "__main__":
    main()
