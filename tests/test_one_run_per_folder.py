"""One run per output folder, and no shard of another run ever counted (issue 12, item 3)."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest

from conftest import REPO_ROOT, capturing_warnings, tiny_cfg
from test_resumable import SIZES, StandInModel, evaluate
from test_resumable import dataset, cfg  # noqa: F401 (fixtures)
from clearclip_d2.evaluation.shards import SHARD_FOLDER
from clearclip_d2.utils.errors import ClearCLIPError
from clearclip_d2.utils.run_lock import LOCK_FILE, output_folder_lock


def test_a_second_run_in_a_locked_folder_is_refused(tmp_path):
    with output_folder_lock(str(tmp_path / "out")):
        with pytest.raises(ClearCLIPError, match=rf"OUTPUT_DIR .*out is in use by another run \(pid {os.getpid()} "):
            with output_folder_lock(str(tmp_path / "out")):
                pass
    with output_folder_lock(str(tmp_path / "out")):  # released at the end of the run
        pass


def test_the_lock_of_a_killed_run_is_taken_over(tmp_path, caplog):
    folder = str(tmp_path / "out")
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from clearclip_d2.utils.run_lock import output_folder_lock\n"
         "with output_folder_lock(sys.argv[1]):\n    print('locked', flush=True); time.sleep(60)", folder],
        stdout=subprocess.PIPE, text=True, env=dict(os.environ, PYTHONPATH=REPO_ROOT),
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(ClearCLIPError, match=f"in use by another run \\(pid {holder.pid} "):
            with output_folder_lock(folder):
                pass
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    with capturing_warnings(caplog, "clearclip_d2.utils.run_lock"), output_folder_lock(folder):
        record = json.loads((tmp_path / "out" / LOCK_FILE).read_text())
        assert record["pid"] == os.getpid()
    assert f"ended without releasing it (pid {holder.pid})" in caplog.text


def test_train_net_refuses_a_folder_in_use(tiny_model_files, tmp_path):
    from synthetic_coco import write_coco_stuff_layout

    root = write_coco_stuff_layout(tmp_path / "datasets", [(60, 80)], num_labels=12, block=20)
    model_json, checkpoint = tiny_model_files
    cmd = [sys.executable, os.path.join(REPO_ROOT, "tools", "train_net.py"), "--eval-only",
           "--config-file", os.path.join(REPO_ROOT, "configs", "clearclip_coco.yaml"),
           "MODEL.CLEARCLIP.MODEL_NAME", model_json, "MODEL.CLEARCLIP.PRETRAINED", checkpoint,
           "OUTPUT_DIR", str(tmp_path / "out")]
    env = dict(os.environ, PYTHONWARNINGS="ignore", DETECTRON2_DATASETS=str(root))
    with output_folder_lock(str(tmp_path / "out")):
        result = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    assert result.returncode == 2, result.stderr[-2000:]
    assert "is in use by another run" in result.stderr.strip().splitlines()[-1]
    assert "Traceback" not in result.stderr
    assert not os.path.exists(tmp_path / "out" / SHARD_FOLDER)


def test_shards_of_another_run_in_the_folder_are_never_counted(cfg, dataset, tmp_path):  # noqa: F811
    _, name = dataset
    other = cfg.clone()
    other.MODEL.CLEARCLIP.LOGIT_SCALE = 40.0
    expected = evaluate(other, name, str(tmp_path / "alone"))
    # Run A fills the folder; run B (another config) starts there afresh and is cut after one
    # image; run A, still going, writes its shards again: B's resume must not count them.
    evaluate(cfg, name, str(tmp_path / "out"))
    shards = tmp_path / "out" / SHARD_FOLDER / "images"
    shutil.copytree(shards, tmp_path / "a_shards")
    with pytest.raises(KeyboardInterrupt):
        evaluate(other, name, str(tmp_path / "out"), model=StandInModel(fail_after=1))
    b_shard = set(os.listdir(shards))
    for shard in os.listdir(tmp_path / "a_shards"):
        if shard not in b_shard:
            shutil.copy(tmp_path / "a_shards" / shard, shards / shard)
    model = StandInModel()
    assert evaluate(other, name, str(tmp_path / "out"), model=model, resume=True) == expected
    assert len(model.seen) == len(SIZES) - 1


@pytest.mark.parametrize(
    "edit",
    [
        lambda shard: shard["confusion"]["index"].__setitem__(0, 10**6),  # a class far out of range
        lambda shard: shard["confusion"]["index"].__setitem__(0, -1),
        lambda shard: shard["confusion"]["count"].__setitem__(0, -500),  # a negative count
        lambda shard: shard["confusion"]["count"].__setitem__(0, 1.5),
    ],
    ids=["index out of range", "negative index", "negative count", "fractional count"],
)
def test_a_hand_edited_shard_is_refused(cfg, dataset, tmp_path, edit):  # noqa: F811
    _, name = dataset
    full = evaluate(cfg, name, str(tmp_path / "out"))
    shards = tmp_path / "out" / SHARD_FOLDER / "images"
    path = shards / sorted(os.listdir(shards))[0]
    shard = json.loads(path.read_text())
    edit(shard)
    path.write_text(json.dumps(shard))
    model = StandInModel()
    assert evaluate(cfg, name, str(tmp_path / "out"), model=model, resume=True) == full
    assert len(model.seen) == 1
