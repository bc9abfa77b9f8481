"""One-line refusals of inputs that gave silently wrong results or tracebacks (issue 12)."""

import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from conftest import REPO_ROOT, tiny_cfg
from clearclip_d2.utils.errors import ClearCLIPError


def register_toy_dataset(name, classes):
    from detectron2.data import DatasetCatalog, MetadataCatalog

    if name not in DatasetCatalog.list():
        DatasetCatalog.register(name, lambda: [])
        MetadataCatalog.get(name).set(stuff_classes=list(classes), ignore_label=255)
    return name


# --------------------------------------------------------------------------- item 2
@pytest.mark.parametrize("names", [["background", "cat", "grass", "sky"], ["cat", "grass"]], ids=["one more", "one missing"])
def test_class_names_file_must_match_the_evaluated_dataset(tiny_model_files, tmp_path, names):
    from detectron2.modeling import build_model

    from clearclip_d2.engine.trainer import check_run_config

    dataset = register_toy_dataset("toy_three_classes", ["cat", "grass", "sky"])
    names_file = tmp_path / "classes.txt"
    names_file.write_text("\n".join(names) + "\n")
    cfg = tiny_cfg(tiny_model_files, **{"MODEL.CLEARCLIP.CLASS_NAMES_FILE": str(names_file), "DATASETS.TEST": (dataset,)})
    fragment = f"has {len(names)} classes but dataset toy_three_classes has 3"
    with pytest.raises(ClearCLIPError, match=fragment):
        check_run_config(cfg, eval_only=True)
    model = build_model(cfg).eval()
    with pytest.raises(ClearCLIPError, match=fragment):
        model.use_dataset(dataset)
    # The same number of classes is fine.
    names_file.write_text("kitten\nlawn\nclouds\n")
    build_model(cfg).use_dataset(dataset)


# --------------------------------------------------------------------------- item 4
@pytest.mark.parametrize("std", [[68.5, 0.0, 69.7], [68.5, -1.0, 69.7]])
def test_a_zero_pixel_std_is_refused(tiny_model_files, std):
    from detectron2.modeling import build_model

    from clearclip_d2.config import check_clearclip_config

    cfg = tiny_cfg(tiny_model_files, **{"MODEL.PIXEL_STD": std})
    with pytest.raises(ClearCLIPError, match=r"MODEL\.PIXEL_STD .* must be > 0 in every channel"):
        check_clearclip_config(cfg)
    with pytest.raises(ClearCLIPError, match=r"MODEL\.PIXEL_STD"):
        build_model(cfg)
