#!/usr/bin/env python
"""Inference speed of ClearCLIP: the fast path against the reference-style path, same run.

    python tools/benchmark.py --config-file configs/clearclip_coco.yaml --size 448x640 \
        --threads 2 --runs 10 --json output/benchmark.json \
        --opts MODEL.CLEARCLIP.PRETRAINED "" MODEL.CLEARCLIP.WINDOW_BATCH 8
    python tools/benchmark.py --config-file configs/clearclip_coco.yaml --dataset coco_2017_test_stuff_sem_seg --num-images 20

Per mode it prints images/s, the median and 90th-percentile latency of a forward over
``--batch`` images (after ``--warmup`` untimed runs), the peak memory (CPU RSS of the process;
CUDA max allocated), the encoder FLOPs per image (fvcore; a multiply-add counts 2), the
achieved FLOP/s (encoder FLOPs x images/s, so everything else counts as overhead) and that
as a fraction of the matrix-product peak measured at the start, then the same for the image
encoder alone on one window batch. ``fast`` is the plugin (windows in batches of
``WINDOW_BATCH``, the last block once, fused attention); ``reference`` runs one window at a
time with open_clip's blocks and the last block twice, as the authors' code does. Both give
the same probabilities (the largest difference is printed). ``--size HxW`` is the model's
input size (after the test-time resize), a synthetic image; ``--dataset`` maps the first
``--num-images`` images of a registered dataset with the test mapper.
"""

import argparse
import itertools
import logging
import os
import sys
import time
import warnings
from typing import List

warnings.filterwarnings("ignore", message=r".*torch\.jit\.script.*", category=FutureWarning)
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402
from tabulate import tabulate  # noqa: E402

from clearclip_d2.engine import benchmark as bench  # noqa: E402
from clearclip_d2.modeling.clip.precision import PRECISIONS  # noqa: E402
from clearclip_d2.modeling.inference.slide_inference import slide_window_boxes  # noqa: E402
from clearclip_d2.utils import ClearCLIPError, atomic_write_json  # noqa: E402
from clearclip_d2.utils.cli import exit_on_user_error, load_segmentor_config  # noqa: E402

PROGRAM = "benchmark.py"

PLACEHOLDER_VOCABULARY = ["background", "person", "car", "tree", "sky", "road", "building", "grass"]


def parse_size(text: str):
    try:
        height, width = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise ClearCLIPError(f"--size {text!r} must be HEIGHTxWIDTH in pixels, e.g. 448x640") from None
    if height <= 0 or width <= 0:
        raise ClearCLIPError(f"--size {text!r} must be positive")
    return height, width


def get_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config-file", required=True, metavar="FILE")
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--size", default="448x640", help="model input HEIGHTxWIDTH of a synthetic image (default 448x640)")
    source.add_argument("--dataset", default="", help="a registered dataset: its first --num-images images")
    parser.add_argument("--num-images", type=int, default=4, help="images of --dataset (default 4)")
    parser.add_argument("--batch", type=int, default=1, help="images per forward (default 1)")
    parser.add_argument("--runs", type=int, default=10, help="timed forwards per mode (default 10)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed forwards first (default 2)")
    parser.add_argument("--threads", type=int, default=0, help="torch.set_num_threads (default: PyTorch's choice)")
    parser.add_argument("--modes", default="fast,reference", help="comma-separated: fast, reference (default both)")
    parser.add_argument("--no-flops", action="store_true", help="skip the fvcore FLOP count (slow for big models)")
    parser.add_argument("--json", default="", metavar="PATH", help="also write the results as JSON (atomically)")
    parser.add_argument("--opts", default=[], nargs=argparse.REMAINDER, help="config overrides KEY VALUE ...")
    return parser


def build_inputs(cfg, args):
    """Batches (lists of Detectron2 input dicts) to run: synthetic or from a dataset."""
    if args.dataset:
        from detectron2.data import DatasetCatalog

        from clearclip_d2.data import ClearCLIPDatasetMapper

        if args.dataset not in DatasetCatalog.list():
            raise ClearCLIPError(f"--dataset {args.dataset!r} is not registered; registered: {', '.join(DatasetCatalog.list())}")
        mapper = ClearCLIPDatasetMapper(cfg, False)
        images = [mapper(d) for d in DatasetCatalog.get(args.dataset)[: args.num_images]]
    else:
        height, width = parse_size(args.size)
        generator = torch.Generator().manual_seed(0)
        images = [{"image": torch.randint(0, 256, (3, height, width), dtype=torch.uint8, generator=generator)}]
    images = [{"image": d["image"], "height": d["image"].shape[-2], "width": d["image"].shape[-1]} for d in images]
    batch = max(args.batch, 1)
    cycled = [images[i % len(images)] for i in range(max(batch, len(images)))]
    return [cycled[i : i + batch] for i in range(0, len(cycled) - batch + 1, batch)]


