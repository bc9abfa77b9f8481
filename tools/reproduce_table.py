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

Trailing ``KEY VALUE`` pairs go to every train_net run. Exit status: 0, 1 if an evaluation
failed, 2 if nothing could be evaluated.
"""

import argparse
import json
import os
import subprocess
import sys
import warnings
from typing import Dict, List, Optional, Sequence

warnings.filterwarnings("ignore", message=r".*torch\.jit\.script.*", category=FutureWarning)
REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO_ROOT)

from clearclip_d2.data.benchmarks import ARCHITECTURES, BENCHMARKS, Benchmark, get_benchmark  # noqa: E402
from clearclip_d2.evaluation.benchmark_report import BenchmarkOutcome, write_report  # noqa: E402
from clearclip_d2.utils.cli import exit_on_user_error  # noqa: E402
from clearclip_d2.utils.errors import ClearCLIPError, user_message  # noqa: E402

PROGRAM = "reproduce_table.py"
TRAIN_NET = os.path.join(REPO_ROOT, "tools", "train_net.py")


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
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="KEY VALUE config overrides for every train_net run")
    return parser


def select_benchmarks(keys: Optional[str], architecture: str) -> List[Benchmark]:
    """The benchmarks named in ``keys`` ("voc20,voc21"), default every one with a config for the architecture."""
    if not keys:
        return [b for b in BENCHMARKS if b.config_path(architecture) is not None]
    selected = [get_benchmark(key.strip()) for key in dict.fromkeys(keys.split(",")) if key.strip()]
    without_config = [b.key for b in selected if b.config_path(architecture) is None]
    if without_config:
        raise ClearCLIPError(f"no {architecture} config for {', '.join(without_config)} (the paper has no number for it)")
    return selected


def preparation_problem(benchmark: Benchmark) -> str:
    """Why the benchmark cannot be evaluated now ("" if it can)."""
    import clearclip_d2  # noqa: F401  (registers the datasets)
    from clearclip_d2.data.datasets import check_dataset_prepared

    try:
        check_dataset_prepared(benchmark.dataset_name)
    except ClearCLIPError as e:
        return user_message(e)
    return ""


def evaluate(benchmark: Benchmark, args, output_dir: str) -> BenchmarkOutcome:
    """Run train_net on one benchmark; its output goes to this process's stdout/stderr."""
    problem = preparation_problem(benchmark)
    if problem:
        print(f"skipping {benchmark.key}: {problem}", flush=True)
        return BenchmarkOutcome(benchmark, problem=problem)
    run_dir = os.path.join(output_dir, benchmark.key)
    command = [sys.executable, TRAIN_NET, "--eval-only", "--num-gpus", str(args.num_gpus),
               "--config-file", os.path.join(REPO_ROOT, benchmark.config_path(args.arch)),
               *args.opts, "OUTPUT_DIR", run_dir]
    print(f"evaluating {benchmark.key}: {' '.join(command)}", flush=True)
    status = subprocess.run(command).returncode
    if status != 0:
        print(f"{benchmark.key}: evaluation failed (exit status {status}), see above", flush=True)
        return BenchmarkOutcome(benchmark, problem=f"evaluation failed (exit status {status})", failed=True)
    metrics = read_metrics([os.path.join(run_dir, "metrics.json")])
    return BenchmarkOutcome(benchmark, metrics=metrics[benchmark.dataset_name])


def read_metrics(paths: Sequence[str]) -> Dict[str, Dict[str, float]]:
    """``{dataset: sem_seg metrics}`` from train_net ``metrics.json`` files (later files win)."""
    results = {}
    for path in paths:
        try:
            with open(path, encoding="utf-8") as f:
                content = json.load(f)
        except FileNotFoundError as e:
            raise ClearCLIPError(f"metrics file {path} does not exist") from e
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise ClearCLIPError(f"metrics file {path} is not JSON: {e}") from e
        for dataset, result in content.items():
            if isinstance(result, dict) and isinstance(result.get("sem_seg"), dict):
                results[dataset] = result["sem_seg"]
    return results


def outcomes_from_metrics(benchmarks: Sequence[Benchmark], paths: Sequence[str]) -> List[BenchmarkOutcome]:
    results = read_metrics(paths)
    outcomes = []
    for benchmark in benchmarks:
        if benchmark.dataset_name in results:
            outcomes.append(BenchmarkOutcome(benchmark, metrics=results[benchmark.dataset_name]))
        else:
            problem = f"no results for {benchmark.dataset_name} in {', '.join(paths)}"
            print(f"skipping {benchmark.key}: {problem}", flush=True)
            outcomes.append(BenchmarkOutcome(benchmark, problem=problem))
    return outcomes


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = get_parser().parse_args(argv)
    if args.opts and args.opts[0] == "--":
        args.opts = args.opts[1:]
    if len(args.opts) % 2:
        raise ClearCLIPError(f"config overrides come in KEY VALUE pairs, got {len(args.opts)} words: {' '.join(args.opts)}")
    benchmarks = select_benchmarks(args.benchmarks, args.arch)
    output_dir = args.output_dir or os.path.join("output", f"reproduce_{args.arch}")
    if args.from_metrics:
        outcomes = outcomes_from_metrics(benchmarks, args.from_metrics)
    else:
        outcomes = [evaluate(benchmark, args, output_dir) for benchmark in benchmarks]
    if all(o.metrics is None for o in outcomes):
        raise ClearCLIPError(
            "none of the selected benchmarks could be evaluated (see the lines above); "
            "datasets/README.md says how to prepare them"
        )
    table = write_report(outcomes, args.arch, output_dir)
    print("\n" + table, flush=True)
    print(f"wrote {os.path.join(output_dir, 'results.md')} and {os.path.join(output_dir, 'per_class_iou', '')}", flush=True)
    return 1 if any(o.failed for o in outcomes) else 0


if __name__ == "__main__":
    with exit_on_user_error(PROGRAM):
        sys.exit(main())
