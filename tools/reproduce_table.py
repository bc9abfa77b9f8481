#!/usr/bin/env python
"""Reproduce the paper's tables: evaluate benchmarks and write the results beside the paper's numbers.

Each selected benchmark (default: every benchmark that has a config for ``--arch``) is
evaluated with ``tools/train_net.py --eval-only`` and its config ``configs/[vit_l14/]clearclip_*.yaml``;
a benchmark that is not prepared under ``$DETECTRON2_DATASETS`` is skipped with a line
saying why. Written under ``--output-dir`` (default ``output/reproduce_<arch>``)::

    <benchmark>/metrics.json, ...     train_net's outputs per benchmark
    results.md                        the Markdown table: mIoU (mmseg and Detectron2), paper, difference
    per_class_iou/<benchmark>.png     per-class IoU bar chart

Examples::

    python tools/reproduce_table.py                                   # all prepared, ViT-B/16
    python tools/reproduce_table.py --benchmarks voc20,context59 --num-gpus 8
    python tools/reproduce_table.py --arch ViT-L-14 MODEL.CLEARCLIP.PRETRAINED /path/to/vit_l14.bin \\
        MODEL.CLEARCLIP.FORCE_QUICK_GELU True
    python tools/reproduce_table.py --from-metrics output/*/metrics.json   # table from earlier runs
    python tools/reproduce_table.py --method naclip                   # a method's presets and paper numbers
    python tools/reproduce_table.py --method naclip --from-metrics output/methods/naclip/*/metrics.json

Trailing ``KEY VALUE`` pairs go to every train_net run. Exit status: 0, 1 if an evaluation
failed, 2 if nothing could be evaluated. The code is ``clearclip_d2/engine/reproduce.py``.
"""

import argparse
import os
import sys
import warnings
from typing import Optional, Sequence

warnings.filterwarnings("ignore", message=r".*torch\.jit\.script.*", category=FutureWarning)
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from clearclip_d2.data.benchmarks import ARCHITECTURES, BENCHMARKS  # noqa: E402
from clearclip_d2.engine.reproduce import method_names, method_table, reproduce_table  # noqa: E402
from clearclip_d2.utils.cli import exit_on_user_error  # noqa: E402

PROGRAM = "reproduce_table.py"


def get_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=PROGRAM, description=__doc__.split("\n\n")[0])
    parser.add_argument("--benchmarks", metavar="KEY[,KEY...]",
                        help=f"comma-separated benchmarks to evaluate (default: all with a config for --arch): "
                             f"{','.join(b.key for b in BENCHMARKS)}")
    parser.add_argument("--arch", choices=ARCHITECTURES, default="ViT-B-16",
                        help="which configs and paper numbers: configs/ (ViT-B-16) or configs/vit_l14/ (ViT-L-14)")
    parser.add_argument("--output-dir", help="where to write (default: output/reproduce_<arch>)")
    parser.add_argument("--num-gpus", type=int, default=1, help="processes per train_net run (train_net's --num-gpus)")
    parser.add_argument("--from-metrics", nargs="+", metavar="JSON",
                        help="no evaluation (and no overrides): take the results from these train_net metrics.json files")
    parser.add_argument("--method", choices=method_names(),
                        help="print this method's table instead (benchmark, preset, paper mIoU, and ours from "
                             "--from-metrics files); evaluates nothing")
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="KEY VALUE config overrides for every train_net run")
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = get_parser().parse_args(argv)
    if args.method:
        print(method_table(args.method, args.from_metrics or ()), end="")
        return 0
    return reproduce_table(args.benchmarks, args.arch, args.output_dir, args.num_gpus, args.opts, args.from_metrics)


if __name__ == "__main__":
    with exit_on_user_error(PROGRAM):
        sys.exit(main())
