"""The paper's tables (``tools/reproduce_table.py``): evaluate benchmarks with ``tools/train_net.py``
and write the results beside the paper's numbers (:mod:`clearclip_d2.evaluation.benchmark_report`);
and, with ``--method``, one method's table: its preset per benchmark beside its paper's numbers
(:func:`method_table`).

:func:`reproduce_table` evaluates each selected benchmark in its own ``train_net.py --eval-only``
run (a benchmark not prepared is skipped with a line saying why), or reads earlier runs'
``metrics.json`` files, then writes ``results.md`` and the per-class IoU charts.
"""

import glob
import json
import os
import subprocess
import sys
from typing import Dict, List, Optional, Sequence

from ..constants import PAPER_RESULTS_DIR, paper_results
from ..data.benchmarks import BENCHMARKS, Benchmark, get_benchmark
from ..evaluation.benchmark_report import BenchmarkOutcome, write_report
from ..utils.errors import ClearCLIPError, user_message

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TRAIN_NET = os.path.join(REPO_ROOT, "tools", "train_net.py")


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
    from ..data.datasets import check_dataset_prepared  # registers the datasets

    try:
        check_dataset_prepared(benchmark.dataset_name)
    except ClearCLIPError as e:
        return user_message(e)
    return ""


def evaluate(benchmark: Benchmark, architecture: str, num_gpus: int, opts: Sequence[str], output_dir: str) -> BenchmarkOutcome:
    """Run train_net on one benchmark; its output goes to this process's stdout/stderr."""
    problem = preparation_problem(benchmark)
    if problem:
        print(f"skipping {benchmark.key}: {problem}", flush=True)
        return BenchmarkOutcome(benchmark, problem=problem)
    run_dir = os.path.join(output_dir, benchmark.key)
    command = [sys.executable, TRAIN_NET, "--eval-only", "--num-gpus", str(num_gpus),
               "--config-file", os.path.join(REPO_ROOT, benchmark.config_path(architecture)),
               *opts, "OUTPUT_DIR", run_dir]
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


def reproduce_table(
    benchmark_keys: Optional[str],
    architecture: str,
    output_dir: Optional[str] = None,
    num_gpus: int = 1,
    opts: Sequence[str] = (),
    from_metrics: Optional[Sequence[str]] = None,
) -> int:
    """Evaluate (or, with ``from_metrics``, read) the benchmarks ``benchmark_keys`` ("voc20,voc21";
    None: all with a config for ``architecture``), write the report under ``output_dir`` (default
    ``output/reproduce_<architecture>``) and print the table. Returns the exit status: 0, or 1 if
    an evaluation failed; nothing evaluated is a :class:`ClearCLIPError`."""
    opts = list(opts)
    if opts and opts[0] == "--":
        opts = opts[1:]
    if len(opts) % 2:
        raise ClearCLIPError(f"config overrides come in KEY VALUE pairs, got {len(opts)} words: {' '.join(opts)}")
    benchmarks = select_benchmarks(benchmark_keys, architecture)
    output_dir = output_dir or os.path.join("output", f"reproduce_{architecture}")
    if from_metrics:
        outcomes = outcomes_from_metrics(benchmarks, from_metrics)
    else:
        outcomes = [evaluate(benchmark, architecture, num_gpus, opts, output_dir) for benchmark in benchmarks]
    if all(o.metrics is None for o in outcomes):
        raise ClearCLIPError(
            "none of the selected benchmarks could be evaluated (see the lines above); "
            "datasets/README.md says how to prepare them"
        )
    table = write_report(outcomes, architecture, output_dir)
    print("\n" + table, flush=True)
    print(f"wrote {os.path.join(output_dir, 'results.md')} and {os.path.join(output_dir, 'per_class_iou', '')}", flush=True)
    return 1 if any(o.failed for o in outcomes) else 0


# --------------------------------------------------------------------------- one method's table
def method_names() -> List[str]:
    """The methods with paper numbers (``resources/paper_results/<method>.tsv``), sorted."""
    return sorted(os.path.splitext(name)[0] for name in os.listdir(PAPER_RESULTS_DIR) if name.endswith(".tsv"))


def method_presets(method: str) -> Dict[str, str]:
    """``{benchmark key: preset path relative to the repository}`` of a method: ClearCLIP's are
    ``configs/clearclip_<benchmark>.yaml``; any other method's are ``configs/methods/<method>.yaml``
    and ``configs/methods/<method>/*.yaml``, each placed by its ``DATASETS.TEST``."""
    from ..config import load_clearclip_config

    if method == "clearclip":
        return {b.key: b.config_path() for b in BENCHMARKS if b.paper_miou() is not None}
    by_dataset = {b.dataset_name: b.key for b in BENCHMARKS}
    paths = [os.path.join(REPO_ROOT, "configs", "methods", f"{method}.yaml")]
    paths += sorted(glob.glob(os.path.join(REPO_ROOT, "configs", "methods", method, "*.yaml")))
    presets = {}
    for path in filter(os.path.isfile, paths):
        for dataset in load_clearclip_config(path).DATASETS.TEST:
            if dataset in by_dataset:
                presets[by_dataset[dataset]] = os.path.relpath(path, REPO_ROOT)
    return presets


def method_table(method: str, metrics_paths: Sequence[str] = ()) -> str:
    """Markdown: per benchmark of the method's paper, the preset to run, the paper's mIoU
    (``*`` = not checked against the paper) and this project's mIoU (mmseg's definition) from
    the train_net ``metrics.json`` files given ("–" where none has the benchmark)."""
    if method not in method_names():
        raise ClearCLIPError(f"unknown method {method!r}; choose one of {', '.join(method_names())}")
    paper, presets = paper_results(method), method_presets(method)
    ours = read_metrics(metrics_paths) if metrics_paths else {}
    lines = [f"# {method}: presets and the paper's numbers (ViT-B/16)", "",
             "| benchmark | preset | paper mIoU | our mIoU (mmseg) |", "| --- | --- | ---: | ---: |"]
    for benchmark in BENCHMARKS:
        if benchmark.key not in paper and benchmark.key not in presets:
            continue
        miou, verified = paper.get(benchmark.key, (None, True))
        paper_text = "–" if miou is None else f"{miou:g}{'' if verified else '*'}"
        our = ours.get(benchmark.dataset_name, {}).get("mIoU-mmseg")
        preset = presets.get(benchmark.key)
        lines.append(f"| {benchmark.title} | {f'`{preset}`' if preset else '–'} | {paper_text} | "
                     f"{'–' if our is None else f'{our:.2f}'} |")
    if not all(verified for _, verified in paper.values()):
        lines += ["", "\\* not checked against the paper (see the comments of "
                  f"clearclip_d2/resources/paper_results/{method}.tsv)."]
    return "\n".join(lines) + "\n"