def build_benchmark_model(cfg, args):
    from detectron2.modeling import build_model

    from clearclip_d2.modeling.meta_arch import vocabulary_from_config

    model = build_model(cfg).eval()
    if args.dataset:
        model.use_dataset_vocabulary(args.dataset)
    elif vocabulary_from_config(cfg) is None:
        model.set_vocabulary(PLACEHOLDER_VOCABULARY)
    return model


def measure_mode(model, batches, args, reference_style: bool, flops_per_image: float, peak_flops: float):
    """Timing, memory and FLOP figures of one mode (fast or reference-style)."""
    device = model.device
    model.reference_style = reference_style
    next_batch = itertools.cycle(batches).__next__

    def run():
        return model(next_batch())

    with torch.no_grad():
        run()  # first call: allocations, caches
        rss_before = bench.current_rss_mib()
        exact_peak = bench.reset_peak_memory(device)
        seconds = bench.time_runs(run, args.runs, args.warmup, device)
        memory = bench.peak_memory_mib(device)
    result = bench.latency_summary(seconds, len(batches[0]))
    result.update(memory)
    result["rss_before_runs_mib"] = rss_before
    result["peak_rss_is_lifetime"] = not exact_peak
    if flops_per_image:
        result["encoder_gflops_per_image"] = flops_per_image / 1e9
        result["achieved_gflops_per_s"] = flops_per_image * result["images_per_s"] / 1e9
        result["fraction_of_matmul_peak"] = flops_per_image * result["images_per_s"] / peak_flops
    return result


