"""COCO-Object (``coco_2017_val_object_sem_seg``): the 80 thing classes of COCO-Stuff, all else background.

Layout under ``$DETECTRON2_DATASETS``::

    coco/val2017/*.jpg
    coco/objectmaps_detectron2/val2017/*.png   # 0 = background, 1..80 the thing classes

made from the official stuffthingmaps by ``datasets/prepare_coco_object.py``.
"""

import os

from .common import datasets_root, register_benchmark


def register_coco_object(root: str) -> None:
    register_benchmark(
        "coco_object",
        image_root=os.path.join(root, "coco", "val2017"),
        sem_seg_root=os.path.join(root, "coco", "objectmaps_detectron2", "val2017"),
    )


register_coco_object(datasets_root())
