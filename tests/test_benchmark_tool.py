"""tools/benchmark.py on the tiny model: runs as a subprocess and writes the JSON report."""

import json
import os
import re
import subprocess
import sys

import pytest
import torch

from conftest import REPO_ROOT
from clearclip_d2.engine import benchmark as bench
from clearclip_d2.modeling.clip.dense_encoder import DenseCLIPEncoder

MODE_FIELDS = {
    "images_per_s", "latency_median_ms", "latency_p90_ms", "peak_rss_mib", "encoder_gflops_per_image",
    "achieved_gflops_per_s", "fraction_of_matmul_peak", "encoder_alone",
}


def run_benchmark(args, env_extra=None):
    env = dict(os.environ, PYTHONPATH=REPO_ROOT, **(env_extra or {}))
    return subprocess.run(
        [sys.executable, os.path.join(REPO_ROOT, "tools", "benchmark.py"), *args],
        capture_output=True, text=True, env=env, timeout=300,
    )


def test_benchmark_runs_on_the_tiny_model_and_writes_json(tiny_model_files, tmp_path):
    model_json, checkpoint = tiny_model_files
    json_path = str(tmp_path / "bench.json")
    result = run_benchmark([
        "--config-file", os.path.join(REPO_ROOT, "configs", "clearclip_coco.yaml"),
        "--size", "80x130", "--runs", "3", "--warmup", "1", "--threads", "1", "--batch", "2", "--json", json_path,
        "--per-pixel-classes", "3,20", "--opts", "MODEL.CLEARCLIP.MODEL_NAME", model_json, "MODEL.CLEARCLIP.PRETRAINED", checkpoint,
        "MODEL.CLEARCLIP.PROMPT_TEMPLATES", "['a photo of a {}.']", "MODEL.CLEARCLIP.SLIDE_CROP", "64",
        "MODEL.CLEARCLIP.SLIDE_STRIDE", "32", "MODEL.CLEARCLIP.WINDOW_BATCH", "4", "MODEL.DEVICE", "cpu",
        "MODEL.CLEARCLIP.CACHE_DIR", str(tmp_path / "cache"),
    ])
    assert result.returncode == 0, result.stderr[-3000:]
    assert "speed-up fast / reference" in result.stdout and "images/s" in result.stdout
    assert re.search(r"\| encoder alone: windows per batch +\| 4 +\| 1 +\|", result.stdout), result.stdout
    with open(json_path) as f:
        report = json.load(f)
    assert report["threads"] == 1 and report["batch"] == 2 and report["image_size"] == [80, 130]
    assert report["windows_per_image"] == 8 and report["window_batch"] == 4
    assert report["matmul_peak_gflops_per_s"] > 0 and report["speedup"] > 0
    assert report["max_probability_difference"] < 1e-4
    for mode in ("fast", "reference"):
        assert MODE_FIELDS <= set(report["modes"][mode]), set(report["modes"][mode])
        assert report["modes"][mode]["images_per_s"] > 0
    assert report["modes"]["fast"]["encoder_alone"]["windows_per_batch"] == 4
    assert report["modes"]["reference"]["encoder_alone"]["windows_per_batch"] == 1
    # the reference computes the last block twice
    assert report["modes"]["reference"]["encoder_gflops_per_image"] > report["modes"]["fast"]["encoder_gflops_per_image"]
    assert os.listdir(tmp_path / "cache")  # the text embeddings were cached
    per_pixel = report["per_pixel"]
    assert [row["classes"] for row in per_pixel["classes"]] == [3, 20] and per_pixel["encoder_s"] > 0
    assert all(row["labels_over_encoder"] > 0 and row["probabilities_over_encoder"] > 0 for row in per_pixel["classes"])
    assert report["text_embedding_large"]["prompts"] == 20 * 80 and "text embedding of 1600 prompts" in result.stdout


def test_benchmark_bad_size_is_one_line(tiny_model_files):
    result = run_benchmark(["--config-file", os.path.join(REPO_ROOT, "configs", "clearclip_coco.yaml"), "--size", "big"])
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == ["benchmark.py: error: --size 'big' must be HEIGHTxWIDTH in pixels, e.g. 448x640"]


def test_benchmark_of_another_meta_architecture_is_one_line(tiny_model_files):
    config = os.path.join(REPO_ROOT, "configs", "clearclip_backbone_sem_seg_fpn_coco.yaml")
    result = run_benchmark(["--config-file", config, "--opts", "MODEL.DEVICE", "cpu"])
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "benchmark.py: error: MODEL.META_ARCHITECTURE is 'SemanticSegmentor'; benchmark.py runs ClearCLIPSegmentor"
    ]


def test_encoder_flops_count_every_matrix_product(tiny_clip):
    """FLOPs (multiply-add = 2) of the tiny encoder on a 64 x 64 input, counted by hand."""
    model, _ = tiny_clip
    encoder = DenseCLIPEncoder(model.visual)
    tokens, width, patch, embed, layers = 1 + 16, 64, 16, 32, 2
    per_block_linear = tokens * width * (3 * width + width + 4 * width + 4 * width)
    attention = 2 * tokens * tokens * width
    conv = 16 * 3 * patch * patch * width
    last_block = tokens * width * (3 * width + width) + attention  # attention branch only
    macs = conv + (layers - 1) * (per_block_linear + attention) + last_block + 16 * width * embed
    assert bench.encoder_flops(encoder, 64, 64) == 2 * macs
    reference = bench.encoder_flops(encoder, 64, 64, reference_style=True)
    assert reference == 2 * (macs + per_block_linear + attention)


