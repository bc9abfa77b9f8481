"""End to end: ``tools/train_net.py --eval-only --config-file configs/methods/sc_clip.yaml`` on a
synthetic COCO-Stuff, on 1 and 2 processes, and resumed with ``--resume-eval``.

(Once tests/test_methods_end_to_end.py exists, this becomes its TINY_OVERRIDES entry.)
"""

import json
import os
import subprocess

from conftest import REPO_ROOT
from synthetic_coco import write_coco_stuff_layout
from test_train_net import CONFIG, train_net_command

SC_CLIP_CONFIG = os.path.join(REPO_ROOT, "configs", "methods", "sc_clip.yaml")
DATASET = "coco_2017_val_stuff_sem_seg"
# The tiny model has 2 blocks (1 before the last): every layer index is 0. Small inputs keep
# the preset's 224 / 112 windows square (short side 224).
TINY_OVERRIDES = (
    "MODEL.CLEARCLIP.SC_CLIP.PRE_ADJUST_INDEX", "0", "MODEL.CLEARCLIP.SC_CLIP.POST_ADJUST_INDEX", "0",
    "MODEL.CLEARCLIP.SC_CLIP.MULTI_START_INDEX", "0", "MODEL.CLEARCLIP.SC_CLIP.MULTI_END_INDEX", "1",
    "INPUT.MIN_SIZE_TEST", "224", "INPUT.MAX_SIZE_TEST", "320",
)


def run_sc_clip(root, output, model_files, num_gpus=1, flags=()):
    """``train_net.py`` with configs/methods/sc_clip.yaml in place of ClearCLIP's config."""
    cmd, env = train_net_command(root, output, *TINY_OVERRIDES, num_gpus=num_gpus, model_files=model_files, flags=flags)
    cmd[cmd.index(CONFIG)] = SC_CLIP_CONFIG
    result = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    return result, json.loads((output / "metrics.json").read_text())


def test_sc_clip_preset_end_to_end(tmp_path, tiny_model_files):
    root = write_coco_stuff_layout(tmp_path / "data", [(120, 160), (150, 150), (160, 110)], num_labels=12, block=30)
    one, metrics_one = run_sc_clip(root, tmp_path / "one", tiny_model_files)
    assert "SCCLIPEncoder" in one.stdout + one.stderr  # the model printed at start-up
    assert metrics_one[DATASET]["evaluation"]["images"] == 3 and "mIoU" in metrics_one[DATASET]["sem_seg"]
    _, metrics_two = run_sc_clip(root, tmp_path / "two", tiny_model_files, num_gpus=2)
    assert metrics_two == metrics_one
    resumed, metrics_resumed = run_sc_clip(root, tmp_path / "two", tiny_model_files, flags=["--resume-eval"])
    assert f"Resuming {DATASET}: 3 of 3 images are done" in resumed.stdout + resumed.stderr
    assert metrics_resumed == metrics_one
