"""One-line refusals of inputs that gave silently wrong results or tracebacks (issue 12)."""

import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from conftest import REPO_ROOT, capturing_warnings, tiny_cfg
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


# --------------------------------------------------------------------------- item 6 and item 8: configs
def test_a_missing_base_file_is_named_with_where_it_was_looked_for(tmp_path):
    from clearclip_d2.config import load_clearclip_config

    copied = tmp_path / "my_coco.yaml"
    copied.write_text((__import__("pathlib").Path(REPO_ROOT) / "configs" / "clearclip_coco.yaml").read_text())
    with pytest.raises(ClearCLIPError, match=rf"the _BASE_ file of {copied} does not exist: looked for {tmp_path / 'Base-ClearCLIP.yaml'}"):
        load_clearclip_config(str(copied))


def test_a_yaml_syntax_error_is_one_line_with_its_place(tmp_path):
    from clearclip_d2.config import load_clearclip_config

    bad = tmp_path / "bad.yaml"
    bad.write_text("MODEL:\n  CLEARCLIP:\n    LOGIT_SCALE: [40\n  DEVICE: cpu\n")
    with pytest.raises(ClearCLIPError, match=rf"config file {bad} is not valid YAML: .*{bad}, line \d+, column \d+"):
        load_clearclip_config(str(bad))


def test_an_integer_for_a_float_key_is_that_float(tmp_path):
    from clearclip_d2.config import load_clearclip_config

    config = tmp_path / "zero.yaml"
    config.write_text("MODEL:\n  CLEARCLIP:\n    PROB_THRESHOLD: 0\n    LOGIT_SCALE: 40\n")
    cfg = load_clearclip_config(str(config), ["MODEL.CLEARCLIP.MASK_MIN_SCORE", "1"])
    assert cfg.MODEL.CLEARCLIP.PROB_THRESHOLD == 0.0 and isinstance(cfg.MODEL.CLEARCLIP.PROB_THRESHOLD, float)
    assert cfg.MODEL.CLEARCLIP.LOGIT_SCALE == 40.0 and cfg.MODEL.CLEARCLIP.MASK_MIN_SCORE == 1.0
    assert load_clearclip_config(str(config), ["MODEL.CLEARCLIP.PROB_THRESHOLD", "0"]).MODEL.CLEARCLIP.PROB_THRESHOLD == 0.0
    with pytest.raises(ClearCLIPError, match="bad config override"):  # a string is still refused
        load_clearclip_config(str(config), ["MODEL.CLEARCLIP.PROB_THRESHOLD", "high"])


@pytest.mark.parametrize(
    "overrides, fragment",
    [
        ({"MODEL.CLEARCLIP.TEXT_BATCH_SIZE": 0}, "TEXT_BATCH_SIZE 0 must be > 0"),
        ({"MODEL.CLEARCLIP.TEXT_BATCH_SIZE": -4}, "TEXT_BATCH_SIZE -4 must be > 0"),
        ({"DATALOADER.NUM_WORKERS": -1}, "DATALOADER.NUM_WORKERS -1 must be >= 0"),
    ],
)
def test_bad_counts_are_refused(tiny_model_files, overrides, fragment):
    from clearclip_d2.config import check_clearclip_config

    with pytest.raises(ClearCLIPError, match=fragment.replace(".", r"\.")):
        check_clearclip_config(tiny_cfg(tiny_model_files, **overrides))


def test_text_batch_size_is_checked_where_the_model_takes_it(tiny_model_files):
    from detectron2.modeling import build_model

    with pytest.raises(ClearCLIPError, match="TEXT_BATCH_SIZE 0"):
        build_model(tiny_cfg(tiny_model_files, **{"MODEL.CLEARCLIP.TEXT_BATCH_SIZE": 0}))


