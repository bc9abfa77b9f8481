"""Resumable evaluation: per-image results kept on disk as the evaluation goes.

The metrics of :class:`~.sem_seg_evaluation.ClearCLIPSemSegEvaluator` are functions of a
confusion matrix that is a sum of per-image contributions, so an evaluation can be cut at any
image and continued exactly. Each image's contribution is written to a shard file
(:mod:`.shards`) by the process that evaluated it.

A run with ``--resume-eval`` evaluates only the images without a shard (they are removed from
the dataset before the data loader is built, so the model never sees them) and merges the
stored contributions: the metrics and the predictions file are those of an uninterrupted run,
whatever the number of processes before and after. A run without ``--resume-eval`` starts
afresh (the old shards are removed). A resume with another fingerprint (:mod:`.fingerprint`:
config, weights, dataset) is refused, never mixed; a shard whose image or label map has changed
since is not used, and that image is evaluated again, so a bad file that was fixed, or a
corrected label map, is simply evaluated with its new content.
"""

import logging
import os
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Iterable, List, Optional, Tuple

import numpy as np
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.evaluation import inference_on_dataset
from detectron2.utils import comm

from ..utils.errors import ClearCLIPError
from .bad_inputs import BadInputFilter
from .fingerprint import evaluation_fingerprint, fingerprint_difference
from .shards import SHARD_FOLDER, ImageResult, ShardStore, add_counts, common_folder, fingerprint_digest

logger = logging.getLogger(__name__)


# ----------------------------------------------------------------------------- distributed merge
@dataclass
class EvaluationState:
    """What one process has evaluated (or, after :func:`gather_on_main_process`, all of them).

    Attributes:
        confusion: [K+1, K+1] int64 summed confusion matrix (see :mod:`.metrics`).
        boundary_confusion: the same for the boundary maps, or None when boundary IoU is not computed.
        predictions_json_by_file: each image's RLE prediction entries as JSON text, by file name.
        skipped: (file name, reason) of the bad images left out.
    """

    confusion: np.ndarray
    boundary_confusion: Optional[np.ndarray]
    predictions_json_by_file: Dict[str, str] = field(default_factory=dict)
    skipped: List[Tuple[str, str]] = field(default_factory=list)

    @classmethod
    def empty(cls, num_classes: int, with_boundary: bool) -> "EvaluationState":
        def zeros():
            return np.zeros((num_classes + 1, num_classes + 1), dtype=np.int64)

        return cls(zeros(), zeros() if with_boundary else None)

    def add(self, result: ImageResult) -> None:
        """Add one image's result (a stored one too: the matrices are sums)."""
        add_counts(self.confusion, result.confusion)
        if self.boundary_confusion is not None:
            add_counts(self.boundary_confusion, result.boundary_confusion)
        self.predictions_json_by_file[result.file_name] = result.predictions_json

    def merge(self, other: "EvaluationState") -> None:
        """Add another process's state."""
        self.confusion += other.confusion
        if self.boundary_confusion is not None and other.boundary_confusion is not None:
            self.boundary_confusion += other.boundary_confusion
        self.predictions_json_by_file.update(other.predictions_json_by_file)
        self.skipped.extend(other.skipped)


def gather_on_main_process(state: EvaluationState, distributed: bool) -> Optional[EvaluationState]:
    """Every process's state summed on the main process (Detectron2's ``comm.gather``): the sum
    there, None on the other processes. Without ``distributed``, this process's state alone.
    Call it on all processes when ``distributed``."""
    if not distributed or comm.get_world_size() == 1:
        return state
    parts = comm.gather(state, dst=0)
    if not comm.is_main_process():
        return None
    merged = parts[0]
    for part in parts[1:]:
        merged.merge(part)
    return merged


