"""Evaluation of the benchmarks: 16-bit labels, ignore labels, bad label values, mmseg's mIoU, the
per-dataset background threshold, image bit depths, and tools/reproduce_table.py."""

import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

import benchmark_fixtures as fixtures
from conftest import REPO_ROOT, tiny_cfg

REPRODUCE = os.path.join(REPO_ROOT, "tools", "reproduce_table.py")


# ---------------------------------------------------------------------------- the evaluator
def test_mmseg_miou_counts_classes_only_predicted():
    from clearclip_d2.evaluation.metrics import mmseg_metrics

    # Detectron2's layout: rows = prediction, columns = ground truth, last row/column = ignored pixels.
    conf = np.zeros((5, 5), dtype=np.int64)
    conf[0, 0], conf[0, 1], conf[1, 0], conf[1, 1] = 5, 1, 2, 3
    conf[2, 0] = 4  # class 2 is only predicted: IoU 0, counted by mmseg, not by Detectron2
    conf[:4, 4] = 9  # predictions on ignored pixels: left out
    iou0, iou1 = 5 / (11 + 6 - 5), 3 / (4 + 5 - 3)  # class 3: neither in the ground truth nor predicted
    assert mmseg_metrics(conf)["mIoU-mmseg"] == pytest.approx(100 * (iou0 + iou1 + 0) / 3)


@pytest.fixture
def tiff_dataset(tmp_path):
    """A registered 459-class dataset with uint16 TIFF labels (65535 = ignore), like pascal_context_459_val."""
    from detectron2.data import DatasetCatalog, MetadataCatalog

    from clearclip_d2.data.datasets import register_sem_seg_dataset

    (tmp_path / "img").mkdir()
    (tmp_path / "lbl").mkdir()
    label = np.full((6, 8), 65535, np.uint16)
    label[:, :3], label[:, 3:6] = 458, 300
    Image.fromarray(np.zeros((6, 8, 3), np.uint8)).save(tmp_path / "img" / "a.jpg")
    Image.fromarray(label).save(tmp_path / "lbl" / "a.tif")
    register_sem_seg_dataset("t_tiff", str(tmp_path / "img"), str(tmp_path / "lbl"), [f"c{i}" for i in range(459)],
                             "python datasets/prepare_pascal_context.py", gt_ext="tif", ignore_label=65535)
    yield str(tmp_path / "img" / "a.jpg"), str(tmp_path / "lbl" / "a.tif"), label
    DatasetCatalog.remove("t_tiff")
    MetadataCatalog.remove("t_tiff")


def one_hot_scores(prediction, num_classes):
    return torch.nn.functional.one_hot(torch.as_tensor(prediction), num_classes).permute(2, 0, 1).float()


def test_evaluator_reads_16_bit_labels_and_ignores_65535(tiff_dataset):
    from clearclip_d2.evaluation import ClearCLIPSemSegEvaluator

    image, _, label = tiff_dataset
    prediction = np.full(label.shape, 458)
    prediction[:, 5:] = 7  # 2 columns of class 300 and 2 ignored columns predicted 7
    evaluator = ClearCLIPSemSegEvaluator("t_tiff", distributed=False)
    evaluator.reset()
    evaluator.process([{"file_name": image}], [{"sem_seg": one_hot_scores(prediction, 459)}])
    results = evaluator.evaluate()["sem_seg"]
    iou458, iou300 = 18 / (18 + 12), 0.0  # 458: 18 true pixels, 12 more predicted on class-300 pixels
    assert results["IoU-c458"] == pytest.approx(100 * iou458) and results["IoU-c300"] == pytest.approx(0)
    assert results["mIoU"] == pytest.approx(100 * (iou458 + iou300) / 2)
    assert results["mIoU-mmseg"] == pytest.approx(100 * (iou458 + iou300 + 0) / 3)  # 7 only predicted
    assert math.isnan(results["ACC-c7"])


