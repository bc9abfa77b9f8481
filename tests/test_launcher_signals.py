"""Stopping the launcher of a ``--num-gpus 2`` run stops every rank (issue 12, item 9)."""

import contextlib
import os
import signal
import subprocess
import sys
import time

import pytest

from conftest import REPO_ROOT
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


def command_line(pid):
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode(errors="replace")
    except FileNotFoundError:
        return "(gone)"


def describe(pid):
    """``pid: command line`` of a process, for failure messages."""
    return f"{pid}: {command_line(pid)[:300]}"


def alive(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def processes_of_session(session):
    """The live processes of a session (the launcher started with ``start_new_session``): the
    launcher, its ranks and everything they started."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    fields = f.read().split(")")[-1].split()
            except (FileNotFoundError, ProcessLookupError):
                continue
            if fields[0] != "Z" and int(fields[3]) == session:  # state, ppid, pgrp, session
                found.append(int(entry))
    return found


def wait_until_gone(pids, seconds):
    deadline = time.time() + seconds
    while any(alive(pid) for pid in pids) and time.time() < deadline:
        time.sleep(0.1)
    return [describe(pid) for pid in pids if alive(pid)]


@pytest.mark.parametrize("stop_signal", [signal.SIGTERM, signal.SIGKILL], ids=["SIGTERM", "SIGKILL"])
def test_stopping_the_launcher_stops_every_rank(busy_root, tmp_path, tiny_model_files, stop_signal):
    """The ranks (the launcher's worker processes) end within seconds of their launcher. The
    rest of the run's processes end soon after: each rank's data-loader worker when PyTorch's
    watchdog sees its rank gone (every 5 s), then multiprocessing's resource tracker (which
    ignores SIGTERM and ends when the last process holding its pipe has ended)."""
    output = tmp_path / "out"
    cmd, env = train_net_command(busy_root, output, *SMALL_INPUT, num_gpus=2, model_files=tiny_model_files,
                                 templates=ONE_TEMPLATE)
    with open(tmp_path / "run.log", "w") as log:
        launcher = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.time() + 300
        while not shard_files(output):  # both ranks are evaluating
            assert launcher.poll() is None, (tmp_path / "run.log").read_text()[-3000:]
            assert time.time() < deadline, "no shards appeared"
            time.sleep(0.05)
        ranks = [pid for pid in children_of(launcher.pid) if alive(pid) and "multiprocessing.spawn" in command_line(pid)]
        assert len(ranks) == 2, [describe(pid) for pid in children_of(launcher.pid)]
        launcher.send_signal(stop_signal)
        launcher.wait(timeout=60)
        survivors = wait_until_gone(ranks, 10)
        assert not survivors, f"ranks kept running after their launcher was stopped: {survivors}"
        assert len(shard_files(output)) < len(SIZES), "the stop must interrupt the evaluation"
        left = wait_until_gone(processes_of_session(launcher.pid), 60)
        assert not left, f"processes of the run kept running after its ranks ended: {left}"
    finally:
        for pid in processes_of_session(launcher.pid):
            with contextlib.suppress(ProcessLookupError):
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


def pdeathsig_of_this_process(_):
    """The signal this process gets when its parent ends (0: none), by ``prctl(PR_GET_PDEATHSIG)``."""
    import ctypes

    value = ctypes.c_int(0)
    ctypes.CDLL(None, use_errno=True).prctl(2, ctypes.byref(value))  # PR_GET_PDEATHSIG
    return value.value


@pytest.mark.skipif(not os.path.exists("/proc/self/stat"), reason="Linux only")
def test_data_loader_workers_end_with_the_process_reading_them():
    import torch.utils.data

    from clearclip_d2.utils.processes import end_workers_with_the_reader

    started = []
    loader = torch.utils.data.DataLoader(list(range(2)), batch_size=None, num_workers=1, collate_fn=pdeathsig_of_this_process,
                                         worker_init_fn=started.append)  # the loader's own one still runs (in the worker)
    assert list(end_workers_with_the_reader(loader)) == [signal.SIGTERM, signal.SIGTERM]
    assert pdeathsig_of_this_process(0) == 0  # the reading process itself is left as it was
    chained = torch.utils.data.DataLoader(list(range(1)), batch_size=None, num_workers=1, collate_fn=lambda item: item,
                                          worker_init_fn=lambda worker_id: 1 / 0)
    with pytest.raises(ZeroDivisionError):
        list(end_workers_with_the_reader(chained))


def ended_by(code):
    """The exit status of ``python -c code`` with this repository importable."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([REPO_ROOT, os.environ.get("PYTHONPATH", "")]))
    return subprocess.run([sys.executable, "-c", code], env=env, timeout=300).returncode


@pytest.mark.skipif(not os.path.exists("/proc/self/stat"), reason="Linux only")
def test_a_process_whose_parent_ended_before_it_asked_to_end_with_it_ends_then():
    """The kernel's parent-death signal covers only a parent that ends after the request: a
    worker whose rank ended while it was starting (seen: a rank stopped with its launcher) or a
    rank whose launcher did, must end by itself, not wait for work forever."""
    ask = "import time; from clearclip_d2.utils.processes import end_with_parent; end_with_parent({}); time.sleep(120)"
    ended = subprocess.Popen([sys.executable, "-c", "pass"])
    while not os.path.exists(f"/proc/{ended.pid}/stat") or alive(ended.pid):
        time.sleep(0.05)
    # ended but not reaped (a zombie), as a rank that ended with its launcher is until init reaps it
    assert ended_by(ask.format(ended.pid)) == -signal.SIGTERM
    ended.wait()
    assert ended_by(ask.format(ended.pid)) == -signal.SIGTERM  # reaped
    # a process started by another one than expected, which is still running, goes on
    assert ended_by(ask.format(os.getpid()).replace("time.sleep(120)", "pass")) == 0
