"""Resumable evaluation and bad files, in one process: shards, fingerprints, merging, skipping.

The model here is a cheap deterministic stand-in (the evaluation machinery is under test, not
ClearCLIP); ``test_long_evaluation.py`` runs the real ``train_net.py`` with the tiny model.
"""

import json
import os
import shutil
import uuid

import numpy as np
import pytest
import torch
from detectron2.data import DatasetCatalog, MetadataCatalog, build_detection_test_loader
from PIL import Image

from conftest import tiny_cfg
from clearclip_d2.data import ClearCLIPDatasetMapper
from clearclip_d2.data.datasets.common import register_sem_seg_dataset
from clearclip_d2.evaluation import ClearCLIPSemSegEvaluator
from clearclip_d2.evaluation.bad_inputs import check_label_map
from clearclip_d2.evaluation.fingerprint import evaluation_fingerprint, fingerprint_difference
from clearclip_d2.evaluation.resumable import plan_evaluation, run_planned_evaluation
from clearclip_d2.evaluation.shards import SHARD_FOLDER, ShardStore, sparse_counts
from clearclip_d2.utils.errors import ClearCLIPError

CLASSES = ["sky", "tree", "road", "car, automobile", "person"]
SIZES = [(40, 50), (36, 52), (44, 40), (30, 60), (48, 48)]


def write_dataset(root, sizes=SIZES, seed=0):
    """Images and label maps (values 0..4, 255 ignore) in a Detectron2 sem-seg layout."""
    images, labels = os.path.join(root, "images"), os.path.join(root, "labels")
    os.makedirs(images, exist_ok=True)
    os.makedirs(labels, exist_ok=True)
    rng = np.random.default_rng(seed)
    for index, (height, width) in enumerate(sizes):
        Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8)).save(f"{images}/{index:03d}.jpg")
        label = rng.integers(0, len(CLASSES), (height, width)).astype(np.uint8)
        label[:2] = 255
        Image.fromarray(label).save(f"{labels}/{index:03d}.png")
    return images, labels


def register(root, name=None):
    name = name or f"resumable_test_{uuid.uuid4().hex[:8]}"
    register_sem_seg_dataset(name, os.path.join(root, "images"), os.path.join(root, "labels"), CLASSES, "make it")
    return name


def unregister(name):
    DatasetCatalog.remove(name)
    MetadataCatalog.remove(name)


class StandInModel:
    """Predicts a fixed pattern shifted by the image's first pixel; records the files it saw."""

    def __init__(self, fail_after=None):
        self.seen = []
        self.fail_after = fail_after

    def __call__(self, batched_inputs):
        outputs = []
        for x in batched_inputs:
            if self.fail_after is not None and len(self.seen) == self.fail_after:
                raise KeyboardInterrupt("simulated interruption")
            self.seen.append(x["file_name"])
            height, width = x["height"], x["width"]
            rows, cols = torch.arange(height)[:, None] // 7, torch.arange(width)[None] // 9
            labels = (rows + cols + int(x["image"][0, 0, 0])) % len(CLASSES)
            outputs.append({"sem_seg": torch.nn.functional.one_hot(labels, len(CLASSES)).permute(2, 0, 1).float()})
        return outputs


def evaluate(cfg, dataset_name, output_dir, model=None, resume=False, skip=False, **evaluator_options):
    model = model or StandInModel()
    evaluator = ClearCLIPSemSegEvaluator(dataset_name, output_dir=output_dir, skip_bad_images=skip, **evaluator_options)
    plan = plan_evaluation(cfg, dataset_name, output_dir, resume)
    mapper = ClearCLIPDatasetMapper(cfg, False, mark_bad_images=True)
    return run_planned_evaluation(
        model, plan, evaluator, lambda dicts: build_detection_test_loader(dicts, mapper=mapper, num_workers=0)
    )


@pytest.fixture
def dataset(tmp_path):
    root = str(tmp_path / "data")
    write_dataset(root)
    name = register(root)
    yield root, name
    unregister(name)


@pytest.fixture
def cfg(tiny_model_files):
    return tiny_cfg(tiny_model_files)


def test_sparse_counts_are_the_bincount():
    cells = np.array([[3, 3, 0], [7, 3, 0]])
    index, count = sparse_counts(cells, 9)
    dense = np.zeros(9, dtype=np.int64)
    dense[index] = count
    assert np.array_equal(dense, np.bincount(cells.ravel(), minlength=9)) and len(index) == 3


