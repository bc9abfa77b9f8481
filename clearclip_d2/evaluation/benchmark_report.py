"""The results of several benchmarks beside the paper's numbers: a Markdown table and per-class charts."""

import math
import os
from dataclasses import dataclass
from typing import Dict, Optional, Sequence

from ..data.benchmarks import Benchmark
from ..utils.io import atomic_write

MISSING = "–"


@dataclass
class BenchmarkOutcome:
    """What happened to one benchmark: its ``sem_seg`` metrics, or why there are none."""

    benchmark: Benchmark
    metrics: Optional[Dict[str, float]] = None  # the evaluator's "sem_seg" dict
    problem: str = ""  # why it was skipped or failed
    failed: bool = False  # evaluation ran and failed (as opposed to skipped)


def _number(value: Optional[float], signed: bool = False) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return MISSING
    return f"{value:+.2f}" if signed else f"{value:.2f}"


def per_class_iou(metrics: Dict[str, float]) -> Dict[str, float]:
    """``{class name: IoU}`` of the classes present in the ground truth (``IoU-<name>`` entries)."""
    return {
        key[len("IoU-"):]: value
        for key, value in metrics.items()
        if key.startswith("IoU-") and value is not None and not math.isnan(value)
    }


def markdown_table(outcomes: Sequence[BenchmarkOutcome], architecture: str) -> str:
    """The results as Markdown: one row per evaluated benchmark, then why the others are missing."""
    lines = [
        f"# ClearCLIP {architecture}: this run beside the paper",
        "",
        "| benchmark | dataset | classes | mIoU (mmseg) | paper | difference | mIoU (Detectron2) | pACC |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for outcome in outcomes:
        if outcome.metrics is None:
            continue
        b, m = outcome.benchmark, outcome.metrics
        paper = b.paper_miou(architecture)
        ours = m.get("mIoU-mmseg")
        difference = None if paper is None or ours is None else ours - paper
        lines.append(
            f"| {b.title} | `{b.dataset_name}` | {b.num_classes} | {_number(ours)} | {_number(paper)} | "
            f"{_number(difference, signed=True)} | {_number(m.get('mIoU'))} | {_number(m.get('pACC'))} |"
        )
    lines += [
        "",
        "mIoU (mmseg): mean over the classes present in the ground truth or the prediction (a class only "
        "predicted counts as 0), the definition of the paper's numbers; mIoU (Detectron2): mean over the "
        "classes present in the ground truth. Difference = mIoU (mmseg) - paper.",
    ]
    missing = [o for o in outcomes if o.metrics is None]
    if missing:
        lines += ["", "Not evaluated:", ""]
        lines += [f"- {o.benchmark.title} (`{o.benchmark.dataset_name}`): {o.problem}" for o in missing]
    return "\n".join(lines) + "\n"


def plot_per_class_iou(metrics: Dict[str, float], title: str, path: str) -> str:
    """A bar chart of the per-class IoU (sorted, classes absent from the ground truth left out) as PNG.

    Up to 100 classes get named horizontal bars; larger vocabularies get unnamed vertical bars.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ious = sorted(per_class_iou(metrics).items(), key=lambda item: item[1], reverse=True)
    names, values = [n for n, _ in ious], [v for _, v in ious]
    subtitle = f"{title}: per-class IoU (%), {len(values)} classes present in the ground truth"
    if len(values) <= 100:
        figure, axes = plt.subplots(figsize=(8, 1.5 + 0.22 * len(values)))
        axes.barh(range(len(values)), values, color="tab:blue")
        axes.set_yticks(range(len(values)), names, fontsize=7)
        axes.invert_yaxis()
        axes.set_xlim(0, 100)
        axes.set_xlabel("IoU (%)")
    else:
        figure, axes = plt.subplots(figsize=(14, 5))
        axes.bar(range(len(values)), values, width=1.0, color="tab:blue")
        axes.set_xlim(-0.5, len(values) - 0.5)
        axes.set_ylim(0, 100)
        axes.set_xlabel("classes, sorted by IoU (names and values in metrics.json)")
        axes.set_ylabel("IoU (%)")
    axes.set_title(subtitle, fontsize=10)
    figure.tight_layout()
    with atomic_write(path, "wb") as f:
        figure.savefig(f, format="png", dpi=100)
    plt.close(figure)
    return path


def write_report(outcomes: Sequence[BenchmarkOutcome], architecture: str, output_dir: str) -> str:
    """``results.md`` and ``per_class_iou/<benchmark>.png`` under ``output_dir``; returns the table."""
    for outcome in outcomes:
        if outcome.metrics is not None:
            chart = os.path.join(output_dir, "per_class_iou", f"{outcome.benchmark.key}.png")
            plot_per_class_iou(outcome.metrics, outcome.benchmark.title, chart)
    table = markdown_table(outcomes, architecture)
    with atomic_write(os.path.join(output_dir, "results.md"), "w") as f:
        f.write(table)
    return table
