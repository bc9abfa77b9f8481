"""Every method preset (configs/methods/*.yaml) end to end: ``tools/train_net.py --eval-only`` on a
synthetic COCO-Stuff (two small images), on one process, then resumed (``--resume-eval``) on two
processes to the same metrics.

A method that adds a preset adds its entry to :data:`TINY_OVERRIDES`: the config keys that make
it run on the tiny random CLIP of tests/conftest.py (and a tiny version of any other model).
"""

import glob
import json
import os
import subprocess

import pytest

from conftest import REPO_ROOT
from synthetic_coco import write_coco_stuff_layout
from test_train_net import train_net_command

PRESETS = sorted(glob.glob(os.path.join(REPO_ROOT, "configs", "methods", "*.yaml")))
DATASET = "coco_2017_val_stuff_sem_seg"

# Per method (the preset's file stem): KEY VALUE overrides, besides the tiny CLIP itself.
TINY_OVERRIDES = {
    "clip": {},
    "maskclip": {},
    "sclip": {},
    "naclip": {"MODEL.CLEARCLIP.PAMR_DILATIONS": "[1, 2]"},  # PAMR stays on; small dilations for 60-pixel images
}


@pytest.fixture(scope="module")
def coco_root(tmp_path_factory):
    return write_coco_stuff_layout(tmp_path_factory.mktemp("d2datasets"), [(60, 80), (72, 54)], num_labels=12, block=20)


def run(root, config, output_dir, model_files, num_gpus):
    overrides = [str(item) for key, value in TINY_OVERRIDES[method_of(config)].items() for item in (key, value)]
    cmd, env = train_net_command(root, output_dir, *overrides, num_gpus=num_gpus, model_files=model_files,
                                 flags=["--resume-eval"], config=config)
    result = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    return result, json.loads((output_dir / "metrics.json").read_text())[DATASET]["sem_seg"]


def method_of(config):
    return os.path.splitext(os.path.basename(config))[0]


def test_every_preset_has_tiny_overrides():
    assert PRESETS and sorted(map(method_of, PRESETS)) == sorted(TINY_OVERRIDES)


@pytest.mark.parametrize("config", PRESETS, ids=method_of)
def test_preset_evaluates_and_resumes_on_two_processes(coco_root, tmp_path, tiny_model_files, config):
    _, first = run(coco_root, config, tmp_path / "out", tiny_model_files, num_gpus=1)
    assert {"mIoU", "mIoU-mmseg", "pACC"} <= set(first)  # (a random tiny CLIP may hit no labelled class)
    resumed, again = run(coco_root, config, tmp_path / "out", tiny_model_files, num_gpus=2)
    assert f"Resuming {DATASET}: 2 of 2 images are done" in resumed.stdout + resumed.stderr
    assert again == first


def test_every_method_has_a_preset_for_each_paper_number_and_the_table_shows_ours(tmp_path):
    from clearclip_d2.constants import paper_results
    from clearclip_d2.engine.reproduce import method_names, method_presets, method_table

    for method in method_names():
        assert set(paper_results(method)) <= set(method_presets(method)), method
    metrics = tmp_path / "metrics.json"
    metrics.write_text(json.dumps({"voc_2012_val_21": {"sem_seg": {"mIoU-mmseg": 63.456, "mIoU": 60.0}}}))
    table = method_table("naclip", [str(metrics)])
    assert "| VOC21 | `configs/methods/naclip/voc21.yaml` | 64.07 | 63.46 |" in table
    assert "| COCO-Stuff | `configs/methods/naclip.yaml` | 25.69 | – |" in table
    assert "80.4*" in method_table("sclip") and "not checked" in method_table("sclip")
