#!/usr/bin/env python
"""Make the PASCAL Context 59-, 60- and 459-class label maps from the official ``.mat`` files.

Input under ``$DETECTRON2_DATASETS``, from ``VOCtrainval_03-May-2010.tar`` (unpacked into the
root) and PASCAL-Context's ``trainval.tar.gz`` (unpacked into ``VOCdevkit/VOC2010``)::

    VOCdevkit/VOC2010/JPEGImages/*.jpg
    VOCdevkit/VOC2010/ImageSets/Main/val.txt     # VOC2010 val: the 5,105 PASCAL Context val images
    VOCdevkit/VOC2010/trainval/<id>.mat          # LabelMap: 0 = unlabeled, 1..459 (ids of labels.txt)
    VOCdevkit/VOC2010/labels.txt                 # "<id>: <name>" for the 459 labels

Output, read by ``pascal_context_{59,60,459}_val``::

    VOCdevkit/VOC2010/annotations_detectron2/pc59_val/<id>.png    # 0..58; other labels, unlabeled 255
    VOCdevkit/VOC2010/annotations_detectron2/pc60_val/<id>.png    # 1..59; other labels, unlabeled 0
    VOCdevkit/VOC2010/annotations_detectron2/pc459_val/<id>.tif   # uint16 0..458; unlabeled 65535
    VOCdevkit/VOC2010/annotations_detectron2/pascal_context_val.txt   # the ids, written last

The 59 classes are found in labels.txt by the names of the bundled class list
(``clearclip_d2/resources/class_names/context59.txt``), in that order. Usage::

    python datasets/prepare_pascal_context.py [--root DIR] [--variants 59 60 459] [--workers N] [--force]
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from clearclip_d2.data.preparation.cli import prepare_pascal_context  # noqa: E402

if __name__ == "__main__":
    prepare_pascal_context()
