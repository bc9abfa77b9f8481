#!/usr/bin/env python
"""Make ADE20K-full (847 classes) images and uint16 label maps from the official ADE20K_2021_17_01 release.

Input, from ``ADE20K_2021_17_01.zip`` unpacked under ``$DETECTRON2_DATASETS``::

    ADE20K_2021_17_01/images/ADE/validation/<scene>/.../ADE_val_<n>.jpg
    ADE20K_2021_17_01/images/ADE/validation/<scene>/.../ADE_val_<n>_seg.png   # class = (R // 10) * 256 + G

Output, read by ``ade20k_full_sem_seg_val``::

    ADE20K_2021_17_01/images_detectron2/validation/ADE_val_<n>.jpg          # short side shrunk to <= 512
    ADE20K_2021_17_01/annotations_detectron2/validation/ADE_val_<n>.tif     # uint16 0..846, 65535 = other

As the Detectron2 projects (MaskFormer, CAT-Seg, SAN, FC-CLIP) prepare it: images whose short
side exceeds 512 are shrunk to 512 (photo bilinear, labels nearest, long side rounded), the
847 classes are those of ``clearclip_d2/resources/ade20k_full_categories.tsv`` (every other
object class is 65535), photos are re-encoded as JPEG with Pillow's defaults. The images are
found by walking ``images/ADE/<split>`` (the release's index_ade20k.pkl lists the same files).
Usage::

    python datasets/prepare_ade20k_full.py [--root DIR] [--splits validation training] [--workers N] [--force]
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from clearclip_d2.data.preparation.cli import prepare_ade20k_full  # noqa: E402

if __name__ == "__main__":
    prepare_ade20k_full()