def test_interrupted_and_resumed_equals_uninterrupted(cfg, dataset, tmp_path):
    _, name = dataset
    full = evaluate(cfg, name, str(tmp_path / "full"))
    interrupted = StandInModel(fail_after=2)
    with pytest.raises(KeyboardInterrupt):
        evaluate(cfg, name, str(tmp_path / "cut"), model=interrupted)
    assert len(os.listdir(tmp_path / "cut" / SHARD_FOLDER / "images")) == 2
    resumed_model = StandInModel()
    resumed = evaluate(cfg, name, str(tmp_path / "cut"), model=resumed_model, resume=True)
    assert resumed == full
    assert full["evaluation"] == {"images": len(SIZES), "skipped_images": 0}
    # The done images never reached the model again.
    assert not set(resumed_model.seen) & set(interrupted.seen) and len(resumed_model.seen) == len(SIZES) - 2
    for output in ("sem_seg_predictions.json", "skipped.txt"):
        assert (tmp_path / "full" / output).read_bytes() == (tmp_path / "cut" / output).read_bytes(), output
    # Nothing left to do: the stored results alone give the metrics again.
    nothing_left = StandInModel()
    assert evaluate(cfg, name, str(tmp_path / "cut"), model=nothing_left, resume=True) == full
    assert nothing_left.seen == []


def test_run_without_resume_starts_afresh(cfg, dataset, tmp_path):
    _, name = dataset
    evaluate(cfg, name, str(tmp_path / "out"))
    model = StandInModel()
    evaluate(cfg, name, str(tmp_path / "out"), model=model)
    assert len(model.seen) == len(SIZES)


def test_resume_with_another_config_is_refused(cfg, dataset, tmp_path):
    _, name = dataset
    with pytest.raises(KeyboardInterrupt):
        evaluate(cfg, name, str(tmp_path / "out"), model=StandInModel(fail_after=1))
    other = cfg.clone()
    other.MODEL.CLEARCLIP.LOGIT_SCALE = 40.0
    with pytest.raises(ClearCLIPError) as info:
        evaluate(other, name, str(tmp_path / "out"), resume=True)
    message = str(info.value)
    assert "another evaluation" in message and "LOGIT_SCALE: 50.0 -> 40.0" in message
    assert "another OUTPUT_DIR" in message and os.path.join(str(tmp_path / "out"), SHARD_FOLDER) in message
    # The shards of the first run are untouched, and a matching resume still works.
    assert len(os.listdir(tmp_path / "out" / SHARD_FOLDER / "images")) == 1
    model = StandInModel()
    evaluate(cfg, name, str(tmp_path / "out"), model=model, resume=True)
    assert len(model.seen) == len(SIZES) - 1


def test_fingerprint_covers_config_weights_and_dataset(cfg, dataset, tmp_path, tiny_model_files):
    root, name = dataset
    dicts = DatasetCatalog.get(name)
    base = evaluation_fingerprint(cfg, name, dicts)
    assert fingerprint_difference(base, evaluation_fingerprint(cfg, name, dicts)) is None

    speed_only = cfg.clone()
    speed_only.MODEL.CLEARCLIP.WINDOW_BATCH = 1
    speed_only.MODEL.CLEARCLIP.CLASS_CHUNK = 3
    speed_only.MODEL.CLEARCLIP.CACHE_DIR = str(tmp_path / "other_text_cache")
    assert fingerprint_difference(base, evaluation_fingerprint(speed_only, name, dicts)) is None

    templates = cfg.clone()
    templates.MODEL.CLEARCLIP.PROMPT_TEMPLATES = ["a {}."]
    assert "PROMPT_TEMPLATES" in fingerprint_difference(base, evaluation_fingerprint(templates, name, dicts))

    copied = str(tmp_path / "copy.safetensors")
    shutil.copy(tiny_model_files[1], copied)
    same_weights = cfg.clone()
    same_weights.MODEL.CLEARCLIP.PRETRAINED = copied
    assert fingerprint_difference(base, evaluation_fingerprint(same_weights, name, dicts)) is None
    with open(copied, "r+b") as f:  # one byte of a tensor changed
        f.seek(-3, os.SEEK_END)
        f.write(b"\x01")
    assert "weights MODEL.CLEARCLIP.PRETRAINED" in fingerprint_difference(
        base, evaluation_fingerprint(same_weights, name, dicts)
    )

    os.remove(os.path.join(root, "images", "004.jpg"))
    os.remove(os.path.join(root, "labels", "004.png"))
    assert "dataset: 5 images -> 4 images" in fingerprint_difference(
        base, evaluation_fingerprint(cfg, name, DatasetCatalog.get(name))
    )


