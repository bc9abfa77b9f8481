"""The evaluation benchmarks: dataset name, class list, reference settings, config, paper numbers.

One row per benchmark, in the order of the paper's tables (the five without a background
class, the three with one), then the two large-vocabulary sets that go beyond the paper.
The dataset registrations, ``tools/reproduce_table.py`` and the tests read this table; the
numbers themselves live in :mod:`clearclip_d2.constants`.
"""

import os
from dataclasses import dataclass
from typing import Optional, Tuple

from .. import constants
from ..utils.errors import ClearCLIPError

ARCHITECTURES = ("ViT-B-16", "ViT-L-14")
# Folder (relative to ``configs/``) of each architecture's benchmark configs.
CONFIG_SUBDIRS = {"ViT-B-16": "", "ViT-L-14": "vit_l14"}


@dataclass(frozen=True)
class Benchmark:
    key: str  # short name: class-list stem, config name, threshold key
    title: str  # as in the paper's tables
    dataset_name: str  # the registered Detectron2 dataset (its val split)
    num_classes: int
    class_list: str  # stem of the bundled class-names file (resources/class_names/<class_list>.txt)
    config_name: str  # file name under configs/ (and configs/vit_l14/ where the paper has ViT-L/14)
    prepare_command: str  # the command that prepares it under $DETECTRON2_DATASETS

    @property
    def class_names_file(self) -> str:
        return constants.class_names_file(self.class_list)

    @property
    def prob_threshold(self) -> float:
        return constants.REFERENCE_PROB_THRESHOLDS[self.key]

    @property
    def slide_window(self) -> Tuple[int, int]:
        """(crop, stride) of the reference's sliding window, in pixels of the resized image."""
        return constants.REFERENCE_SLIDE_WINDOWS.get(self.key, (constants.SLIDE_CROP, constants.SLIDE_STRIDE))

    def paper_miou(self, architecture: str = "ViT-B-16") -> Optional[float]:
        """The paper's mIoU (%) for this benchmark, or None where the paper has no number."""
        return constants.PAPER_MIOU.get(architecture, {}).get(self.key)

    def config_path(self, architecture: str = "ViT-B-16", configs_dir: str = "configs") -> Optional[str]:
        """``configs/[vit_l14/]<config_name>``, or None where no config exists for the architecture."""
        if architecture not in CONFIG_SUBDIRS:
            raise ClearCLIPError(f"unknown architecture {architecture!r}; choose one of {', '.join(ARCHITECTURES)}")
        if architecture != "ViT-B-16" and self.paper_miou(architecture) is None:
            return None
        return os.path.join(configs_dir, CONFIG_SUBDIRS[architecture], self.config_name)


BENCHMARKS: Tuple[Benchmark, ...] = (
    Benchmark("voc20", "VOC20", "voc_2012_val_20", 20, "voc20", "clearclip_voc20.yaml",
              "python datasets/prepare_voc.py"),
    Benchmark("context59", "Context59", "pascal_context_59_val", 59, "context59", "clearclip_context59.yaml",
              "python datasets/prepare_pascal_context.py"),
    Benchmark("coco_stuff", "COCO-Stuff", "coco_2017_val_stuff_sem_seg", 171, "coco_stuff", "clearclip_coco.yaml",
              "python datasets/prepare_coco_stuff.py"),
    Benchmark("cityscapes", "Cityscapes", "cityscapes_fine_sem_seg_val", 19, "city_scapes", "clearclip_cityscapes.yaml",
              "python datasets/prepare_cityscapes.py"),
    Benchmark("ade20k", "ADE20K", "ade20k_sem_seg_val", 150, "ade20k", "clearclip_ade20k.yaml",
              "python datasets/prepare_ade20k.py"),
    Benchmark("voc21", "VOC21", "voc_2012_val_21", 21, "voc21", "clearclip_voc21.yaml",
              "python datasets/prepare_voc.py"),
    Benchmark("context60", "Context60", "pascal_context_60_val", 60, "context60", "clearclip_context60.yaml",
              "python datasets/prepare_pascal_context.py"),
    Benchmark("coco_object", "COCO-Object", "coco_2017_val_object_sem_seg", 81, "coco_object", "clearclip_coco_object.yaml",
              "python datasets/prepare_coco_object.py"),
    Benchmark("ade20k_full", "ADE20K-847", "ade20k_full_sem_seg_val", 847, "ade20k_full", "clearclip_ade20k_full.yaml",
              "python datasets/prepare_ade20k_full.py"),
    Benchmark("context459", "Context459", "pascal_context_459_val", 459, "context459", "clearclip_context459.yaml",
              "python datasets/prepare_pascal_context.py"),
)


def get_benchmark(key: str) -> Benchmark:
    """The benchmark with this key (``voc20``, ..., see :data:`BENCHMARKS`)."""
    for benchmark in BENCHMARKS:
        if benchmark.key == key:
            return benchmark
    raise ClearCLIPError(f"unknown benchmark {key!r}; choose from {', '.join(b.key for b in BENCHMARKS)}")
