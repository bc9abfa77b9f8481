#!/usr/bin/env python
"""Make the Cityscapes ``*_gtFine_labelTrainIds.png`` (19 classes) from the official ``*_gtFine_labelIds.png``.

Input, from ``gtFine_trainvaltest.zip`` and ``leftImg8bit_trainvaltest.zip`` unpacked under
``$DETECTRON2_DATASETS/cityscapes``::

    cityscapes/leftImg8bit/val/<city>/*_leftImg8bit.png
    cityscapes/gtFine/val/<city>/*_gtFine_labelIds.png     # label ids 0..33

Output, beside the input, read by ``cityscapes_fine_sem_seg_val`` (Detectron2's registration,
adopted by ClearCLIP)::

    cityscapes/gtFine/val/<city>/*_gtFine_labelTrainIds.png   # train ids 0..18, 255 = ignore

The label-id -> train-id table is Cityscapes' own (cityscapesscripts' ``labels.py``), written
out in ``clearclip_d2/data/preparation/label_maps.py``; the result equals cityscapesscripts'
``createTrainIdLabelImgs`` for the 19 classes. Usage::

    python datasets/prepare_cityscapes.py [--root DIR] [--splits val train] [--workers N] [--force]
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

PROGRAM = "prepare_cityscapes.py"
SPLITS = ("train", "val")


def main(argv: Optional[Sequence[str]] = None) -> None:
    parser = plumbing.preparation_parser(
        PROGRAM, "Make Cityscapes' labelTrainIds maps (0..18, 255 = ignore) from gtFine labelIds.", "cityscapes/gtFine/",
        SPLITS, ["val"],
    )
    args = parser.parse_args(argv)
    with exit_on_user_error(PROGRAM):
        names = load_vocabulary_file(class_names_file("city_scapes")).class_names
        maps.check_class_anchors(names, len(maps.CITYSCAPES_TRAIN_LABELS), maps.cityscapes_anchors(), "Cityscapes")
        for split in args.splits:
            plumbing.convert_and_report(split, converters.cityscapes_tasks(args.root, split),
                                        converters.CITYSCAPES_CONVERSION, converters.cityscapes_gt_dir(args.root, split), args)


if __name__ == "__main__":
    main()