# ----------------------------------------------------------------------------- planning
@dataclass
class EvaluationPlan:
    """What an evaluation of one dataset has to do.

    Attributes:
        remaining: dataset dicts still to evaluate, in dataset order (the same on every process).
        store: where per-image results go (None without an output folder: nothing is kept).
        done: results loaded from the store, by file name (main process only).
    """

    remaining: List[Dict]
    store: Optional[ShardStore] = None
    done: Dict[str, ImageResult] = field(default_factory=dict)


def plan_evaluation(cfg, dataset_name: str, output_dir: str, resume: bool) -> EvaluationPlan:
    """Check or start the shard store of ``dataset_name`` and list the images still to do.

    The main process reads the store and decides; the others receive its decision, so every
    process filters the dataset the same way (and a refusal stops every process with the same
    message). Call it on all processes.
    """
    dicts = DatasetCatalog.get(dataset_name)
    if not output_dir or not dicts:
        return EvaluationPlan(dicts)
    store = ShardStore(os.path.join(output_dir, SHARD_FOLDER), common_folder(d["file_name"] for d in dicts))
    done, decision = {}, None
    if comm.is_main_process():
        try:
            done = _open_store(store, cfg, dataset_name, dicts, resume)
            decision = ("ok", sorted(done), store.fingerprint_digest)
        except ClearCLIPError as e:
            decision = ("error", str(e))
    if comm.get_world_size() > 1:
        decision = comm.all_gather(decision)[0]
    if decision[0] == "error":
        raise ClearCLIPError(decision[1])
    done_files = set(decision[1])
    store.fingerprint_digest = decision[2]  # the other processes' shards carry the main process's digest
    remaining = [d for d in dicts if d["file_name"] not in done_files]
    return EvaluationPlan(remaining, store, done)


def _open_store(store: ShardStore, cfg, dataset_name: str, dicts: List[Dict], resume: bool) -> Dict[str, ImageResult]:
    fingerprint = evaluation_fingerprint(cfg, dataset_name, dicts)
    store.fingerprint_digest = fingerprint_digest(fingerprint)
    stored = store.read_fingerprint() if resume else None
    if stored is None:
        if resume:
            logger.info(f"Nothing to resume in {store.folder}: evaluating {dataset_name} from the start")
        elif (earlier := store.count()) > 0:
            logger.info(f"Starting afresh: removing {earlier} earlier per-image results in {store.folder}")
        store.start_afresh(fingerprint)
        return {}
    difference = fingerprint_difference(stored, fingerprint)
    if difference:
        raise ClearCLIPError(
            f"cannot resume the evaluation of {dataset_name}: {store.folder} holds results of another "
            f"evaluation ({difference}); to start afresh use another OUTPUT_DIR, delete {store.folder}, "
            f"or run without --resume-eval"
        )
    num_classes = len(MetadataCatalog.get(dataset_name).stuff_classes)
    done = store.load(dicts, num_classes)
    logger.info(f"Resuming {dataset_name}: {len(done)} of {len(dicts)} images are done ({store.folder})")
    return done


def run_planned_evaluation(
    model, plan: EvaluationPlan, evaluator, build_loader: Callable[[List[Dict]], Iterable]
) -> Dict[str, Any]:
    """Evaluate the plan's remaining images with Detectron2's ``inference_on_dataset``.

    ``build_loader(dataset_dicts)`` builds the test loader of the remaining images; bad images
    it marks (see :class:`~.bad_inputs.BadInputFilter`) go to ``evaluator.report_bad_input``
    instead of the model. With nothing left to do, only the stored results are merged. However
    the loop ends, the evaluator's outstanding per-image work is finished (``finish_pending``).
    """
    evaluator.use_plan(plan)
    if not plan.remaining:
        evaluator.reset()
        return evaluator.evaluate() or {}
    loader = BadInputFilter(build_loader(plan.remaining), evaluator.report_bad_input)
    try:
        return inference_on_dataset(model, loader, evaluator)
    finally:
        # Interrupted (a model error, Ctrl-C): the images already handed to the evaluator
        # keep their shards, as if it had worked in line.
        evaluator.finish_pending()