def test_label_values_outside_the_classes_are_counted_and_named(tiff_dataset):
    from clearclip_d2.evaluation import ClearCLIPSemSegEvaluator
    from clearclip_d2.utils.errors import ClearCLIPError

    image, label_path, label = tiff_dataset
    bad = label.copy()
    bad[0, :2] = 459
    bad[1, 0] = 60000
    Image.fromarray(bad).save(label_path)
    evaluator = ClearCLIPSemSegEvaluator("t_tiff", distributed=False)
    evaluator.reset()
    with pytest.raises(ClearCLIPError, match=rf"{label_path} has 3 pixels with values outside 0..458 .*459, 60000"):
        evaluator.process([{"file_name": image}], [{"sem_seg": one_hot_scores(np.zeros(label.shape, int), 459)}])
    from clearclip_d2.evaluation.bad_inputs import check_label_map

    with pytest.raises(ClearCLIPError, match="x.png has shape .*single-channel"):
        check_label_map(np.zeros((2, 2, 3), int), (2, 2), 5, 255, "x.png", "x.jpg")


# ---------------------------------------------------------------------------- the threshold
def test_threshold_follows_the_dataset_unless_given(tiny_model_files):
    from detectron2.modeling import build_model

    model = build_model(tiny_cfg(tiny_model_files, **{"DATASETS.TEST": ("voc_2012_val_21",)}))
    assert model.prob_threshold == 0.5 and len(model.vocabulary) == 21
    model.use_dataset("pascal_context_60_val")
    assert model.prob_threshold == 0.15 and len(model.vocabulary) == 60
    model.use_dataset("voc_2012_val_20")
    assert model.prob_threshold == 0.0
    model.use_dataset("coco_2017_val_object_sem_seg")
    assert model.prob_threshold == 0.4
    fixed = build_model(tiny_cfg(tiny_model_files, **{"DATASETS.TEST": ("voc_2012_val_21",),
                                                       "MODEL.CLEARCLIP.PROB_THRESHOLD": 0.3}))
    fixed.use_dataset("coco_2017_val_object_sem_seg")
    assert fixed.prob_threshold == 0.3 and len(fixed.vocabulary) == 81


@pytest.mark.parametrize("value, ok", [(-1.0, True), (0.0, True), (0.5, True), (-0.5, False), (1.5, False)])
def test_prob_threshold_values(tiny_model_files, value, ok):
    from clearclip_d2.config import check_clearclip_config
    from clearclip_d2.utils.errors import ClearCLIPError

    cfg = tiny_cfg(tiny_model_files, **{"MODEL.CLEARCLIP.PROB_THRESHOLD": value})
    if ok:
        check_clearclip_config(cfg)
    else:
        with pytest.raises(ClearCLIPError, match="PROB_THRESHOLD"):
            check_clearclip_config(cfg)


# ---------------------------------------------------------------------------- image bit depths
def test_16_bit_images_are_refused_grayscale_and_cmyk_converted(tmp_path):
    from clearclip_d2.data import read_image_or_fail
    from clearclip_d2.utils.errors import ClearCLIPError

    gray, cmyk, deep = str(tmp_path / "g.jpg"), str(tmp_path / "c.jpg"), str(tmp_path / "d.png")
    Image.fromarray(np.full((4, 5), 90, np.uint8)).save(gray)
    Image.new("CMYK", (5, 4), (0, 255, 255, 0)).save(cmyk)
    Image.fromarray(np.full((4, 5), 40000, np.uint16)).save(deep)
    assert read_image_or_fail(gray, "RGB").shape == (4, 5, 3)
    red = read_image_or_fail(cmyk, "RGB")
    assert red.shape == (4, 5, 3) and red[..., 0].min() > 200 and red[..., 1].max() < 60
    with pytest.raises(ClearCLIPError, match=r"d\.png has more than 8 bits a channel \(PIL mode I;16"):
        read_image_or_fail(deep, "RGB")


# ---------------------------------------------------------------------------- reproduce_table.py
def fake_results(num_classes, miou, mmseg):
    results = {"mIoU": miou, "mIoU-mmseg": mmseg, "pACC": 70.0, "fwIoU": 50.0}
    for i in range(num_classes):
        results[f"IoU-class{i}"] = float(i % 90) if i % 7 else None
        results[f"ACC-class{i}"] = 1.0
    return {"sem_seg": results}


