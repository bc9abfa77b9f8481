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

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from clearclip_d2.data.preparation.cli import prepare_cityscapes  # noqa: E402

if __name__ == "__main__":
    prepare_cityscapes()