def test_window_sizes_and_latency_summary():
    assert bench.window_sizes(80, 130, 64, 32, 16) == {(64, 64): 8}
    assert bench.window_sizes(40, 60, 64, 32, 16) == {(48, 64): 1}
    assert bench.window_sizes(50, 70, 0, 0, 16) == {(48, 64): 1}
    summary = bench.latency_summary([1.0, 2.0, 3.0, 4.0, 10.0], images_per_run=2)
    assert summary["images_per_s"] == 0.5 and summary["latency_median_ms"] == 3000.0 and summary["latency_p90_ms"] == 10000.0
    assert bench.matmul_peak_flops(torch.device("cpu"), size=64, seconds=0.01) > 0


def test_encoders_without_a_reference_style_path_are_timed_fast_only():
    from clearclip_d2.engine.benchmark import modes_for_encoder
    from clearclip_d2.utils.errors import ClearCLIPError

    assert modes_for_encoder(["fast", "reference"], "decomposed", False) == (["fast", "reference"], False)
    assert modes_for_encoder(["fast", "reference"], "sc_clip", False) == (["fast"], True)
    with pytest.raises(ClearCLIPError, match="--modes reference.*ENCODER decomposed only.*use --modes fast"):
        modes_for_encoder(["reference"], "resclip", False)


LOOP_PARTS = ("wall_ms", "model_ms", "loader_wait_ms", "process_ms", "other_ms", "evaluate_ms", "overhead_ms")


def test_benchmark_dataset_times_the_evaluation_loop(tiny_model_files, tmp_path):
    """--dataset runs Trainer.test's loop (test loader, labels-only model, ClearCLIP's evaluator
    with a shard store in a temporary folder, removed afterwards) and reports every part."""
    from synthetic_coco import write_coco_stuff_layout

    model_json, checkpoint = tiny_model_files
    root = write_coco_stuff_layout(tmp_path / "datasets", [(60, 80), (50, 70), (60, 80), (40, 64)], num_labels=171, block=8)
    temporary = tmp_path / "tmp"
    temporary.mkdir()
    json_path = str(tmp_path / "loop.json")
    result = run_benchmark([
        "--config-file", os.path.join(REPO_ROOT, "configs", "clearclip_coco.yaml"), "--dataset", "coco_2017_val_stuff_sem_seg",
        "--num-images", "3", "--threads", "1", "--gpu-model-ms", "40", "--json", json_path,
        "--opts", "MODEL.CLEARCLIP.MODEL_NAME", model_json, "MODEL.CLEARCLIP.PRETRAINED", checkpoint,
        "MODEL.CLEARCLIP.PROMPT_TEMPLATES", "['a photo of a {}.']", "INPUT.MIN_SIZE_TEST", "64", "INPUT.MAX_SIZE_TEST", "128",
        "MODEL.DEVICE", "cpu", "MODEL.CLEARCLIP.CACHE_DIR", str(tmp_path / "cache"), "DATALOADER.NUM_WORKERS", "1",
    ], env_extra={"DETECTRON2_DATASETS": str(root), "TMPDIR": str(temporary), "PYTHONWARNINGS": "ignore"})
    assert result.returncode == 0, result.stderr[-3000:]
    assert "everything else" in result.stdout and "of a GPU-sized model's 40 ms" in result.stdout, result.stdout
    with open(json_path) as f:
        report = json.load(f)
    assert report["images"] == 3 and report["num_workers"] == 1 and report["num_queries"] == 171
    loop = report["loop"]
    assert all(loop[key] >= 0 for key in LOOP_PARTS), loop
    assert loop["running_images"] == 2  # per image: the loop running, from the second image on
    parts = loop["loader_wait_ms"] + loop["model_ms"] + loop["process_ms"]
    assert parts <= loop["wall_ms"] + 1e-6 and loop["other_ms"] == pytest.approx(loop["wall_ms"] - parts)
    assert loop["overhead_ms"] == pytest.approx(loop["wall_ms"] - loop["model_ms"] + loop["evaluate_ms"]) and loop["model_ms"] > 0
    assert set(loop["process_parts_ms"]) == {"to_cpu", "collect"}
    assert 0 <= sum(loop["process_parts_ms"].values()) <= loop["process_ms"] + 1e-6
    worker = loop["evaluator_worker_ms"]
    assert set(worker) == {"label_read", "confusion", "boundary", "rle", "shard_write"}, worker
    assert all(value > 0 for value in worker.values()) and loop["evaluator_worker_total_ms"] == pytest.approx(sum(worker.values()))
    assert loop["gpu_model_ms"] == 40 and loop["bound_ms"] == pytest.approx(4.0)
    assert loop["overhead_over_gpu_model"] == pytest.approx(loop["overhead_ms"] / 40)
    assert loop["bound_met"] == (loop["overhead_ms"] <= 4.0)
    assert loop["mapping_ms"] > 0 and loop["plan_s"] >= 0
    assert all(loop[one_off] >= 0 for one_off in ("startup_s", "shutdown_s", "drain_s")), loop
    assert os.listdir(temporary) == []  # the shards and files went to a temporary folder, removed


def test_benchmark_gpu_model_ms_must_be_positive(tiny_model_files):
    result = run_benchmark(["--config-file", os.path.join(REPO_ROOT, "configs", "clearclip_coco.yaml"), "--gpu-model-ms", "0"])
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == ["benchmark.py: error: --gpu-model-ms 0.0 must be a positive time in milliseconds"]


def test_benchmark_loop_needs_two_images():
    result = run_benchmark(["--config-file", os.path.join(REPO_ROOT, "configs", "clearclip_coco.yaml"), "--dataset",
                            "coco_2017_val_stuff_sem_seg", "--num-images", "1"])
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "benchmark.py: error: --num-images 1: the loop needs at least 2 images (the first image's iteration holds the loader's start-up)"
    ]
