"""Cityscapes val (500 images, 19 classes): ``cityscapes_fine_sem_seg_val``.

Detectron2 registers this name itself (``detectron2.data.datasets.builtin``) with the layout
below; ClearCLIP adopts that registration: Detectron2's metadata (``stuff_classes``,
``evaluator_type``, ...) stays, the reference class list goes to ``clearclip_classes`` (the
vocabulary) with the background threshold, and the loader is replaced by one that checks every
image has its ``labelTrainIds`` map. Layout under ``$DETECTRON2_DATASETS``::

    cityscapes/leftImg8bit/val/<city>/*_leftImg8bit.png
    cityscapes/gtFine/val/<city>/*_gtFine_labelTrainIds.png   # 0..18, 255 = ignore

made from the official ``*_gtFine_labelIds.png`` by ``datasets/prepare_cityscapes.py``.
"""

import os

from .common import datasets_root, register_benchmark


def register_cityscapes(root: str) -> None:
    register_benchmark(
        "cityscapes",
        image_root=os.path.join(root, "cityscapes", "leftImg8bit", "val"),
        sem_seg_root=os.path.join(root, "cityscapes", "gtFine", "val"),
        image_ext="_leftImg8bit.png",
        gt_ext="_gtFine_labelTrainIds.png",
        subfolders=True,
    )


register_cityscapes(datasets_root())
