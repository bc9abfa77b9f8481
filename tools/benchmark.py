#!/usr/bin/env python
"""Inference speed of ClearCLIP: the fast path against the reference-style path, same run.

    python tools/benchmark.py --config-file configs/clearclip_coco.yaml --size 448x640 \
        --threads 2 --runs 10 --json output/benchmark.json \
        --opts MODEL.CLEARCLIP.PRETRAINED "" MODEL.CLEARCLIP.WINDOW_BATCH 8
    python tools/benchmark.py --config-file configs/clearclip_coco.yaml --dataset coco_2017_val_stuff_sem_seg --num-images 40

Per mode it prints images/s, the median and 90th-percentile latency of a forward over
``--batch`` images (after ``--warmup`` untimed runs), the peak memory (CPU RSS of the process;
CUDA max allocated), the encoder FLOPs per image (fvcore; a multiply-add counts 2), the
achieved FLOP/s (encoder FLOPs x images/s, so everything else counts as overhead) and that
as a fraction of the matrix-product peak measured at the start, then the same for the image
encoder alone on one window batch. ``fast`` is the plugin (windows in batches of
``WINDOW_BATCH``, the last block once, fused attention); ``reference`` runs one window at a
time with open_clip's blocks and the last block twice, as the authors' code does. Both give
the same probabilities (the largest difference is printed). The code is
``clearclip_d2/engine/benchmark.py``. ``--size HxW`` is the model's
input size (after the test-time resize), a synthetic image.

``--dataset`` times the evaluation loop instead (``clearclip_d2/engine/loop_benchmark.py``): the
loop of ``Trainer.test`` (test loader, labels-only model, ClearCLIP's evaluator writing its
shards and files to a temporary folder) on the first ``--num-images`` images of a registered
dataset, with the milliseconds per image of the model and of everything else (loader wait,
the evaluator's parts in the main thread and on its background thread, evaluate, the rest),
against the bound of 10% of ``--gpu-model-ms`` (docs/PERFORMANCE.md, "Evaluation loop").
"""

import argparse
import logging
import os
import sys
import warnings

warnings.filterwarnings("ignore", message=r".*torch\.jit\.script.*", category=FutureWarning)
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from clearclip_d2.engine.benchmark import format_report, run_benchmark  # noqa: E402
from clearclip_d2.utils import atomic_write_json  # noqa: E402
from clearclip_d2.utils.cli import add_opts_option, exit_on_user_error  # noqa: E402

PROGRAM = "benchmark.py"


def get_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config-file", required=True, metavar="FILE")
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--size", default="448x640", help="model input HEIGHTxWIDTH of a synthetic image (default 448x640)")
    source.add_argument("--dataset", default="", help="a registered dataset: time the evaluation loop on its first --num-images images")
    parser.add_argument("--num-images", type=int, default=4, help="images of --dataset (default 4)")
    parser.add_argument("--batch", type=int, default=1, help="images per forward (default 1)")
    parser.add_argument("--runs", type=int, default=10, help="timed forwards per mode (default 10)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed forwards first (default 2)")
    parser.add_argument("--threads", type=int, default=0, help="torch.set_num_threads (default: PyTorch's choice)")
    parser.add_argument("--modes", default="fast,reference", help="comma-separated: fast, reference (default both)")
    parser.add_argument("--no-flops", action="store_true", help="skip the fvcore FLOP count (slow for big models)")
    parser.add_argument("--per-pixel-classes", default="3,171,847",
                        help="class counts whose per-pixel work is timed against the encoder ('' = skip; default 3,171,847)")
    parser.add_argument("--gpu-model-ms", type=float, default=20.0,
                        help="--dataset: the model time per image of a GPU-sized model, the reference of the "
                             "loop-overhead bound (10%% of it; default 20, an estimate for ViT-B/16 fp32 on an A100)")
    parser.add_argument("--evaluator-in-line", action="store_true",
                        help="--dataset: the evaluator's per-image work in the main thread, without its background thread (to compare)")
    parser.add_argument("--json", default="", metavar="PATH", help="also write the results as JSON (atomically)")
    add_opts_option(parser)
    return parser


def main(argv=None) -> dict:
    args = get_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    report = run_benchmark(args, PROGRAM)
    print(format_report(report), flush=True)
    if args.json:
        atomic_write_json(args.json, report)
    return report


if __name__ == "__main__":
    with exit_on_user_error(PROGRAM):
        main()
