"""PASCAL Context val (VOC2010 val, 5,105 images) with 59 classes (``pascal_context_59_val``),
59 + background (``pascal_context_60_val``) and all 459 classes (``pascal_context_459_val``).

Layout under ``$DETECTRON2_DATASETS``::

    VOCdevkit/VOC2010/JPEGImages/*.jpg
    VOCdevkit/VOC2010/annotations_detectron2/pascal_context_val.txt   # the images with a label
    VOCdevkit/VOC2010/annotations_detectron2/pc59_val/*.png    # 0..58, 255 = other/unlabeled
    VOCdevkit/VOC2010/annotations_detectron2/pc60_val/*.png    # 0 = background, 1..59
    VOCdevkit/VOC2010/annotations_detectron2/pc459_val/*.tif   # uint16 0..458, 65535 = unlabeled

made from the official ``trainval.tar.gz`` (``.mat`` label maps) by
``datasets/prepare_pascal_context.py``, which writes the image list last.
"""

import os

from .common import datasets_root, register_benchmark

IMAGE_LIST = "pascal_context_val.txt"


def register_pascal_context(root: str) -> None:
    voc2010 = os.path.join(root, "VOCdevkit", "VOC2010")
    labels = os.path.join(voc2010, "annotations_detectron2")
    for key, folder, gt_ext, ignore_label in (
        ("context59", "pc59_val", "png", 255),
        ("context60", "pc60_val", "png", 255),
        ("context459", "pc459_val", "tif", 65535),
    ):
        register_benchmark(
            key,
            image_root=os.path.join(voc2010, "JPEGImages"),
            sem_seg_root=os.path.join(labels, folder),
            gt_ext=gt_ext,
            ignore_label=ignore_label,
            image_list=os.path.join(labels, IMAGE_LIST),
        )


register_pascal_context(datasets_root())
