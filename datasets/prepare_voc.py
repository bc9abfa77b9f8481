#!/usr/bin/env python
"""Make the VOC20 and VOC21 label maps from the official PASCAL VOC 2012 ``SegmentationClass`` maps.

Input, from ``VOCtrainval_11-May-2012.tar`` unpacked under ``$DETECTRON2_DATASETS``::

    VOCdevkit/VOC2012/ImageSets/Segmentation/val.txt    # 1,449 image ids
    VOCdevkit/VOC2012/SegmentationClass/<id>.png         # palette PNG: 0 background, 1..20, 255 border

Output, read by ``voc_2012_val_20`` and ``voc_2012_val_21``::

    VOCdevkit/VOC2012/annotations_detectron2/val/<id>.png      # 1..20 -> 0..19; background, border 255
    VOCdevkit/VOC2012/annotations_detectron2_bg/val/<id>.png   # 0..20 (0 = background); border 255

Usage::

    python datasets/prepare_voc.py [--root DIR] [--variants voc20 voc21] [--split val|train] [--workers N] [--force]
"""

import os
import sys
from typing import Optional, Sequence

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from clearclip_d2.data.preparation import converters, plumbing  # noqa: E402
from clearclip_d2.utils.cli import exit_on_user_error  # noqa: E402

PROGRAM = "prepare_voc.py"
VARIANTS = tuple(dict(converters.VOC_OUTPUTS))


def main(argv: Optional[Sequence[str]] = None) -> None:
    parser = plumbing.preparation_parser(
        PROGRAM,
        "Make the label maps of voc_2012_val_20 (no background) and voc_2012_val_21 (with background) "
        "from VOC2012's SegmentationClass maps.",
        "VOCdevkit/VOC2012/",
    )
    plumbing.add_list_option(parser, "--variants", VARIANTS, VARIANTS, "label sets to make")
    parser.add_argument("--split", choices=("val", "train"), default="val", help="image list (default: val)")
    args = parser.parse_args(argv)
    with exit_on_user_error(PROGRAM):
        variants = args.variants
        destinations = ", ".join(converters.voc_output_dirs(args.root, args.split, variants))
        plumbing.convert_and_report(args.split, converters.voc_tasks(args.root, args.split, variants),
                                    converters.voc_conversion(variants), destinations, args)


if __name__ == "__main__":
    main()
