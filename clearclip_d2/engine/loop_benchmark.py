"""The evaluation loop's own cost (``tools/benchmark.py --dataset``): per image, the model's
time and everything else the loop does in the main process.

The loop is the one :meth:`~.trainer.Trainer.test` runs: the plan of a fresh evaluation whose
output folder (shards, ``sem_seg_predictions.json``) is a temporary folder removed afterwards,
the test loader (``DATALOADER.NUM_WORKERS`` worker processes), the model in ``labels_only``
mode and ClearCLIP's evaluator, through :func:`~..evaluation.resumable.run_planned_evaluation`
(Detectron2's ``inference_on_dataset``). Timing wrappers around the loader and the model and
the evaluator's :class:`~..utils.timing.PartTimer` split the time per image of the running
loop (from the request of the second batch to the request that ends the loader: the first
image's iteration holds the loader's start-up) into

* ``loader_wait``: the main process waiting for the next batch (receiving it from a worker);
* ``model``: the forward (synchronised on CUDA);
* ``process``: ``evaluator.process`` in the main thread: ``to_cpu`` (the labels to the CPU) and
  ``collect`` (taking the background thread's results; waiting for it when more than
  ``MAX_IMAGES_IN_FLIGHT`` images are outstanding, i.e. when it is slower than the model);
* ``other``: the rest of the loop (Detectron2's bookkeeping, the bad-input filter);

and adds ``evaluate``: ``evaluator.evaluate``'s own work (gather, metrics, files, which grow
with the images), divided by the image count.

The evaluator's per-image work (``label_read``, ``confusion``, ``boundary``, ``rle``,
``shard_write``) runs on its background thread, overlapping the model: it is reported apart, and
must stay below the model's time (else the main thread waits for it, in ``collect``).

``overhead`` = the loop's time per image - model + evaluate: what the loop adds to the model's
time on this machine. One-offs are reported apart, in seconds: the plan, the loader's start-up
(the first batch: its worker processes start), its shut-down (the request that ends it) and the
drain (``evaluate`` waiting for the background thread's last images).
"""

import statistics
import tempfile
import time
from typing import Dict, Iterable, Iterator, List

import torch
from torch import nn

from ..utils.errors import ClearCLIPError
from ..utils.timing import PartTimer, synchronize

MIN_LOOP_IMAGES = 2  # the first image's iteration holds the loader's start-up: per image is from the second on
EVALUATOR_PARTS = ("to_cpu", "collect")  # main thread; the background thread's are "worker_*"


class TimedLoader:
    """Iterates ``loader``, adding the seconds of each ``next()`` to ``timer``: the first batch
    under ``loader_startup`` (the worker processes start), the last request (the one that ends
    the loader and its processes) under ``loader_shutdown``, the others under ``loader_wait``.
    ``requests``: the ``perf_counter`` time of each request; ``batch_sizes``: each batch's images."""

    def __init__(self, loader: Iterable, timer: PartTimer):
        self.loader = loader
        self.timer = timer
        self.requests: List[float] = []
        self.batch_sizes: List[int] = []

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self) -> Iterator[List[Dict]]:
        iterator = iter(self.loader)
        while True:
            start = time.perf_counter()
            self.requests.append(start)
            try:
                batch = next(iterator)
            except StopIteration:
                self.timer.add("loader_shutdown", time.perf_counter() - start)
                return
            self.timer.add("loader_wait" if self.batch_sizes else "loader_startup", time.perf_counter() - start)
            self.batch_sizes.append(len(batch))
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
        if len(plan.remaining) < MIN_LOOP_IMAGES:
            raise ClearCLIPError(f"--dataset {dataset_name} has {len(plan.remaining)} image(s); the loop needs at least {MIN_LOOP_IMAGES}")
        with labels_for(model, evaluator), torch.no_grad():
            model([ClearCLIPDatasetMapper(cfg, False)(dict(plan.remaining[0]))])  # first call: allocations, caches
        evaluator.timer = timer
        timed_model = TimedModel(model, timer)
        loaders: List[TimedLoader] = []

        def build_timed_loader(dicts):
            loaders.append(TimedLoader(Trainer.build_test_loader(cfg, dataset_name, dicts), timer))
            return loaders[-1]

        with labels_for(model, evaluator):
            results = run_planned_evaluation(timed_model, plan, evaluator, build_timed_loader)
        evaluator.timer = PartTimer()  # what follows is not timed
    images = len(plan.remaining)
    evaluated = (results.get("evaluation") or {}).get("images", 0)
    if evaluated != images:
        raise ClearCLIPError(f"the evaluation loop evaluated {evaluated} of {images} images of {dataset_name}")
    loader = loaders[0]
    return {
        "images": images,
        "running_s": loader.requests[-1] - loader.requests[1],
        "running_images": sum(loader.batch_sizes[1:]),
        "plan_s": plan_seconds,
        "calls_s": {name: list(calls) for name, calls in timer.calls.items()},
        "mapping_s_per_image": mapping_seconds(cfg, plan.remaining, min(images, 4)),
        "num_workers": cfg.DATALOADER.NUM_WORKERS,
        "evaluator_in_line": in_line,
    }


