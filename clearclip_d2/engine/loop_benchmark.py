"""The evaluation loop's own cost (``tools/benchmark.py --dataset``): per image, the model's
time and everything else the loop does in the main process.

The loop is the one :meth:`~.trainer.Trainer.test` runs: the plan of a fresh evaluation whose
output folder (shards, ``sem_seg_predictions.json``) is a temporary folder removed afterwards,
the test loader (``DATALOADER.NUM_WORKERS`` worker processes), the model in ``labels_only``
mode and ClearCLIP's evaluator, through :func:`~..evaluation.resumable.run_planned_evaluation`
(Detectron2's ``inference_on_dataset``). Timing wrappers around the loader and the model and
the evaluator's :class:`~..utils.timing.PartTimer` split the wall time per image into

* ``loader_wait``: the main process waiting for the next batch (0 when the workers keep up);
* ``model``: the forward (synchronised on CUDA);
* ``process``: ``evaluator.process`` in the main thread: ``to_cpu`` (the labels to the CPU) and
  ``collect`` (taking the background thread's results; waiting for it when more than
  ``MAX_IMAGES_IN_FLIGHT`` images are outstanding, i.e. when it is slower than the model);
* ``evaluate``: ``evaluator.evaluate`` (gather, metrics, files), divided by the image count;
* ``other``: the rest of the loop (Detectron2's bookkeeping, the bad-input filter).

The evaluator's per-image work (``label_read``, ``confusion``, ``boundary``, ``rle``,
``shard_write``) runs on its background thread, overlapping the model: it is reported apart, and
must stay below the model's time (else the main thread waits for it, in ``collect``).

``overhead`` = wall - model: what the loop adds to the model's time on this machine. The start-up
(the first batch: the loader's worker processes start) and the plan are one-offs, reported apart.
"""

import statistics
import tempfile
import time
from typing import Dict, Iterable, Iterator, List

import torch
from torch import nn

from ..utils.errors import ClearCLIPError
from ..utils.timing import PartTimer, synchronize

EVALUATOR_PARTS = ("to_cpu", "collect")  # main thread; the background thread's are "worker_*"


class TimedLoader:
    """Iterates ``loader``, adding the seconds of each ``next()`` to ``timer``: the first batch
    under ``loader_startup`` (the worker processes start), the others under ``loader_wait``."""

    def __init__(self, loader: Iterable, timer: PartTimer):
        self.loader = loader
        self.timer = timer

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self) -> Iterator[List[Dict]]:
        name = "loader_startup"
        iterator = iter(self.loader)
        while True:
            start = time.perf_counter()
            try:
                batch = next(iterator)
            except StopIteration:
                return
            finally:
                self.timer.add(name, time.perf_counter() - start)
            name = "loader_wait"
            yield batch


class TimedModel(nn.Module):
    """``model`` with the seconds of each forward (synchronised on CUDA) added to ``timer``
    under ``model``."""

    def __init__(self, model: nn.Module, timer: PartTimer):
        super().__init__()
        self.model = model
        self.timer = timer

    def forward(self, batched_inputs):
        with self.timer.part("model"):
            outputs = self.model(batched_inputs)
            synchronize(self.model.device)
        return outputs


def mapping_seconds(cfg, dicts: List[Dict], count: int) -> float:
    """Mean seconds of the test mapper on the first ``count`` images, in this process: a
    loader worker's work per image (not on the main thread)."""
    from ..data import ClearCLIPDatasetMapper

    mapper = ClearCLIPDatasetMapper(cfg, False)
    chosen = dicts[: max(1, count)]
    start = time.perf_counter()
    for record in chosen:
        mapper(dict(record))
    return (time.perf_counter() - start) / len(chosen)