def test_reproduce_table_from_metrics_files(tmp_path, capsys):
    metrics = tmp_path / "metrics.json"
    metrics.write_text(json.dumps({"voc_2012_val_20": fake_results(20, 81.0, 79.9),
                                   "ade20k_full_sem_seg_val": fake_results(847, 9.0, 8.0)}))
    from clearclip_d2.engine.reproduce import reproduce_table

    status = reproduce_table(None, "ViT-B-16", output_dir=str(tmp_path / "out"), from_metrics=[str(metrics)])
    out = capsys.readouterr().out
    assert status == 0
    table = (tmp_path / "out" / "results.md").read_text()
    assert "| VOC20 | `voc_2012_val_20` | 20 | 79.90 | 80.90 | -1.00 | 81.00 | 70.00 |" in table
    assert "| ADE20K-847 | `ade20k_full_sem_seg_val` | 847 | 8.00 | – | – | 9.00 | 70.00 |" in table
    assert "skipping context59: no results for pascal_context_59_val" in out
    assert "- Context59 (`pascal_context_59_val`): no results for" in table
    for key in ("voc20", "ade20k_full"):
        with Image.open(tmp_path / "out" / "per_class_iou" / f"{key}.png") as chart:
            assert chart.format == "PNG" and chart.width > 100
    assert not (tmp_path / "out" / "per_class_iou" / "context59.png").exists()


def test_reproduce_table_evaluates_prepared_and_skips_the_others(tmp_path, tiny_model_files):
    """One real run: VOC20 prepared under a tiny $DETECTRON2_DATASETS and evaluated, Cityscapes skipped."""
    root = tmp_path / "data"
    fixtures.make_voc(str(root), np.random.default_rng(0))
    env = dict(os.environ, DETECTRON2_DATASETS=str(root), PYTHONWARNINGS="ignore")
    prepare = subprocess.run([sys.executable, os.path.join(REPO_ROOT, "datasets", "prepare_voc.py"), "--variants",
                              "voc20"], env=env, capture_output=True, text=True, timeout=300)
    assert prepare.returncode == 0, prepare.stderr
    model_json, checkpoint = tiny_model_files
    result = subprocess.run(
        [sys.executable, REPRODUCE, "--num-gpus", "1", "--output-dir", str(tmp_path / "out"),
         "--benchmarks", "voc20,cityscapes", "MODEL.CLEARCLIP.MODEL_NAME", model_json,
         "MODEL.CLEARCLIP.PRETRAINED", checkpoint, "MODEL.CLEARCLIP.PROMPT_TEMPLATES", "['a photo of a {}.']",
         "INPUT.MIN_SIZE_TEST", "64",
         "MODEL.CLEARCLIP.SLIDE_CROP", "48", "MODEL.CLEARCLIP.SLIDE_STRIDE", "32", "DATALOADER.NUM_WORKERS", "0"],
        env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert "skipping cityscapes: dataset cityscapes_fine_sem_seg_val: folder" in result.stdout
    assert "prepare_cityscapes.py" in result.stdout
    metrics = json.loads((tmp_path / "out" / "voc20" / "metrics.json").read_text())["voc_2012_val_20"]["sem_seg"]
    table = (tmp_path / "out" / "results.md").read_text()
    row = f"| VOC20 | `voc_2012_val_20` | 20 | {metrics['mIoU-mmseg']:.2f} | 80.90 | {metrics['mIoU-mmseg'] - 80.9:+.2f} |"
    assert row in table and row in result.stdout
    assert (tmp_path / "out" / "per_class_iou" / "voc20.png").is_file()


def test_reproduce_table_with_nothing_prepared_exits_2(tmp_path):
    env = dict(os.environ, DETECTRON2_DATASETS=str(tmp_path / "empty"), PYTHONWARNINGS="ignore")
    result = subprocess.run([sys.executable, REPRODUCE, "--benchmarks", "voc21", "--output-dir", str(tmp_path / "o")],
                            env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 2 and "reproduce_table.py: error: none of the selected benchmarks" in result.stderr
    assert "skipping voc21" in result.stdout and "Traceback" not in result.stderr
