"""Resumable evaluation: per-image results kept on disk as the evaluation goes.

The metrics of :class:`~.sem_seg_evaluation.ClearCLIPSemSegEvaluator` are functions of a
confusion matrix that is a sum of per-image contributions, so an evaluation can be cut at any
image and continued exactly. Each image's contribution (sparse: the non-zero cells of the
confusion matrix and of the boundary confusion matrix) and its predicted label map (Detectron2's
RLE entries of ``sem_seg_predictions.json``) are written, atomically, to one shard file by the
process that evaluated it::

    <output dir>/eval_shards/fingerprint.json      what the shards belong to
    <output dir>/eval_shards/images/<id>.json      one image each

A run with ``--resume-eval`` evaluates only the images without a shard (they are removed from
the dataset before the data loader is built, so the model never sees them) and merges the
stored contributions: the metrics and the predictions file are those of an uninterrupted run,
whatever the number of processes before and after. A run without ``--resume-eval`` starts
afresh (the old shards are removed). The fingerprint covers what changes results:

* config: every ``MODEL.*`` and ``INPUT.*`` key except those that only change speed or memory
  (:data:`RESULT_NEUTRAL_KEYS`), with the device type; the dataset name, its classes and
  ignore label; the content of ``CLASS_NAMES_FILE`` and of a model-config JSON; this package's
  version;
* weights: the SHA-256 of the checkpoint file (``PRETRAINED`` and ``MODEL.WEIGHTS``), or the
  open_clip tag, or "random";
* dataset: the names of its images and label maps, relative to their folders (so the dataset
  may move, e.g. to another ``DETECTRON2_DATASETS``, between runs).

A resume with another fingerprint is refused, never mixed. Each shard also records the files
its result came from (the image's size in bytes and the label map's SHA-256): a shard whose
image or label map has changed since is not used, and that image is evaluated again, so a
bad file that was fixed, or a corrected label map, is simply evaluated with its new content.
"""

import hashlib
import json
import logging
import os
import shutil
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Iterable, List, Optional, Tuple

import numpy as np
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.evaluation import SemSegEvaluator, inference_on_dataset
from detectron2.utils import comm
from detectron2.utils.comm import all_gather, is_main_process, synchronize

from ..modeling.inference.class_chunks import output_labels
from ..utils.errors import ClearCLIPError, user_message
from ..utils.io import atomic_write, atomic_write_json, file_sha256
from .bad_inputs import SKIPPED_FILE, BadInputFilter, check_label_map, stop_message, write_skipped_list

logger = logging.getLogger(__name__)

SHARD_FOLDER = "eval_shards"
FINGERPRINT_FILE = "fingerprint.json"
FORMAT_VERSION = 2  # 2: CLIP weights identified as in the text-embedding cache

# Keys that change speed or memory only: changing them between a run and its resume is allowed.
RESULT_NEUTRAL_KEYS = frozenset(
    {
        "MODEL.CLEARCLIP.WINDOW_BATCH",
        "MODEL.CLEARCLIP.TEXT_BATCH_SIZE",
        "MODEL.CLEARCLIP.CLASS_CHUNK",
        "MODEL.CLEARCLIP.MAX_DENSE_ELEMENTS",
        "MODEL.CLEARCLIP.WEIGHTS_CACHE_DIR",
        "MODEL.CLEARCLIP.CACHE_DIR",
        "MODEL.CLEARCLIP.PRETRAINED_SHA256",
        # Stand for weights: the fingerprint holds the file hashes instead of the paths.
        "MODEL.CLEARCLIP.PRETRAINED",
        "MODEL.WEIGHTS",
    }
)

SparseCounts = Tuple[np.ndarray, np.ndarray]  # flat cell indices (unique), counts; both int64


# ----------------------------------------------------------------------------- per-image results
@dataclass
class ImageResult:
    """One image's part of the evaluation.

    Attributes:
        file_name: the image, as in the dataset dict.
        confusion: non-zero cells of the image's (K+1) x (K+1) confusion matrix
            (``pred * (K + 1) + gt``, ignore mapped to K).
        boundary_confusion: the same for the boundary IoU matrix, or None when not computed.
        predictions: Detectron2's RLE entries of the predicted label map.
    """

    file_name: str
    confusion: SparseCounts
    boundary_confusion: Optional[SparseCounts]
    predictions: List[Dict[str, Any]]


def sparse_counts(flat_cells: np.ndarray, num_cells: int) -> SparseCounts:
    """Count cell indices: the non-zero entries of ``bincount(flat_cells, minlength=num_cells)``."""
    counts = np.bincount(flat_cells.reshape(-1), minlength=num_cells)
    index = np.flatnonzero(counts)
    return index.astype(np.int64), counts[index].astype(np.int64)


def add_counts(matrix: np.ndarray, counts: Optional[SparseCounts]) -> None:
    """Add sparse counts to a confusion matrix in place."""
    if counts is not None:
        matrix.reshape(-1)[counts[0]] += counts[1]