@pytest.mark.parametrize(
    "vision, fragment",
    [
        ({"layers": 0}, "vision_cfg.layers 0 must be a whole number >= 1"),
        ({"patch_size": 512}, "vision_cfg.patch_size 512 must be a positive size no larger than vision_cfg.image_size 224"),
        ({"patch_size": 0}, "vision_cfg.patch_size 0"),
    ],
)
def test_a_model_json_that_cannot_be_built_is_named(tmp_path, vision, fragment):
    import json

    from conftest import TINY_VIT
    from clearclip_d2.modeling.clip.loading import resolve_architecture

    config = json.loads(json.dumps(TINY_VIT))
    config["vision_cfg"].update(vision)
    path = tmp_path / "broken-vit.json"
    path.write_text(json.dumps(config))
    with pytest.raises(ClearCLIPError, match=f"model-config JSON {path}: {fragment}".replace(".", r"\.")):
        resolve_architecture(str(path))


def test_a_missing_model_weights_file_is_named(tiny_model_files, tmp_path):
    from clearclip_d2.engine import ClearCLIPPredictor
    from clearclip_d2.engine.trainer import check_run_config

    cfg = tiny_cfg(tiny_model_files, **{"MODEL.WEIGHTS": str(tmp_path / "model_final.pth")})
    for action in (lambda: check_run_config(cfg, eval_only=True), lambda: ClearCLIPPredictor(cfg)):
        with pytest.raises(ClearCLIPError, match=rf"MODEL\.WEIGHTS {tmp_path / 'model_final.pth'} does not exist"):
            action()


# --------------------------------------------------------------------------- item 8: output folders
UNWRITABLE = "/proc/clearclip_d2_cannot_write_here"  # not writable, not even by root


def test_an_unwritable_or_full_output_folder_is_named(tmp_path, monkeypatch):
    import errno

    from clearclip_d2.utils import io

    with pytest.raises(ClearCLIPError, match=f"OUTPUT_DIR {UNWRITABLE} cannot be written .*choose a folder you can write to"):
        io.check_writable_folder(UNWRITABLE)

    def full_disk(fd):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(io.os, "fsync", full_disk)
    with pytest.raises(ClearCLIPError, match=f"OUTPUT_DIR {tmp_path} cannot be written \\(No space left on device\\); free some space"):
        io.check_writable_folder(str(tmp_path))


def test_demo_names_an_unwritable_output_before_building_the_model(tmp_path, tiny_model_files, monkeypatch):
    from PIL import Image

    from clearclip_d2.engine import demo

    monkeypatch.setattr(demo, "ClearCLIPPredictor", lambda *a, **k: pytest.fail("the model was built"))
    image = tmp_path / "a.png"
    Image.fromarray(np.zeros((20, 20, 3), np.uint8)).save(image)
    cfg = tiny_cfg(tiny_model_files)
    with pytest.raises(ClearCLIPError, match=f"--output {UNWRITABLE} cannot be written"):
        demo.run_demo(cfg, [str(image)], UNWRITABLE, vocabulary="cat; dog")


def test_train_net_names_an_unwritable_output_dir(tiny_model_files, tmp_path):
    from synthetic_coco import write_coco_stuff_layout

    root = write_coco_stuff_layout(tmp_path / "datasets", [(60, 80)], num_labels=12, block=20)
    model_json, checkpoint = tiny_model_files
    cmd = [sys.executable, os.path.join(REPO_ROOT, "tools", "train_net.py"), "--eval-only",
           "--config-file", os.path.join(REPO_ROOT, "configs", "clearclip_coco.yaml"),
           "MODEL.CLEARCLIP.MODEL_NAME", model_json, "MODEL.CLEARCLIP.PRETRAINED", checkpoint, "OUTPUT_DIR", UNWRITABLE]
    env = dict(os.environ, PYTHONWARNINGS="ignore", DETECTRON2_DATASETS=str(root))
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    assert result.returncode == 2, result.stderr[-2000:]
    assert f"OUTPUT_DIR {UNWRITABLE} cannot be written" in result.stderr.strip().splitlines()[-1]
    assert "Traceback" not in result.stderr