def run_evaluation_loop(cfg, model, dataset_name: str, num_images: int, in_line: bool = False) -> dict:
    """Run the evaluation loop of :meth:`~.trainer.Trainer.test` on the first ``num_images``
    images of ``dataset_name`` with timing wrappers; returns the timings (seconds, summed over
    the images) and the evaluation's counts. ``in_line``: the evaluator without its background
    thread (for comparison)."""
    from detectron2.data import DatasetCatalog

    from ..data import ClearCLIPDatasetMapper
    from ..evaluation.resumable import plan_evaluation, run_planned_evaluation
    from .trainer import Trainer, labels_for

    if dataset_name not in DatasetCatalog.list():
        raise ClearCLIPError(f"--dataset {dataset_name!r} is not registered; registered: {', '.join(DatasetCatalog.list())}")
    timer = PartTimer()
    with tempfile.TemporaryDirectory(prefix="clearclip_loop_benchmark_") as output_dir:
        in_flight = {"images_in_flight": 0} if in_line else {}  # else Trainer.build_evaluator's default
        evaluator = Trainer.build_evaluator(cfg, dataset_name, output_folder=output_dir, **in_flight)
        start = time.perf_counter()
        plan = plan_evaluation(cfg, dataset_name, output_dir, resume=False)
        plan_seconds = time.perf_counter() - start
        plan.remaining = plan.remaining[:num_images]
        if not plan.remaining:
            raise ClearCLIPError(f"--dataset {dataset_name} has no images")
        with labels_for(model, evaluator), torch.no_grad():
            model([ClearCLIPDatasetMapper(cfg, False)(dict(plan.remaining[0]))])  # first call: allocations, caches
        evaluator.timer = timer
        timed_model = TimedModel(model, timer)
        with labels_for(model, evaluator):
            start = time.perf_counter()
            results = run_planned_evaluation(
                timed_model, plan, evaluator,
                lambda dicts: TimedLoader(Trainer.build_test_loader(cfg, dataset_name, dicts), timer),
            )
            wall = time.perf_counter() - start
        evaluator.timer = PartTimer()  # what follows is not timed
    images = len(plan.remaining)
    evaluated = (results.get("evaluation") or {}).get("images", 0)
    if evaluated != images:
        raise ClearCLIPError(f"the evaluation loop evaluated {evaluated} of {images} images of {dataset_name}")
    return {
        "images": images,
        "wall_s": wall,
        "plan_s": plan_seconds,
        "parts_s": dict(timer.seconds),
        "median_call_s": {name: statistics.median(calls) for name, calls in timer.calls.items()},
        "mapping_s_per_image": mapping_seconds(cfg, plan.remaining, min(images, 4)),
        "num_workers": cfg.DATALOADER.NUM_WORKERS,
        "evaluator_in_line": in_line,
    }


def per_image_report(loop: dict, gpu_model_ms: float) -> dict:
    """Milliseconds per image of each part of the loop (start-up left out), ``overhead_ms`` =
    wall - model, and the overhead as a fraction of the model's measured time and of
    ``gpu_model_ms`` (the model time of a GPU-sized model, the bound's reference)."""
    images = loop["images"]
    parts = loop["parts_s"]
    startup = parts.get("loader_startup", 0.0)

    def ms(seconds: float) -> float:
        return 1000 * seconds / images

    wall = ms(loop["wall_s"] - startup)
    report = {
        "wall_ms": wall,
        "loader_wait_ms": ms(parts.get("loader_wait", 0.0)),
        "model_ms": ms(parts.get("model", 0.0)),
        "process_ms": ms(parts.get("process", 0.0)),
        "evaluate_ms": ms(parts.get("evaluate", 0.0)),
    }
    report["other_ms"] = wall - sum(report[k] for k in ("loader_wait_ms", "model_ms", "process_ms", "evaluate_ms"))
    report["process_parts_ms"] = {name: ms(parts[name]) for name in EVALUATOR_PARTS if name in parts}
    worker = {name[len("worker_"):]: ms(parts[name]) for name in parts if name.startswith("worker_")}
    if loop["evaluator_in_line"]:  # the "worker" parts ran in process(), on the main thread
        report["process_parts_ms"].update(worker)
    elif worker:
        report["evaluator_worker_ms"] = worker
        report["evaluator_worker_total_ms"] = sum(worker.values())
    report["overhead_ms"] = wall - report["model_ms"]
    report["overhead_over_model"] = report["overhead_ms"] / report["model_ms"] if report["model_ms"] else float("nan")
    report["gpu_model_ms"] = gpu_model_ms
    report["overhead_over_gpu_model"] = report["overhead_ms"] / gpu_model_ms
    report["bound_ms"] = 0.1 * gpu_model_ms
    report["bound_met"] = report["overhead_ms"] <= report["bound_ms"]
    if "evaluator_worker_total_ms" in report:
        report["evaluator_worker_below_gpu_model"] = report["evaluator_worker_total_ms"] < gpu_model_ms
    report["main_thread_evaluator_ms"] = report["process_ms"] + report["evaluate_ms"]
    # The median call of each part per image (batch 1), without the long tail of a shared machine
    # (the main thread descheduled by other processes).
    median = loop["median_call_s"]
    report["median_ms"] = {name.replace("worker_", ""): 1000 * seconds for name, seconds in median.items()
                           if name not in ("loader_startup", "evaluate")}
    report["startup_s"] = startup
    report["plan_s"] = loop["plan_s"]
    report["mapping_ms"] = 1000 * loop["mapping_s_per_image"]
    return report
