"""ADE20K-150 (``ade20k_sem_seg_val``, 2,000 images) and ADE20K-full with 847 classes
(``ade20k_full_sem_seg_val``).

Detectron2 registers ``ade20k_sem_seg_val`` itself with the layout below; ClearCLIP adopts it
(see :mod:`.cityscapes`). Layout under ``$DETECTRON2_DATASETS``::

    ADEChallengeData2016/images/validation/*.jpg
    ADEChallengeData2016/annotations_detectron2/validation/*.png     # 0..149, 255 = other
    ADE20K_2021_17_01/images_detectron2/validation/*.jpg            # short side <= 512
    ADE20K_2021_17_01/annotations_detectron2/validation/*.tif       # uint16 0..846, 65535 = other

made by ``datasets/prepare_ade20k.py`` and ``datasets/prepare_ade20k_full.py``.
"""

import os

from .common import datasets_root, register_benchmark


def register_ade20k(root: str) -> None:
    challenge = os.path.join(root, "ADEChallengeData2016")
    register_benchmark(
        "ade20k",
        image_root=os.path.join(challenge, "images", "validation"),
        sem_seg_root=os.path.join(challenge, "annotations_detectron2", "validation"),
    )
    full = os.path.join(root, "ADE20K_2021_17_01")
    register_benchmark(
        "ade20k_full",
        image_root=os.path.join(full, "images_detectron2", "validation"),
        sem_seg_root=os.path.join(full, "annotations_detectron2", "validation"),
        gt_ext="tif",
        ignore_label=65535,
    )


register_ade20k(datasets_root())