def test_a_moved_dataset_keeps_its_fingerprint_and_shards(cfg, tmp_path):
    write_dataset(str(tmp_path / "a"))
    name = register(str(tmp_path / "a"))
    try:
        with pytest.raises(KeyboardInterrupt):
            evaluate(cfg, name, str(tmp_path / "out"), model=StandInModel(fail_after=3))
    finally:
        unregister(name)
    shutil.move(str(tmp_path / "a"), str(tmp_path / "b"))
    register(str(tmp_path / "b"), name)
    try:
        model = StandInModel()
        results = evaluate(cfg, name, str(tmp_path / "out"), model=model, resume=True)
        assert len(model.seen) == 2 and results["evaluation"]["images"] == len(SIZES)
        predictions = json.loads((tmp_path / "out" / "sem_seg_predictions.json").read_text())
        assert {os.path.dirname(p["file_name"]) for p in predictions} == {str(tmp_path / "b" / "images")}
    finally:
        unregister(name)


def test_unreadable_shard_is_evaluated_again(cfg, dataset, tmp_path):
    _, name = dataset
    full = evaluate(cfg, name, str(tmp_path / "out"))
    store = ShardStore(str(tmp_path / "out" / SHARD_FOLDER), "")
    broken = sorted(os.listdir(store.images_folder))[0]
    with open(os.path.join(store.images_folder, broken), "w") as f:
        f.write('{"image": ')
    model = StandInModel()
    assert evaluate(cfg, name, str(tmp_path / "out"), model=model, resume=True) == full
    assert len(model.seen) == 1


# ----------------------------------------------------------------------------- bad files
def corrupt_jpeg(root):
    path = os.path.join(root, "images", "002.jpg")
    data = open(path, "rb").read()
    with open(path, "wb") as f:  # a JPEG header, then garbage
        f.write(data[:200] + b"\x00garbage" * 20)
    return path


