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
from typing import Any, Callable, Dict, Iterable, List, Optional

import numpy as np
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.evaluation import SemSegEvaluator, inference_on_dataset
from detectron2.utils import comm
from detectron2.utils.comm import all_gather, is_main_process, synchronize

from ..modeling.class_chunks import output_labels
from ..utils.errors import ClearCLIPError, user_message
from .bad_inputs import SKIPPED_FILE, BadInputFilter, check_label_map, stop_message, write_skipped_list
from .fingerprint import evaluation_fingerprint, fingerprint_difference
from .shards import SHARD_FOLDER, ImageResult, ShardStore, add_counts, common_folder, sparse_counts

logger = logging.getLogger(__name__)


# ----------------------------------------------------------------------------- evaluator
class ResumableSemSegEvaluator(SemSegEvaluator):
    """Detectron2's ``SemSegEvaluator`` built from per-image results, resumable.

    * Per image, the confusion-matrix contribution and the RLE predictions form an
      :class:`ImageResult`; with an :class:`EvaluationPlan` (:meth:`use_plan`) each is written to
      the plan's shard store as soon as it is computed, and the stored results of images done
      by an earlier run are merged in :meth:`evaluate` (exact: the matrices are sums).
    * A label map that cannot be read (``sem_seg_loading_fn`` raises :class:`ClearCLIPError`),
      has another size than the prediction or values outside the classes is a bad input
      (:meth:`report_bad_input`): the evaluation stops with one line, or with
      ``skip_bad_images`` the image is left out and listed in ``skipped.txt``.
    * A model output may carry ``sem_seg_labels`` [H, W] (the class-chunked path) instead of
      ``sem_seg`` [K, H, W].
    * The results gain ``"evaluation": {"images": ..., "skipped_images": ...}``;
      ``sem_seg_predictions.json`` is in dataset order whatever the processes and resumes.
    """

    def __init__(self, dataset_name: str, distributed: bool = True, output_dir: str = None, *, skip_bad_images: bool = False, **kwargs):
        super().__init__(dataset_name, distributed=distributed, output_dir=output_dir, **kwargs)
        self._skip_bad_images = skip_bad_images
        self._dataset_order = {file_name: index for index, file_name in enumerate(self.input_file_to_gt_file)}
        self._plan = None

    def use_plan(self, plan) -> None:
        """Write per-image results to ``plan.store`` and merge ``plan.done`` at the end."""
        self._plan = plan

    def reset(self):
        super().reset()
        self._predictions_by_file = {}
        self._skipped = []

    def process(self, inputs, outputs):
        for input, output in zip(inputs, outputs):
            try:
                result = self.evaluate_image(input, output)
            except ClearCLIPError as e:
                self.report_bad_input(input["file_name"], user_message(e))
                continue
            self._add_result(result)
            if self._plan is not None and self._plan.store is not None:
                self._plan.store.write(result, self._num_classes, self.input_file_to_gt_file[result.file_name])

    def evaluate_image(self, input, output) -> ImageResult:
        """One image's confusion-matrix contribution and RLE predictions; bad labels raise."""
        pred = np.asarray(output_labels(output).to("cpu"), dtype=np.int64)
        gt_file = self.input_file_to_gt_file[input["file_name"]]
        gt = self.sem_seg_loading_fn(gt_file, dtype=int)
        check_label_map(gt, pred.shape, self._num_classes, self._ignore_label, gt_file, input["file_name"])
        gt[gt == self._ignore_label] = self._num_classes
        side = self._num_classes + 1
        confusion = sparse_counts(side * pred.reshape(-1) + gt.reshape(-1), side * side)
        boundary = None
        if self._compute_boundary_iou:
            b_gt = self._mask_to_boundary(gt.astype(np.uint8))
            b_pred = self._mask_to_boundary(pred.astype(np.uint8))
            boundary = sparse_counts(side * b_pred.reshape(-1) + b_gt.reshape(-1), side * side)
        return ImageResult(input["file_name"], confusion, boundary, self.encode_json_sem_seg(pred, input["file_name"]))

    def _add_result(self, result: ImageResult) -> None:
        add_counts(self._conf_matrix, result.confusion)
        add_counts(self._b_conf_matrix, result.boundary_confusion)
        self._predictions_by_file[result.file_name] = result.predictions

    def report_bad_input(self, file_name: str, reason: str) -> None:
        """A bad image or label: stop with one line, or (``skip_bad_images``) record and go on."""
        if not self._skip_bad_images:
            store = self._plan.store if self._plan is not None else None
            done = store.count() if store is not None else len(self._predictions_by_file)
            raise ClearCLIPError(
                stop_message(reason, done, len(self._dataset_order), store.folder if store is not None else "")
            )
        logger.warning(f"Skipping a bad image (--skip-bad-images): {reason}")
        self._skipped.append((file_name, reason))

    def evaluate(self):
        if self._distributed:
            synchronize()
            parts = all_gather((self._conf_matrix, self._b_conf_matrix, self._predictions_by_file, self._skipped))
            if not is_main_process():
                return None
            self._conf_matrix = sum(part[0] for part in parts)
            self._b_conf_matrix = sum(part[1] for part in parts)
            self._predictions_by_file = {k: v for part in parts for k, v in part[2].items()}
            self._skipped = [entry for part in parts for entry in part[3]]
        for result in (self._plan.done.values() if self._plan is not None else ()):
            self._add_result(result)
        order = sorted(self._predictions_by_file, key=self._dataset_order.__getitem__)
        self._predictions = [entry for file_name in order for entry in self._predictions_by_file[file_name]]
        self._skipped.sort(key=lambda entry: self._dataset_order.get(entry[0], -1))
        self._record_skipped()
        results = self._evaluate_merged()
        results["evaluation"] = {"images": len(order), "skipped_images": len(self._skipped)}
        return results

    def _record_skipped(self) -> None:
        if self._skipped:
            logger.warning(f"{len(self._skipped)} bad image(s) were skipped, not in the metrics, listed in {SKIPPED_FILE}")
        if self._output_dir:
            write_skipped_list(self._output_dir, self._skipped)

    def _evaluate_merged(self):
        """Detectron2's metrics (and files) from the merged matrices and predictions."""
        distributed, self._distributed = self._distributed, False
        try:
            return super().evaluate()
        finally:
            self._distributed = distributed


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
            decision = ("ok", sorted(done))
        except ClearCLIPError as e:
            decision = ("error", str(e))
    if comm.get_world_size() > 1:
        decision = comm.all_gather(decision)[0]
    if decision[0] == "error":
        raise ClearCLIPError(decision[1])
    done_files = set(decision[1])
    remaining = [d for d in dicts if d["file_name"] not in done_files]
    return EvaluationPlan(remaining, store, done)


def _open_store(store: ShardStore, cfg, dataset_name: str, dicts: List[Dict], resume: bool) -> Dict[str, ImageResult]:
    fingerprint = evaluation_fingerprint(cfg, dataset_name, dicts)
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
    instead of the model. With nothing left to do, only the stored results are merged.
    """
    evaluator.use_plan(plan)
    if not plan.remaining:
        evaluator.reset()
        return evaluator.evaluate() or {}
    loader = BadInputFilter(build_loader(plan.remaining), evaluator.report_bad_input)
    return inference_on_dataset(model, loader, evaluator)
