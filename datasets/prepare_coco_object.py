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

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from clearclip_d2.data.preparation.cli import prepare_coco_object  # noqa: E402

if __name__ == "__main__":
    prepare_coco_object()
