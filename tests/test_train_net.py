"""End to end: ``tools/train_net.py --eval-only`` on a synthetic COCO-Stuff in the real layout."""

import json
import os
import socket
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

import reference_clearclip as ref
from conftest import FEW_TEMPLATES, REPO_ROOT
from synthetic_coco import reference_metrics, write_coco_stuff_layout

TRAIN_NET = os.path.join(REPO_ROOT, "tools", "train_net.py")
CONFIG = os.path.join(REPO_ROOT, "configs", "clearclip_coco.yaml")
SIZES = [(480, 640), (375, 500), (427, 640), (500, 333)]


def write_coco_stuff(root, sizes, block=50, ignore_rows=7):
    """The COCO-Stuff layout (labels 0..11) under ``root``; returns (images folder, labels folder)."""
    write_coco_stuff_layout(root, sizes, num_labels=12, block=block, ignored_rows=ignore_rows)
    return root / "coco" / "val2017", root / "coco" / "stuffthingmaps_detectron2" / "val2017"


@pytest.fixture(scope="module")
def coco_root(tmp_path_factory):
    return write_coco_stuff_layout(tmp_path_factory.mktemp("d2datasets"), SIZES, num_labels=12, block=50)


def free_port():
    """A free local TCP port, so parallel test runs do not share Detectron2's default --dist-url."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def train_net_command(root, output_dir, *extra, num_gpus=1, model_files=None, flags=(), templates=FEW_TEMPLATES, config=CONFIG):
    """(command, environment) of ``train_net.py --eval-only`` on the tiny model (``config``: the preset)."""
    model_json, checkpoint = model_files
    env = dict(os.environ, DETECTRON2_DATASETS=str(root), PYTHONWARNINGS="ignore")
    dist = ["--dist-url", f"tcp://127.0.0.1:{free_port()}"] if num_gpus > 1 else []
    cmd = [sys.executable, TRAIN_NET, "--eval-only", "--num-gpus", str(num_gpus), *dist, *flags, "--config-file", config,
           "MODEL.CLEARCLIP.MODEL_NAME", model_json, "MODEL.CLEARCLIP.PRETRAINED", checkpoint,
           "MODEL.CLEARCLIP.PROMPT_TEMPLATES", repr(list(templates)), "OUTPUT_DIR", str(output_dir),
           "DATALOADER.NUM_WORKERS", "1", *extra]
    return cmd, env


def run_train_net(root, output_dir, *extra, num_gpus=1, model_files=None, check=True, flags=(), templates=FEW_TEMPLATES,
                  config=CONFIG):
    cmd, env = train_net_command(root, output_dir, *extra, num_gpus=num_gpus, model_files=model_files, flags=flags,
                                 templates=templates, config=config)
    result = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    if check:
        assert result.returncode == 0, result.stderr[-3000:]
    return result


def independent_miou(root, tiny_clip):
    """mIoU over classes present in the ground truth, from the reference pipeline's predictions."""
    from clearclip_d2.constants import class_names_file

    model, tokenizer = tiny_clip
    with open(class_names_file("coco_stuff")) as f:
        queries = f.read().splitlines()
    text = ref.text_features(model, tokenizer, queries, FEW_TEMPLATES)
    return reference_metrics(root, len(SIZES), model, text)


def test_eval_one_and_two_processes_match_independent_metrics(coco_root, tmp_path, tiny_model_files, tiny_clip):
    one = run_train_net(coco_root, tmp_path / "one", model_files=tiny_model_files)
    assert "| mIoU" in one.stdout and "coco_2017_val_stuff_sem_seg" in one.stdout
    metrics_one = json.loads((tmp_path / "one" / "metrics.json").read_text())
    results = metrics_one["coco_2017_val_stuff_sem_seg"]["sem_seg"]
    assert {"mIoU", "fwIoU", "mACC", "pACC", "IoU-person", "IoU-wood"} <= set(results)
    assert (tmp_path / "one" / "sem_seg_predictions.json").exists()
    assert not [name for name in os.listdir(tmp_path / "one") if name.startswith(".")]

    miou, pacc = independent_miou(coco_root, tiny_clip)
    assert results["mIoU"] == pytest.approx(miou, abs=0.05)
    assert results["pACC"] == pytest.approx(pacc, abs=0.05)
    assert results["pACC"] > 0

    run_train_net(coco_root, tmp_path / "two", num_gpus=2, model_files=tiny_model_files)
    metrics_two = json.loads((tmp_path / "two" / "metrics.json").read_text())
    assert metrics_two == metrics_one