def truncated_png_image(root):
    path = os.path.join(root, "images", "002.jpg")  # PIL reads files by content, not by name
    Image.fromarray(np.zeros((44, 40, 3), dtype=np.uint8) + 7).save(path, format="PNG")
    data = open(path, "rb").read()
    with open(path, "wb") as f:
        f.write(data[: len(data) // 2])
    return path


def truncated_png_label(root):
    path = os.path.join(root, "labels", "002.png")
    data = open(path, "rb").read()
    with open(path, "wb") as f:
        f.write(data[: len(data) * 2 // 3])
    return path


def wrong_size_label(root):
    path = os.path.join(root, "labels", "002.png")
    Image.fromarray(np.zeros((44, 41), dtype=np.uint8)).save(path)
    return path


def out_of_range_label(root):
    path = os.path.join(root, "labels", "002.png")
    label = np.array(Image.open(path))
    label[20, 20] = 9
    Image.fromarray(label).save(path)
    return path


BAD_FILES = {
    "corrupt_jpeg": (corrupt_jpeg, "cannot read image"),
    "truncated_png_image": (truncated_png_image, "cannot read image"),
    "truncated_png_label": (truncated_png_label, "cannot read label map"),
    "wrong_size_label": (wrong_size_label, "is 41x44 but its image"),
    "out_of_range_label": (out_of_range_label, "1 pixels with values outside 0..4 that are not the ignore label 255 (values 9)"),
}


@pytest.mark.parametrize("kind", sorted(BAD_FILES))
def test_bad_file_stops_with_its_name_and_the_count(cfg, dataset, tmp_path, kind):
    root, name = dataset
    damage, reason = BAD_FILES[kind]
    bad_path = damage(root)
    with pytest.raises(ClearCLIPError) as info:
        evaluate(cfg, name, str(tmp_path / "out"))
    message = str(info.value)
    assert bad_path in message and reason in message, message
    assert "stopped after 2 of 5 images" in message and "--resume-eval" in message and "--skip-bad-images" in message
    assert "\n" not in message
    assert len(os.listdir(tmp_path / "out" / SHARD_FOLDER / "images")) == 2
    assert not (tmp_path / "out" / "sem_seg_predictions.json").exists()


@pytest.mark.parametrize("kind", sorted(BAD_FILES))
def test_bad_file_is_skipped_and_listed(cfg, dataset, tmp_path, kind):
    root, name = dataset
    damage, reason = BAD_FILES[kind]
    bad_path = damage(root)
    results = evaluate(cfg, name, str(tmp_path / "out"), skip=True)
    assert results["evaluation"] == {"images": 4, "skipped_images": 1}
    lines = (tmp_path / "out" / "skipped.txt").read_text().splitlines()
    assert len(lines) == 1 and lines[0].startswith(os.path.join(root, "images", "002.jpg") + "\t")
    assert bad_path in lines[0] and reason in lines[0]
    # The metrics are those of the dataset without the bad image.
    good = str(tmp_path / "good")
    write_dataset(good, [size for i, size in enumerate(SIZES) if i != 2])
    for index, file in enumerate(["000", "001", "003", "004"]):
        for folder, ext in (("images", "jpg"), ("labels", "png")):
            shutil.copy(os.path.join(root, folder, f"{file}.{ext}"), os.path.join(good, folder, f"{index:03d}.{ext}"))
    good_name = register(good)
    try:
        assert evaluate(cfg, good_name, str(tmp_path / "good_out"))["sem_seg"] == results["sem_seg"]
    finally:
        unregister(good_name)


def test_background_thread_and_in_line_give_the_same_results_and_files(cfg, dataset, tmp_path):
    """The evaluator's per-image work on its background thread (``images_in_flight`` > 0, as
    ``Trainer.build_evaluator`` builds it) or in line (0, the default): the same metrics, files
    and shards; the same stop at a bad file, and the same skip."""
    root, name = dataset
    outputs = {}
    for in_flight in (0, 1, 4):
        outputs[in_flight] = evaluate(cfg, name, str(tmp_path / f"out{in_flight}"), images_in_flight=in_flight)
    assert outputs[0] == outputs[1] == outputs[4]
    for output in ("sem_seg_predictions.json", "sem_seg_evaluation.pth", "skipped.txt"):
        assert len({(tmp_path / f"out{n}" / output).read_bytes() for n in (0, 1, 4)}) == 1, output
    shards = [sorted(os.listdir(tmp_path / f"out{n}" / SHARD_FOLDER / "images")) for n in (0, 1, 4)]
    assert shards[0] == shards[1] == shards[2] and len(shards[0]) == len(SIZES)
    with pytest.raises(KeyboardInterrupt):  # the images handed to the thread keep their shards
        evaluate(cfg, name, str(tmp_path / "cut"), model=StandInModel(fail_after=2), images_in_flight=4)
    assert len(os.listdir(tmp_path / "cut" / SHARD_FOLDER / "images")) == 2
    out_of_range_label(root)
    messages = []
    for in_flight in (0, 4):
        with pytest.raises(ClearCLIPError) as info:
            evaluate(cfg, name, str(tmp_path / f"bad{in_flight}"), images_in_flight=in_flight)
        messages.append(str(info.value).replace(f"bad{in_flight}", "bad"))
        assert len(os.listdir(tmp_path / f"bad{in_flight}" / SHARD_FOLDER / "images")) == 2
    assert messages[0] == messages[1] and "stopped after 2 of 5 images" in messages[0]
    skipped = [evaluate(cfg, name, str(tmp_path / f"skip{n}"), skip=True, images_in_flight=n) for n in (0, 4)]
    assert skipped[0] == skipped[1] and skipped[0]["evaluation"] == {"images": 4, "skipped_images": 1}
    assert (tmp_path / "skip0" / "skipped.txt").read_bytes() == (tmp_path / "skip4" / "skipped.txt").read_bytes()


def test_a_fixed_bad_file_is_evaluated_on_resume(cfg, dataset, tmp_path):
    root, name = dataset
    image = os.path.join(root, "images", "002.jpg")
    original = open(image, "rb").read()
    full = evaluate(cfg, name, str(tmp_path / "full"))
    corrupt_jpeg(root)
    assert evaluate(cfg, name, str(tmp_path / "out"), skip=True)["evaluation"]["skipped_images"] == 1
    with open(image, "wb") as f:  # the user repairs the file
        f.write(original)
    model = StandInModel()
    assert evaluate(cfg, name, str(tmp_path / "out"), model=model, resume=True) == full
    assert model.seen == [image] and (tmp_path / "out" / "skipped.txt").read_text() == ""


def test_a_changed_done_image_or_label_is_evaluated_again(cfg, dataset, tmp_path):
    root, name = dataset
    evaluate(cfg, name, str(tmp_path / "out"))
    label = os.path.join(root, "labels", "001.png")
    array = np.array(Image.open(label))
    array[10, 10] = (array[10, 10] + 1) % len(CLASSES)
    Image.fromarray(array).save(label)
    image = os.path.join(root, "images", "003.jpg")
    Image.open(image).save(image, quality=50)
    model = StandInModel()
    resumed = evaluate(cfg, name, str(tmp_path / "out"), model=model, resume=True)
    assert sorted(model.seen) == [os.path.join(root, "images", "001.jpg"), image]
    assert resumed == evaluate(cfg, name, str(tmp_path / "fresh"))


def test_check_label_map_accepts_classes_and_ignore():
    label = np.array([[0, 4, 255], [1, 2, 3]])
    check_label_map(label, (2, 3), 5, 255, "l.png", "i.jpg")
    with pytest.raises(ClearCLIPError, match="values -1"):
        check_label_map(label - 1, (2, 3), 5, 255, "l.png", "i.jpg")
    with pytest.raises(ClearCLIPError, match="is 3x2 but its image i.jpg is 2x3"):
        check_label_map(label, (3, 2), 5, 255, "l.png", "i.jpg")