def result_to_json(result: ImageResult, key: str, num_classes: int) -> Dict[str, Any]:
    def encode(counts):
        return None if counts is None else {"index": counts[0].tolist(), "count": counts[1].tolist()}

    return {
        "format": FORMAT_VERSION,
        "image": key,
        "num_classes": num_classes,
        "confusion": encode(result.confusion),
        "boundary_confusion": encode(result.boundary_confusion),
        "predictions": [{k: v for k, v in entry.items() if k != "file_name"} for entry in result.predictions],
    }


def result_from_json(record: Dict[str, Any], file_name: str) -> ImageResult:
    def decode(counts):
        if counts is None:
            return None
        return np.asarray(counts["index"], dtype=np.int64), np.asarray(counts["count"], dtype=np.int64)

    predictions = [{"file_name": file_name, **entry} for entry in record["predictions"]]
    return ImageResult(file_name, decode(record["confusion"]), decode(record["boundary_confusion"]), predictions)


# ----------------------------------------------------------------------------- shard store
def common_folder(paths: Iterable[str]) -> str:
    """The deepest folder that contains all ``paths``."""
    folders = [os.path.dirname(os.path.abspath(p)) for p in paths]
    return os.path.commonpath(folders) if folders else ""


def relative_path(path: str, root: str) -> str:
    return os.path.relpath(os.path.abspath(path), root)


class ShardStore:
    """The per-image shards of one dataset's evaluation, in ``folder``.

    Images are keyed by their path relative to ``image_root`` (the dataset's common folder).
    """

    def __init__(self, folder: str, image_root: str):
        self.folder = folder
        self.image_root = image_root
        self.images_folder = os.path.join(folder, "images")

    def key(self, file_name: str) -> str:
        return relative_path(file_name, self.image_root)

    def shard_path_of_key(self, key: str) -> str:
        digest = hashlib.sha1(key.encode("utf-8")).hexdigest()[:24]
        return os.path.join(self.images_folder, f"{digest}.json")

    def write(self, result: ImageResult, num_classes: int, label_file: str) -> None:
        """Write one image's shard atomically (a killed run leaves it whole or absent)."""
        key = self.key(result.file_name)
        record = result_to_json(result, key, num_classes)
        record["files"] = input_files_identity(result.file_name, label_file)
        with atomic_write(self.shard_path_of_key(key), "w") as f:
            json.dump(record, f, separators=(",", ":"))

    def load(self, dataset_dicts: Iterable[Dict], num_classes: int) -> Dict[str, ImageResult]:
        """The stored results of the images that have a usable shard, by file name.

        A shard that cannot be read, holds another image or class count, or whose image or
        label map changed since it was written is not used (its image is evaluated again).
        """
        done = {}
        for record in dataset_dicts:
            file_name = record["file_name"]
            key = self.key(file_name)
            path = self.shard_path_of_key(key)
            if not os.path.isfile(path):
                continue
            try:
                with open(path, encoding="utf-8") as f:
                    shard = json.load(f)
                if shard.get("image") != key or shard.get("num_classes") != num_classes:
                    raise ValueError("it belongs to another image or class count")
                result = result_from_json(shard, file_name)
            except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
                logger.warning(f"Ignoring unreadable shard {path} ({e}); {file_name} will be evaluated again")
                continue
            if shard.get("files") != input_files_identity(file_name, record["sem_seg_file_name"]):
                logger.warning(f"{file_name} or its label map changed since it was evaluated; evaluating it again")
                continue
            done[file_name] = result
        return done

    def count(self) -> int:
        """Number of shards on disk (all processes)."""
        if not os.path.isdir(self.images_folder):
            return 0
        return sum(1 for name in os.listdir(self.images_folder) if name.endswith(".json"))

    def read_fingerprint(self) -> Optional[Dict[str, Any]]:
        path = os.path.join(self.folder, FINGERPRINT_FILE)
        try:
            with open(path, encoding="utf-8") as f:
                return json.load(f)
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as e:
            raise ClearCLIPError(
                f"cannot read {path} ({e}); delete {self.folder} to start the evaluation afresh"
            ) from e

    def start_afresh(self, fingerprint: Dict[str, Any]) -> None:
        """Remove every shard, then record the fingerprint of the new evaluation."""
        shutil.rmtree(self.images_folder, ignore_errors=True)
        os.makedirs(self.images_folder, exist_ok=True)
        atomic_write_json(os.path.join(self.folder, FINGERPRINT_FILE), fingerprint)


# ----------------------------------------------------------------------------- fingerprint
def evaluation_fingerprint(cfg, dataset_name: str, dataset_dicts: List[Dict]) -> Dict[str, Any]:
    """What the results of evaluating ``dataset_name`` with ``cfg`` depend on (JSON-able)."""
    return {
        "format": FORMAT_VERSION,
        "config": result_relevant_config(cfg, dataset_name),
        "weights": weights_identity(cfg),
        "dataset": dataset_identity(dataset_dicts),
    }


