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

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from clearclip_d2.data.preparation.cli import prepare_voc  # noqa: E402

if __name__ == "__main__":
    prepare_voc()
