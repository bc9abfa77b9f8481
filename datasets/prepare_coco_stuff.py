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

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from clearclip_d2.data.preparation.cli import prepare_coco_stuff  # noqa: E402

if __name__ == "__main__":
    prepare_coco_stuff()
