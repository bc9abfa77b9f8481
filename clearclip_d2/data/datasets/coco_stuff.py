"""COCO-Stuff-171 (``coco_2017_{train,val}_stuff_sem_seg``).

Layout under ``$DETECTRON2_DATASETS``::

    coco/val2017/*.jpg
    coco/stuffthingmaps_detectron2/val2017/*.png   # 0..170, 255 = ignore

made from the official stuffthingmaps by ``datasets/prepare_coco_stuff.py``.
"""

import os

from .common import datasets_root, register_benchmark


def register_coco_stuff(root: str) -> None:
    register_benchmark(
        "coco_stuff",
        image_root=os.path.join(root, "coco", "val2017"),
        sem_seg_root=os.path.join(root, "coco", "stuffthingmaps_detectron2", "val2017"),
    )
    register_benchmark(
        "coco_stuff",
        name="coco_2017_train_stuff_sem_seg",
        image_root=os.path.join(root, "coco", "train2017"),
        sem_seg_root=os.path.join(root, "coco", "stuffthingmaps_detectron2", "train2017"),
    )


register_coco_stuff(datasets_root())