MAIN_THREAD_PARTS = ("loader_wait", "model", "process", *EVALUATOR_PARTS)  # per image, in the running loop
ONE_OFFS = {"startup_s": "loader_startup", "shutdown_s": "loader_shutdown", "drain_s": "evaluate_drain"}


def per_image_report(loop: dict, gpu_model_ms: float) -> dict:
    """Milliseconds per image of each part of the running loop (the first image's iteration,
    which holds the loader's start-up, left out), ``evaluate``'s own work divided by the image
    count, ``overhead_ms`` = loop - model + evaluate, and the overhead as a fraction of the
    model's measured time and of ``gpu_model_ms`` (the model time of a GPU-sized model, the
    bound's reference); one-offs in seconds."""
    calls = loop["calls_s"]
    running = loop["running_images"]

    def running_ms(name: str) -> float:  # the calls of the images after the first (batch 1: a call per image)
        return 1000 * sum(calls.get(name, [])[-running:]) / running

    def median_ms(name: str) -> float:
        return 1000 * statistics.median(calls[name][-running:])

    report = {"wall_ms": 1000 * loop["running_s"] / running}
    report.update({f"{name}_ms": running_ms(name) for name in ("loader_wait", "model", "process")})
    report["other_ms"] = report["wall_ms"] - sum(report[f"{name}_ms"] for name in ("loader_wait", "model", "process"))
    evaluate_s = sum(calls.get("evaluate", [])) - sum(calls.get("evaluate_drain", []))
    report["evaluate_ms"] = 1000 * evaluate_s / loop["images"]
    report["process_parts_ms"] = {name: running_ms(name) for name in EVALUATOR_PARTS if name in calls}
    worker = {name[len("worker_"):]: running_ms(name) for name in calls if name.startswith("worker_")}
    if loop["evaluator_in_line"]:  # the "worker" parts ran in process(), on the main thread
        report["process_parts_ms"].update(worker)
    elif worker:
        report["evaluator_worker_ms"] = worker
        report["evaluator_worker_total_ms"] = sum(worker.values())
    report["overhead_ms"] = report["wall_ms"] - report["model_ms"] + report["evaluate_ms"]
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
    report["median_ms"] = {name: median_ms(name) for name in MAIN_THREAD_PARTS if name in calls}
    report["median_ms"].update({name[len("worker_"):]: median_ms(name) for name in calls if name.startswith("worker_")})
    report["running_images"] = running
    report.update({key: sum(calls.get(name, [])) for key, name in ONE_OFFS.items()})
    report["plan_s"] = loop["plan_s"]
    report["mapping_ms"] = 1000 * loop["mapping_s_per_image"]
    return report
