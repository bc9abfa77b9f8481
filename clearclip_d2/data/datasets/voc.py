"""PASCAL VOC 2012 val (1,449 images) without (``voc_2012_val_20``) and with (``voc_2012_val_21``)
the background class.

Layout under ``$DETECTRON2_DATASETS``::

    VOCdevkit/VOC2012/JPEGImages/*.jpg
    VOCdevkit/VOC2012/ImageSets/Segmentation/val.txt          # the official val list
    VOCdevkit/VOC2012/annotations_detectron2/val/*.png        # 0..19; background, border 255
    VOCdevkit/VOC2012/annotations_detectron2_bg/val/*.png     # 0 = background, 1..20; border 255

made from the official ``SegmentationClass`` maps by ``datasets/prepare_voc.py``.
"""

import os

from .common import datasets_root, register_benchmark


def register_voc(root: str) -> None:
    voc = os.path.join(root, "VOCdevkit", "VOC2012")
    for key, labels in (("voc20", "annotations_detectron2"), ("voc21", "annotations_detectron2_bg")):
        register_benchmark(
            key,
            image_root=os.path.join(voc, "JPEGImages"),
            sem_seg_root=os.path.join(voc, labels, "val"),
            image_list=os.path.join(voc, "ImageSets", "Segmentation", "val.txt"),
        )


register_voc(datasets_root())
