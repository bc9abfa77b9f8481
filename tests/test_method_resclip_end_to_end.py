"""``tools/train_net.py --eval-only --config-file configs/methods/resclip.yaml`` end to end on a
synthetic COCO-Stuff with a tiny random model: 1 process, 2 processes, and ``--resume-eval``
after a lost image give the same metrics.

(To move into tests/test_methods_end_to_end.py's TINY_OVERRIDES once that file is merged.)
"""

import json
import os
import subprocess
import sys

import pytest

from conftest import REPO_ROOT
from synthetic_coco import write_coco_stuff_layout
from test_method_resclip import needs_pipeline_keys
from test_train_net import free_port

TRAIN_NET = os.path.join(REPO_ROOT, "tools", "train_net.py")
DATASET = "coco_2017_val_stuff_sem_seg"
# Per method: the overrides that fit its preset to the tiny 2-block model and small images.
TINY_OVERRIDES = {
    "resclip": ["MODEL.CLEARCLIP.RESCLIP.RCS_LAYERS", "[0]", "MODEL.CLEARCLIP.SLIDE_CROP", "48",
                "MODEL.CLEARCLIP.SLIDE_STRIDE", "32", "INPUT.MIN_SIZE_TEST", "56", "INPUT.MAX_SIZE_TEST", "96"],
}


@pytest.fixture(scope="module")
def coco_root(tmp_path_factory):
    return write_coco_stuff_layout(tmp_path_factory.mktemp("resclip_data"), [(48, 64), (60, 50), (56, 80)], num_labels=12, block=16)


def evaluate(method, root, output, model_files, num_gpus=1, flags=()):
    model_json, checkpoint = model_files
    dist = ["--dist-url", f"tcp://127.0.0.1:{free_port()}"] if num_gpus > 1 else []
    cmd = [sys.executable, TRAIN_NET, "--eval-only", "--num-gpus", str(num_gpus), *dist, *flags,
           "--config-file", os.path.join(REPO_ROOT, "configs", "methods", f"{method}.yaml"),
           "MODEL.CLEARCLIP.MODEL_NAME", model_json, "MODEL.CLEARCLIP.PRETRAINED", checkpoint,
           "MODEL.CLEARCLIP.PROMPT_TEMPLATES", "['a photo of a {}.']", "OUTPUT_DIR", str(output),
           "DATALOADER.NUM_WORKERS", "0", *TINY_OVERRIDES[method]]
    env = dict(os.environ, DETECTRON2_DATASETS=str(root), PYTHONWARNINGS="ignore")
    result = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads((output / "metrics.json").read_text())


@needs_pipeline_keys
def test_resclip_preset_evaluates_on_one_and_two_processes_and_resumes(coco_root, tmp_path, tiny_model_files):
    one = evaluate("resclip", coco_root, tmp_path / "one", tiny_model_files)
    assert one[DATASET]["evaluation"]["images"] == 3 and "mIoU" in one[DATASET]["sem_seg"]
    assert evaluate("resclip", coco_root, tmp_path / "two", tiny_model_files, num_gpus=2) == one

    shards = tmp_path / "one" / "eval_shards" / "images"
    os.remove(shards / sorted(os.listdir(shards))[0])
    os.remove(tmp_path / "one" / "metrics.json")
    assert evaluate("resclip", coco_root, tmp_path / "one", tiny_model_files, flags=["--resume-eval"]) == one