def measure_encoder_alone(model, reference_style: bool, args, peak_flops: float, window_flops: float):
    """The image encoder on one batch of full windows (WINDOW_BATCH; 1 window for the reference);
    ``window_flops``: FLOPs of one window."""
    encoder, device = model.encoder, model.device
    crop = model.slide_crop or 448
    windows = 1 if reference_style else model.window_batch
    images = torch.randn(windows, 3, crop, crop, device=device)
    forward = encoder.reference_style_forward if reference_style else encoder
    from clearclip_d2.modeling.clip.precision import with_precision

    encode = with_precision(forward, device, model.precision)
    with torch.no_grad():
        seconds = bench.time_runs(lambda: encode(images), max(args.runs // 2, 2), 1, device)
    result = {"windows_per_batch": windows, "window_size": crop}
    result["windows_per_s"] = windows * len(seconds) / sum(seconds)
    if window_flops:
        result["achieved_gflops_per_s"] = window_flops * result["windows_per_s"] / 1e9
        result["fraction_of_matmul_peak"] = window_flops * result["windows_per_s"] / peak_flops
    return result


def max_probability_difference(model, batch) -> float:
    """Largest difference between the fast and the reference-style outputs on one batch."""
    outputs = {}
    with torch.no_grad():
        for reference_style in (False, True):
            model.reference_style = reference_style
            outputs[reference_style] = model(batch)
    model.reference_style = False
    difference = 0.0
    for fast, reference in zip(outputs[False], outputs[True]):
        for key in fast:
            difference = max(difference, float((fast[key].float() - reference[key].float()).abs().max()))
    return difference


def run_benchmark(args) -> dict:
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    if not modes or any(m not in ("fast", "reference") for m in modes):
        raise ClearCLIPError(f"--modes {args.modes!r}: choose from fast, reference (comma-separated)")
    if args.runs < 1 or args.warmup < 0 or args.batch < 1 or args.num_images < 1:
        raise ClearCLIPError("--runs, --batch and --num-images must be >= 1 and --warmup >= 0")
    if not args.dataset:
        parse_size(args.size)
    cfg = load_segmentor_config(args.config_file, args.opts, PROGRAM)
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    cc = cfg.MODEL.CLEARCLIP
    device = torch.device(cfg.MODEL.DEVICE)
    batches = build_inputs(cfg, args)
    model = build_benchmark_model(cfg, args)

    start = time.perf_counter()
    model.text_embeddings()
    text_seconds = time.perf_counter() - start

    compute_dtype = PRECISIONS[cc.PRECISION] or torch.float32
    peak = bench.matmul_peak_flops(device, compute_dtype, seconds=2.0)
    first = batches[0][0]["image"]
    height, width = int(first.shape[-2]), int(first.shape[-1])
    windows = len(slide_window_boxes(height, width, cc.SLIDE_CROP, cc.SLIDE_STRIDE)) if cc.SLIDE_CROP > 0 else 1
    report = {
        "config_file": args.config_file,
        "opts": list(args.opts),
        "model": cc.MODEL_NAME,
        "device": str(device),
        "precision": cc.PRECISION,
        "threads": torch.get_num_threads(),
        "input": args.dataset or f"synthetic {height}x{width}",
        "image_size": [height, width],
        "batch": len(batches[0]),
        "runs": args.runs,
        "warmup": args.warmup,
        "crop": cc.SLIDE_CROP,
        "stride": cc.SLIDE_STRIDE,
        "windows_per_image": windows,
        "window_batch": cc.WINDOW_BATCH,
        "num_queries": len(model.vocabulary.queries),
        "text_embedding_s": text_seconds,
        "text_cache_dir": cc.CACHE_DIR,
        "matmul_peak_gflops_per_s": peak / 1e9,
        "modes": {},
    }
    crop = cc.SLIDE_CROP
    for mode in modes:
        reference_style = mode == "reference"
        flops = 0.0 if args.no_flops else float(
            bench.image_encoder_flops(model.encoder, height, width, crop, cc.SLIDE_STRIDE, reference_style)
        )
        window_flops = 0.0 if args.no_flops else float(bench.encoder_flops(model.encoder, crop or 448, crop or 448, reference_style))
        result = measure_mode(model, batches, args, reference_style, flops, peak)
        result["encoder_alone"] = measure_encoder_alone(model, reference_style, args, peak, window_flops)
        report["modes"][mode] = result
    model.reference_style = False
    # Measured again at the end, the higher figure kept: another process on the machine during
    # one measurement would otherwise make the peak look low (and fractions above 100%).
    peak_again = bench.matmul_peak_flops(device, compute_dtype)
    if peak_again > peak:
        scale = peak / peak_again
        report["matmul_peak_gflops_per_s"] = peak_again / 1e9
        for result in report["modes"].values():
            for part in (result, result["encoder_alone"]):
                if "fraction_of_matmul_peak" in part:
                    part["fraction_of_matmul_peak"] *= scale
    if len(modes) == 2:
        report["speedup"] = report["modes"]["fast"]["images_per_s"] / report["modes"]["reference"]["images_per_s"]
        report["max_probability_difference"] = max_probability_difference(model, batches[0])
    return report


ROWS = [
    ("images/s", "images_per_s", "{:.3f}"),
    ("latency median (ms)", "latency_median_ms", "{:.1f}"),
    ("latency p90 (ms)", "latency_p90_ms", "{:.1f}"),
    ("peak RSS (MiB)", "peak_rss_mib", "{:.0f}"),
    ("RSS before runs (MiB)", "rss_before_runs_mib", "{:.0f}"),
    ("CUDA max allocated (MiB)", "cuda_max_allocated_mib", "{:.0f}"),
    ("encoder GFLOPs / image", "encoder_gflops_per_image", "{:.1f}"),
    ("achieved GFLOP/s (end to end)", "achieved_gflops_per_s", "{:.1f}"),
    ("fraction of matmul peak", "fraction_of_matmul_peak", "{:.1%}"),
]


ENCODER_ROWS = [
    ("encoder alone: windows per batch", "windows_per_batch", "{}"),
    ("encoder alone: windows/s", "windows_per_s", "{:.3f}"),
    ("encoder alone: GFLOP/s", "achieved_gflops_per_s", "{:.1f}"),
    ("encoder alone: fraction of matmul peak", "fraction_of_matmul_peak", "{:.1%}"),
]


def table_rows(specs, columns: List[dict]) -> List[List[str]]:
    """One row per ``(label, key, format)`` of ``specs`` that some column has ("-" where missing)."""
    rows = []
    for label, key, fmt in specs:
        values = [column.get(key) for column in columns]
        if any(v is not None for v in values):
            rows.append([label] + [fmt.format(v) if v is not None else "-" for v in values])
    return rows


def format_report(report: dict) -> str:
    modes = list(report["modes"])
    results = [report["modes"][m] for m in modes]
    rows = table_rows(ROWS, results) + table_rows(ENCODER_ROWS, [r["encoder_alone"] for r in results])
    header = (
        f"{report['model']} on {report['device']} ({report['precision']}, {report['threads']} threads), "
        f"{report['input']}, batch {report['batch']}, {report['windows_per_image']} windows/image "
        f"(crop {report['crop']}, stride {report['stride']}), window batch {report['window_batch']}, "
        f"{report['num_queries']} queries\n"
        f"matmul peak {report['matmul_peak_gflops_per_s']:.1f} GFLOP/s; text embeddings {report['text_embedding_s']:.2f} s"
    )
    lines = [header, tabulate(rows, headers=["", *modes], tablefmt="github")]
    if "speedup" in report:
        lines.append(
            f"speed-up fast / reference: {report['speedup']:.2f}x; "
            f"largest probability difference: {report['max_probability_difference']:.2e}"
        )
    return "\n".join(lines)


def main(argv=None) -> dict:
    args = get_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    report = run_benchmark(args)
    print(format_report(report), flush=True)
    if args.json:
        atomic_write_json(args.json, report)
    return report


if __name__ == "__main__":
    with exit_on_user_error(PROGRAM):
        main()