def flatten_config(node, prefix: str) -> Dict[str, Any]:
    """``{"MODEL.CLEARCLIP.LOGIT_SCALE": 50.0, ...}`` for a CfgNode."""
    flat = {}
    for key, value in node.items():
        name = f"{prefix}.{key}"
        if hasattr(value, "items"):
            flat.update(flatten_config(value, name))
        else:
            flat[name] = list(value) if isinstance(value, tuple) else value
    return flat


def result_relevant_config(cfg, dataset_name: str) -> Dict[str, Any]:
    from ..constants import __version__

    config = {**flatten_config(cfg.MODEL, "MODEL"), **flatten_config(cfg.INPUT, "INPUT")}
    config = {key: value for key, value in config.items() if key not in RESULT_NEUTRAL_KEYS}
    config["MODEL.DEVICE"] = str(cfg.MODEL.DEVICE).split(":")[0]
    cc = cfg.MODEL.get("CLEARCLIP")
    if cc is not None:
        if cc.MODEL_NAME.endswith(".json") and os.path.isfile(cc.MODEL_NAME):
            config["MODEL.CLEARCLIP.MODEL_NAME"] = f"{os.path.basename(cc.MODEL_NAME)} sha256 {file_sha256(cc.MODEL_NAME)}"
        if cc.CLASS_NAMES_FILE:
            config["MODEL.CLEARCLIP.CLASS_NAMES_FILE"] = f"sha256 {file_sha256(cc.CLASS_NAMES_FILE)}"
    meta = MetadataCatalog.get(dataset_name)
    config["dataset"] = dataset_name
    config["dataset stuff_classes"] = list(meta.get("stuff_classes") or [])
    config["dataset ignore_label"] = meta.get("ignore_label")
    config["clearclip_d2 version"] = __version__
    return json.loads(json.dumps(config, default=str))


def weights_identity(cfg) -> Dict[str, str]:
    """The weights' identity: file hashes, an open_clip tag, or "random"."""
    identity = {}
    cc = cfg.MODEL.get("CLEARCLIP")
    if cc is not None:
        from ..modeling.clip.loading import resolve_architecture, weights_identity as clip_weights

        identity["MODEL.CLEARCLIP.PRETRAINED"] = clip_weights(resolve_architecture(cc.MODEL_NAME), cc.PRETRAINED)
    if cfg.MODEL.WEIGHTS:
        weights = cfg.MODEL.WEIGHTS
        identity["MODEL.WEIGHTS"] = f"sha256 {file_sha256(weights)}" if os.path.isfile(weights) else weights
    return identity


def dataset_identity(dataset_dicts: List[Dict]) -> Dict[str, Any]:
    """Image count and a digest of the image and label-map names, relative to their folders."""
    image_root = common_folder(d["file_name"] for d in dataset_dicts)
    label_root = common_folder(d["sem_seg_file_name"] for d in dataset_dicts)
    names = [[relative_path(d["file_name"], image_root), relative_path(d["sem_seg_file_name"], label_root)] for d in dataset_dicts]
    return {"images": len(names), "sha256": hashlib.sha256(json.dumps(names).encode("utf-8")).hexdigest()}


def input_files_identity(image_file: str, label_file: str) -> Dict[str, Any]:
    """What one image's result came from: the image's size in bytes (a re-encoded or repaired
    image changes it) and the SHA-256 of the label map (small, and it defines the metrics)."""
    try:
        image_bytes = os.path.getsize(image_file)
    except OSError:
        image_bytes = None
    return {"image_bytes": image_bytes, "label_sha256": file_sha256(label_file) if os.path.isfile(label_file) else None}


def fingerprint_difference(stored: Dict[str, Any], current: Dict[str, Any]) -> Optional[str]:
    """A short description of the first differences, or None when the fingerprints agree."""
    if stored == current:
        return None
    differences = []
    for part in ("config", "weights"):
        old, new = stored.get(part) or {}, current.get(part) or {}
        for key in sorted(set(old) | set(new)):
            if old.get(key) != new.get(key):
                differences.append(f"{part} {key}: {_short(old.get(key))} -> {_short(new.get(key))}")
    if stored.get("dataset") != current.get("dataset"):
        old, new = stored.get("dataset") or {}, current.get("dataset") or {}
        differences.append(
            f"dataset: {old.get('images')} images -> {new.get('images')} images"
            + ("" if old.get("images") != new.get("images") else " with other names")
        )
    if not differences:
        differences.append(f"format {stored.get('format')} -> {current.get('format')}")
    more = f" (and {len(differences) - 3} more)" if len(differences) > 3 else ""
    return "; ".join(differences[:3]) + more


def _short(value, limit: int = 60) -> str:
    text = "missing" if value is None else str(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


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
