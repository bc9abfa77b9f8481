"""``tools/train_net.py`` on long evaluations: killed and resumed, several processes, bad files.

The runs use the tiny model, one prompt template, small synthetic COCO-Stuff images and a
small test-time resize, so most images take milliseconds; one large image (1600 x 1200, which
also takes the class-chunked path) keeps the evaluation busy long enough to be killed.
"""

import json
import os
import signal
import subprocess
import time

import numpy as np
import pytest
from PIL import Image

from test_train_net import assert_one_line_error, run_train_net, train_net_command, write_coco_stuff

DATASET = "coco_2017_val_stuff_sem_seg"
ONE_TEMPLATE = ["a photo of a {}."]
SMALL_INPUT = ("INPUT.MIN_SIZE_TEST", "64", "INPUT.MAX_SIZE_TEST", "128")
SIZES = [(48, 64), (56, 64), (48, 72), (1200, 1600), (48, 64), (64, 48), (48, 64)]
SLOW_IMAGE = 3
BAD_IMAGE = 6  # a corrupt JPEG: the resumed 2-process run skips it on rank 1
NUM_IMAGES = len(SIZES)


def evaluate(root, output, model_files, num_gpus=1, flags=(), check=True):
    return run_train_net(root, output, *SMALL_INPUT, num_gpus=num_gpus, model_files=model_files, templates=ONE_TEMPLATE,
                         flags=flags, check=check)


@pytest.fixture(scope="module")
def coco_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("long_eval_data")
    images, _ = write_coco_stuff(root, SIZES, block=20, ignore_rows=3)
    corrupt_jpeg(images / f"{BAD_IMAGE:012d}.jpg")
    return root


def corrupt_jpeg(path):
    path.write_bytes(path.read_bytes()[:300] + b"\x00garbage" * 30)


@pytest.fixture(scope="module")
def uninterrupted(coco_root, tmp_path_factory, tiny_model_files):
    """Metrics, predictions and skipped list of one uninterrupted single-process run."""
    output = tmp_path_factory.mktemp("uninterrupted")
    evaluate(coco_root, output, tiny_model_files, flags=["--skip-bad-images"])
    return {name: (output / name).read_bytes() for name in ("metrics.json", "sem_seg_predictions.json", "skipped.txt")}


def shard_files(output):
    """{shard name: modification time} of the per-image results in ``output``."""
    folder = output / "eval_shards" / "images"
    if not folder.is_dir():
        return {}
    return {name: os.stat(folder / name).st_mtime_ns for name in os.listdir(folder) if name.endswith(".json")}


def run_and_kill_after(coco_root, output, model_files, num_shards=SLOW_IMAGE, timeout=300):
    """Start an evaluation and SIGKILL it (all its processes) once ``num_shards`` images are done."""
    cmd, env = train_net_command(coco_root, output, *SMALL_INPUT, model_files=model_files, templates=ONE_TEMPLATE)
    with open(output.parent / f"{output.name}.log", "w") as log:
        process = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.time() + timeout
        try:
            while len(shard_files(output)) < num_shards:
                assert process.poll() is None, f"the evaluation ended before it could be killed: {process.returncode}"
                assert time.time() < deadline, "no shards appeared"
                time.sleep(0.01)
        finally:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
    done = shard_files(output)
    assert num_shards <= len(done) < BAD_IMAGE - 1, "the kill must interrupt the evaluation"
    assert not (output / "metrics.json").exists()
    return done


def test_killed_evaluation_resumes_to_the_same_metrics(coco_root, tmp_path, tiny_model_files, uninterrupted):
    """Killed (SIGKILL) on one process, refused with other weights, resumed on two processes
    (the remaining images shared out again; the bad image is skipped by rank 1)."""
    from conftest import save_random_checkpoint

    output = tmp_path / "out"
    done = run_and_kill_after(coco_root, output, tiny_model_files)

    other = save_random_checkpoint(tiny_model_files[0], str(tmp_path / "other.safetensors"), seed=5)
    refused = evaluate(coco_root, output, (tiny_model_files[0], other), flags=["--resume-eval"], check=False)
    assert_one_line_error(refused, "cannot resume", "weights MODEL.CLEARCLIP.PRETRAINED", "another OUTPUT_DIR")

    resumed = evaluate(coco_root, output, tiny_model_files, num_gpus=2, flags=["--resume-eval", "--skip-bad-images"])
    assert f"Resuming {DATASET}: {len(done)} of {NUM_IMAGES} images are done" in resumed.stderr + resumed.stdout
    for name, content in uninterrupted.items():
        assert (output / name).read_bytes() == content, name
    metrics = json.loads(uninterrupted["metrics.json"])[DATASET]
    assert metrics["evaluation"] == {"images": NUM_IMAGES - 1, "skipped_images": 1}
    assert uninterrupted["skipped.txt"].decode().startswith(str(coco_root / "coco" / "val2017" / f"{BAD_IMAGE:012d}.jpg\t"))
    after = shard_files(output)
    assert len(after) == NUM_IMAGES - 1
    assert all(after[name] == mtime for name, mtime in done.items()), "done images must not be evaluated again"


@pytest.fixture(scope="module")
def bad_root(tmp_path_factory):
    """Image 0 is fine; 1: corrupt JPEG, 2: truncated PNG label, 3: label of the wrong size,
    4: label value out of range."""
    root = tmp_path_factory.mktemp("bad_data")
    images, labels = write_coco_stuff(root, [(48, 64)] * 5, block=20, ignore_rows=3)
    corrupt_jpeg(images / "000000000001.jpg")
    data = (labels / "000000000002.png").read_bytes()
    (labels / "000000000002.png").write_bytes(data[: len(data) // 2])
    Image.fromarray(np.zeros((48, 63), dtype=np.uint8)).save(labels / "000000000003.png")
    label = np.array(Image.open(labels / "000000000004.png"))
    label[30, 30] = 200
    Image.fromarray(label).save(labels / "000000000004.png")
    return root


def test_bad_file_stops_with_its_name_and_what_is_kept(bad_root, tmp_path, tiny_model_files):
    result = evaluate(bad_root, tmp_path / "out", tiny_model_files, check=False)
    assert_one_line_error(result, "000000000001.jpg", "cannot read image", "stopped after 1 of 5 images",
                          str(tmp_path / "out" / "eval_shards"), "--resume-eval", "--skip-bad-images")
    assert len(shard_files(tmp_path / "out")) == 1
    assert not (tmp_path / "out" / "metrics.json").exists()


def test_bad_files_are_skipped_and_counted(bad_root, tmp_path, tiny_model_files):
    output = tmp_path / "out"
    result = evaluate(bad_root, output, tiny_model_files, flags=["--skip-bad-images"])
    assert "1 images evaluated, 4 bad images skipped" in result.stdout
    metrics = json.loads((output / "metrics.json").read_text())[DATASET]
    assert metrics["evaluation"] == {"images": 1, "skipped_images": 4}
    skipped = (output / "skipped.txt").read_text().splitlines()
    reasons = ["cannot read image", "cannot read label map", "is 63x48 but its image", "pixels with values outside 0..170"]
    assert len(skipped) == 4
    for index, (line, reason) in enumerate(zip(skipped, reasons), start=1):
        assert line.startswith(str(bad_root / "coco" / "val2017" / f"{index:012d}.jpg") + "\t") and reason in line, line
