#!/usr/bin/env python
"""Make the ADE20K-150 label maps from the official ``ADEChallengeData2016`` annotations.

Input, from ``ADEChallengeData2016.zip`` unpacked under ``$DETECTRON2_DATASETS``::

    ADEChallengeData2016/images/validation/*.jpg
    ADEChallengeData2016/annotations/validation/*.png    # 0 = other, 1..150

Output, read by ``ade20k_sem_seg_val`` (Detectron2's registration, adopted by ClearCLIP)::

    ADEChallengeData2016/annotations_detectron2/validation/*.png   # 0..149, 255 = other

Usage::

    python datasets/prepare_ade20k.py [--root DIR] [--splits validation training] [--workers N] [--force]
"""

import os
import sys
from typing import Optional, Sequence

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from clearclip_d2.data.preparation import converters, plumbing  # noqa: E402
from clearclip_d2.utils.cli import exit_on_user_error  # noqa: E402

PROGRAM = "prepare_ade20k.py"
SPLITS = ("training", "validation")


def main(argv: Optional[Sequence[str]] = None) -> None:
    parser = plumbing.preparation_parser(
        PROGRAM, "Make the 0..149 label maps of ade20k_sem_seg_val from ADEChallengeData2016.", "ADEChallengeData2016/",
        SPLITS, ["validation"],
    )
    args = parser.parse_args(argv)
    with exit_on_user_error(PROGRAM):
        for split in args.splits:
            plumbing.convert_and_report(split, converters.ade20k_tasks(args.root, split), converters.ADE20K_CONVERSION,
                                        converters.ade20k_output_dir(args.root, split), args)


if __name__ == "__main__":
    main()