# --------------------------------------------------------------------------- item 11
def test_a_video_that_stops_decoding_part_way_is_warned_about(tmp_path, caplog):
    import cv2

    from clearclip_d2.engine.video import probe_video, read_video_frames

    path = tmp_path / "clip.avi"
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 5.0, (64, 48))
    rng = np.random.default_rng(0)
    for _ in range(10):
        writer.write(rng.integers(0, 256, (48, 64, 3), dtype=np.uint8))
    writer.release()
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])  # a truncated download
    expected = probe_video(str(path)).frames
    with capturing_warnings(caplog, "clearclip_d2.engine.video"):
        frames = list(read_video_frames(str(path), "RGB", expected))
    assert 0 < len(frames) < expected == 10
    assert f"frames stopped decoding after frame {len(frames)} of the 10" in caplog.text


# --------------------------------------------------------------------------- item 7
def evaluate_with_a_worker(cfg, name, output_dir, skip):
    """test_resumable.evaluate with the images read in a DataLoader worker process."""
    from detectron2.data import build_detection_test_loader

    from test_resumable import StandInModel
    from clearclip_d2.data import ClearCLIPDatasetMapper
    from clearclip_d2.evaluation import ClearCLIPSemSegEvaluator
    from clearclip_d2.evaluation.resumable import plan_evaluation, run_planned_evaluation

    evaluator = ClearCLIPSemSegEvaluator(name, output_dir=output_dir, skip_bad_images=skip)
    mapper = ClearCLIPDatasetMapper(cfg, False, mark_bad_images=True)
    plan = plan_evaluation(cfg, name, output_dir, False)
    return run_planned_evaluation(
        StandInModel(), plan, evaluator, lambda dicts: build_detection_test_loader(dicts, mapper=mapper, num_workers=1)
    )


def test_an_extreme_aspect_ratio_is_a_bad_image_caught_by_skip_bad_images(tiny_model_files, tmp_path):
    from test_resumable import SIZES, register, unregister, write_dataset

    write_dataset(str(tmp_path / "data"), sizes=SIZES[:2] + [(2, 10000)])
    name = register(str(tmp_path / "data"))
    try:
        cfg = tiny_cfg(tiny_model_files)
        with pytest.raises(ClearCLIPError, match=r"image .*002\.jpg: a 10000x2 image resized .* aspect ratio is too extreme"):
            evaluate_with_a_worker(cfg, name, str(tmp_path / "stop"), skip=False)
        results = evaluate_with_a_worker(cfg, name, str(tmp_path / "skip"), skip=True)
        assert results["evaluation"] == {"images": 2, "skipped_images": 1}
        assert "002.jpg" in (tmp_path / "skip" / "skipped.txt").read_text()
    finally:
        unregister(name)


# --------------------------------------------------------------------------- item 8: EXIF
def test_an_exif_rotated_image_that_mismatches_its_label_map_says_exif(tmp_path):
    from PIL import Image

    from clearclip_d2.data import read_image_or_fail
    from clearclip_d2.evaluation.bad_inputs import check_label_map

    image_file = tmp_path / "photo.jpg"
    exif = Image.Exif()
    exif[0x0112] = 6  # stored landscape, shown portrait
    Image.fromarray(np.zeros((30, 40, 3), np.uint8)).save(image_file, exif=exif)
    image = read_image_or_fail(str(image_file), "RGB")
    assert image.shape[:2] == (40, 30)
    label = np.zeros((30, 40), np.int64)  # made from the stored pixels
    with pytest.raises(ClearCLIPError, match="label map .* is 40x30 but its image .*photo.jpg is 30x40 as read: its EXIF orientation 6"):
        check_label_map(label, image.shape[:2], 3, 255, "photo.png", str(image_file))
