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

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from clearclip_d2.data.preparation.cli import prepare_ade20k  # noqa: E402

if __name__ == "__main__":
    prepare_ade20k()