def assert_one_line_error(result, *fragments):
    assert result.returncode == 2, (result.returncode, result.stderr[-2000:])
    error_lines = [line for line in result.stderr.splitlines() if "error" in line.lower()]
    assert error_lines, result.stderr[-2000:]
    assert "Traceback" not in result.stderr, result.stderr[-2000:]
    for fragment in fragments:
        assert fragment in error_lines[-1], error_lines[-1]


@pytest.mark.parametrize(
    "overrides, fragments",
    [
        (["MODEL.CLEARCLIP.MODEL_NAME", "ViT-Q-99"], ["ViT-Q-99", "ViT-B-16"]),
        (["MODEL.CLEARCLIP.ATTENTION", "xy"], ["ATTENTION", "'xy'", "qq"]),
        (["MODEL.CLEARCLIP.PRETRAINED", "/nonexistent/weights.pt"], ["/nonexistent/weights.pt", "does not exist"]),
        (["MODEL.CLEARCLIP.NO_SUCH_KEY", "1"], ["NO_SUCH_KEY"]),
        (["DATASETS.TEST", "('no_such_dataset',)"], ["no_such_dataset", "not registered"]),
    ],
)
def test_bad_config_values_give_one_line(coco_root, tmp_path, tiny_model_files, overrides, fragments):
    model_json, checkpoint = tiny_model_files
    files = (model_json, checkpoint)
    result = run_train_net(coco_root, tmp_path / "out", *overrides, model_files=files, check=False)
    assert_one_line_error(result, *fragments)
    assert not (tmp_path / "out" / "metrics.json").exists()


def test_bad_class_names_file(coco_root, tmp_path, tiny_model_files):
    names = tmp_path / "names.txt"
    names.write_text("cat\n\ndog\n")
    result = run_train_net(coco_root, tmp_path / "out", "MODEL.CLEARCLIP.CLASS_NAMES_FILE", str(names),
                           model_files=tiny_model_files, check=False)
    assert_one_line_error(result, str(names), "blank line")


def test_missing_dataset_folder_names_path_and_script(tmp_path, tiny_model_files):
    result = run_train_net(tmp_path / "empty", tmp_path / "out", model_files=tiny_model_files, check=False)
    assert_one_line_error(result, os.path.join("coco", "val2017"), "prepare_coco_stuff.py")


def test_training_is_refused(coco_root, tmp_path, tiny_model_files):
    model_json, checkpoint = tiny_model_files
    env = dict(os.environ, DETECTRON2_DATASETS=str(coco_root))
    result = subprocess.run(
        [sys.executable, TRAIN_NET, "--config-file", CONFIG, "MODEL.CLEARCLIP.MODEL_NAME", model_json,
         "MODEL.CLEARCLIP.PRETRAINED", checkpoint, "OUTPUT_DIR", str(tmp_path / "out")],
        env=env, capture_output=True, text=True, timeout=300,
    )
    assert_one_line_error(result, "training-free", "--eval-only")


@pytest.mark.parametrize("num_gpus", [1, 2])
def test_unreadable_image_is_named(tmp_path, tiny_model_files, num_gpus):
    root = tmp_path / "data"
    images, labels = root / "coco" / "val2017", root / "coco" / "stuffthingmaps_detectron2" / "val2017"
    images.mkdir(parents=True)
    labels.mkdir(parents=True)
    for index in range(2):
        Image.fromarray(np.zeros((40, 50), dtype=np.uint8)).save(labels / f"{index}.png")
    Image.fromarray(np.zeros((40, 50, 3), dtype=np.uint8)).save(images / "0.jpg")
    (images / "1.jpg").write_bytes(b"\xff\xd8\xff\xe0 truncated")
    result = run_train_net(root, tmp_path / "out", num_gpus=num_gpus, model_files=tiny_model_files, check=False)
    assert_one_line_error(result, "1.jpg")
    assert not (tmp_path / "out" / "metrics.json").exists()
