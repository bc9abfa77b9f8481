"""COCO-Stuff-171 (``coco_2017_{train,val}_stuff_sem_seg``).

Layout under ``$DETECTRON2_DATASETS``::

    coco/val2017/*.jpg
    coco/stuffthingmaps_detectron2/val2017/*.png   # 0..170, 255 = ignore

made from the official stuffthingmaps by ``datasets/prepare_coco_stuff.py``.
"""

import os

from ...constants import class_names_file
from .common import class_entries, datasets_root, register_sem_seg_dataset

PREPARE_COMMAND = "python datasets/prepare_coco_stuff.py"


def register_coco_stuff(root: str) -> None:
    classes = class_entries(class_names_file("coco_stuff"))
    for split in ("train2017", "val2017"):
        register_sem_seg_dataset(
            f"coco_2017_{split[:-4]}_stuff_sem_seg",
            image_root=os.path.join(root, "coco", split),
            sem_seg_root=os.path.join(root, "coco", "stuffthingmaps_detectron2", split),
            stuff_classes=classes,
            prepare_command=PREPARE_COMMAND,
            clearclip_prob_threshold=0.0,
        )


register_coco_stuff(datasets_root())
