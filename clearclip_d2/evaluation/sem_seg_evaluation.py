"""ClearCLIP's semantic-segmentation evaluator: Detectron2's ``SemSegEvaluator`` metrics and files,
computed by the plugin from its own confusion matrices, resumable, with bad label maps named."""

import logging
import os
import threading
from collections import OrderedDict
from typing import Any, Dict, Iterable, List, NamedTuple, Optional, Sequence, Tuple

import numpy as np
import pycocotools.mask as mask_util
import torch
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.evaluation import DatasetEvaluator
from detectron2.utils import comm
from PIL import Image

from ..modeling.inference.class_chunks import output_labels
from ..utils.errors import ClearCLIPError, user_message
from ..utils.io import atomic_write
from ..utils.timing import NO_TIMER
from .background import InOrderWorker
from .bad_inputs import SKIPPED_FILE, check_label_map, stop_message, write_skipped_list
from .metrics import boundary_iou_supported, confusion_cells, mask_to_boundary, mmseg_metrics, sem_seg_metrics
from .resumable import EvaluationState, gather_on_main_process
from .shards import ImageResult, join_json_lists, sparse_counts

logger = logging.getLogger(__name__)

PREDICTIONS_FILE = "sem_seg_predictions.json"
METRICS_FILE = "sem_seg_evaluation.pth"
# Images whose evaluation may be outstanding on the background thread before process() waits:
# enough to ride out the variations of the model's and the worker's times, few label maps held.
MAX_IMAGES_IN_FLIGHT = 4


def load_label_map(path: str, dtype=int) -> np.ndarray:
    """Read a label PNG/TIFF as an integer array, naming the file if it cannot be read."""
    try:
        with Image.open(path) as img:
            return np.array(img, dtype=dtype)
    except FileNotFoundError as e:
        raise ClearCLIPError(f"label map {path} does not exist") from e
    except Exception as e:
        raise ClearCLIPError(f"cannot read label map {path}: {type(e).__name__}: {e}") from e


def class_runs(labels: np.ndarray) -> Tuple[np.ndarray, List[np.ndarray]]:
    """The classes of a label map and, per class, the uncompressed COCO RLE counts of its mask.

    COCO's RLE runs over the pixels in column-major order and alternates zeros and ones, starting
    with zeros (a first count 0 when the mask starts with a one); the last count is the mask's
    last run. The runs of the whole map are found once, then grouped by class.

    Args:
        labels: [H, W] non-negative integer labels.

    Returns:
        the classes present, ascending (``np.unique(labels)``), and, per class, its int64 counts.
    """
    flat = np.ascontiguousarray(labels.T).reshape(-1)
    area = flat.size
    change = np.flatnonzero(flat[1:] != flat[:-1]) + 1
    starts, ends = np.concatenate(([0], change)), np.concatenate((change, [area]))
    order = np.argsort(flat[starts], kind="stable")  # runs grouped by class, in pixel order
    starts, ends = starts[order], ends[order]
    values = flat[starts]
    first = np.flatnonzero(np.concatenate(([True], values[1:] != values[:-1])))  # each class's first run
    previous_end = np.concatenate(([0], ends[:-1]))
    previous_end[first] = 0
    counts = np.empty(2 * len(starts), dtype=np.int64)
    counts[0::2] = starts - previous_end  # zeros before each run
    counts[1::2] = ends - starts  # the run
    last_end = ends[np.concatenate((first[1:], [len(ends)])) - 1]
    per_class = [
        np.append(c, area - end) if end < area else c for c, end in zip(np.split(counts, 2 * first[1:]), last_end)
    ]
    return values[first], per_class


def encode_predictions(labels: np.ndarray, file_name: str, dataset_ids: Optional[Dict[int, Any]]) -> List[Dict[str, Any]]:
    """Detectron2's entries of ``sem_seg_predictions.json`` for one image (COCO stuff results
    format): one RLE-encoded mask per predicted class, ascending.

    The strings are pycocotools' ``encode`` of each class's mask; they are made here from the
    runs of the whole map (:func:`class_runs`) by pycocotools' ``frPyObjects`` in one call.

    Args:
        labels: [H, W] predicted classes (contiguous ids), any integer dtype.
        dataset_ids: contiguous id -> the dataset's category id, or None: the id itself.
    """
    classes, counts = class_runs(labels)
    height, width = labels.shape
    rles = mask_util.frPyObjects([{"size": [height, width], "counts": c} for c in counts], height, width)
    entries = []
    for label, rle in zip(classes.tolist(), rles):
        if dataset_ids is None:
            category_id = label
        elif label in dataset_ids:
            category_id = dataset_ids[label]
        else:
            raise ClearCLIPError(f"predicted class {label} has no stuff_dataset_id_to_contiguous_id entry in {file_name}'s dataset metadata")
        rle["counts"] = rle["counts"].decode("utf-8")
        entries.append({"file_name": file_name, "category_id": category_id, "segmentation": rle})
    return entries


class ClearCLIPSemSegEvaluator(DatasetEvaluator):
    """The metrics of Detectron2's ``SemSegEvaluator`` (main branch: mIoU, fwIoU, mACC, pACC,
    per-class IoU/ACC, boundary IoU; see :mod:`.metrics`) plus ``mIoU-mmseg``, and its files.

    * Per image, the confusion-matrix contributions and the RLE predictions form an
      :class:`~.shards.ImageResult`, summed into this process's :class:`~.resumable.EvaluationState`;
      :meth:`evaluate` sums every process's state on the main process and computes the metrics
      from the summed matrices (:func:`~.metrics.sem_seg_metrics`).
    * With an :class:`~.resumable.EvaluationPlan` (:meth:`use_plan`) each image's result is
      written to the plan's shard store as soon as it is computed, and the stored results of
      images done by an earlier run are merged in :meth:`evaluate` (exact: the matrices are sums).
    * A label map that cannot be read, has another size than the prediction or values outside
      the classes is a bad input (:meth:`report_bad_input`): the evaluation stops with one line,
      or with ``skip_bad_images`` the image is left out and listed in ``skipped.txt``.
    * A model output may carry ``sem_seg_labels`` [H, W] (the class-chunked path) instead of
      ``sem_seg`` [K, H, W].
    * With ``images_in_flight`` > 0 (``Trainer.build_evaluator``: :data:`MAX_IMAGES_IN_FLIGHT`)
      the per-image work after the model (label map, confusion, boundary, RLE, shard) runs on
      one background thread (:class:`~.background.InOrderWorker`), overlapping the model's next
      images; the results are taken in dataset order in the calling thread (at most
      ``images_in_flight`` outstanding), all of them before a bad input is reported, before
      :meth:`evaluate` and in :meth:`finish_pending` (which the loop must call when it ends
      otherwise: :func:`~.resumable.run_planned_evaluation` does), so counts, messages, files
      and shards are those of doing it in line; only a bad label map stops the evaluation at a
      later :meth:`process` call or in :meth:`evaluate`. After a bad label map (without
      ``skip_bad_images``) the thread does nothing more: the shards on disk are those of the
      images before it. With 0 (the default) the work is done in :meth:`process`, in line.
    * The results gain ``"evaluation": {"images": ..., "skipped_images": ...}``;
      ``sem_seg_predictions.json`` (in dataset order whatever the processes and resumes),
      ``skipped.txt`` and ``sem_seg_evaluation.pth`` are each written atomically to ``output_dir``.
    """

    def __init__(
        self, dataset_name: str, distributed: bool = True, output_dir: Optional[str] = None, *,
        skip_bad_images: bool = False, images_in_flight: int = 0,
    ):
        self._dataset_name = dataset_name
        self._distributed = distributed
        self._output_dir = output_dir
        self._skip_bad_images = skip_bad_images
        self.input_file_to_gt_file = {d["file_name"]: d["sem_seg_file_name"] for d in DatasetCatalog.get(dataset_name)}
        self._dataset_order = {file_name: index for index, file_name in enumerate(self.input_file_to_gt_file)}
        meta = MetadataCatalog.get(dataset_name)
        self._class_names = list(meta.stuff_classes)
        self._num_classes = len(self._class_names)
        self._ignore_label = meta.ignore_label
        contiguous_ids = meta.get("stuff_dataset_id_to_contiguous_id")
        self._dataset_ids = None if contiguous_ids is None else {v: k for k, v in contiguous_ids.items()}
        self._compute_boundary_iou = boundary_iou_supported(self._num_classes)
        if not self._compute_boundary_iou:
            logger.warning(
                f"Boundary IoU is not computed for {dataset_name}: it needs OpenCV and fewer than 255 classes "
                f"(the dataset has {self._num_classes})"
            )
        self._plan = None
        # Seconds per part of the work (``tools/benchmark.py --dataset`` sets a
        # :class:`~clearclip_d2.utils.timing.PartTimer`). Calling thread: process (to_cpu,
        # collect), evaluate (evaluate_drain: waiting for the background thread's last images);
        # background thread: worker_label_read, worker_confusion,
        # worker_boundary, worker_rle, worker_shard_write.
        self.timer = NO_TIMER
        self._worker = InOrderWorker(images_in_flight, "clearclip-eval")
        self._halted = threading.Event()  # a bad label map stopped the evaluation: no more work
        self.reset()

    def use_plan(self, plan) -> None:
        """Write per-image results to ``plan.store`` and merge ``plan.done`` at the end."""
        self._plan = plan

    def reset(self):
        self.finish_pending()
        self._halted.clear()
        self._state = EvaluationState.empty(self._num_classes, self._compute_boundary_iou)

    def finish_pending(self) -> None:
        """Wait for the background thread's outstanding images (their shards written) and end
        the thread; their results are dropped (for a loop that ends without :meth:`evaluate`)."""
        self._worker.close()

    def process(self, inputs, outputs):
        timer = self.timer
        with timer.part("process"):
            for input, output in zip(inputs, outputs):
                with timer.part("to_cpu"):
                    pred = np.asarray(output_labels(output).detach().to("cpu").numpy(), dtype=np.int64)
                self._worker.submit(self._evaluate_in_background, input["file_name"], pred)
            with timer.part("collect"):
                self._collect(self._worker.finished())

    def _collect(self, finished: Iterable[Any]) -> None:
        """Add the background thread's results, in dataset order; report its bad inputs."""
        for item in finished:
            if isinstance(item, _BadInput):
                self._report_bad_input(item.file_name, item.reason)
            elif item is not None:
                self._state.add(item)

    def _evaluate_in_background(self, file_name: str, pred: np.ndarray):
        """On the background thread: one image's :class:`~.shards.ImageResult` (its shard
        written), a :class:`_BadInput`, or None once the evaluation has stopped."""
        if self._halted.is_set():
            return None
        try:
            try:
                result = self.evaluate_image(file_name, pred)
            except ClearCLIPError as e:
                if not self._skip_bad_images:
                    self._halted.set()
                return _BadInput(file_name, user_message(e))
            if self._plan is not None and self._plan.store is not None:
                with self.timer.part("worker_shard_write"):
                    self._plan.store.write(result, self._num_classes, self.input_file_to_gt_file[file_name])
            return result
        except BaseException:
            self._halted.set()  # the error reaches the caller in order; nothing after it is done
            raise

    def evaluate_image(self, file_name: str, pred: np.ndarray) -> ImageResult:
        """One image's confusion-matrix contributions and RLE predictions; bad labels raise.

        Args:
            pred: [H, W] int64 predicted classes.
        """
        timer = self.timer
        with timer.part("worker_label_read"):
            gt_file = self.input_file_to_gt_file[file_name]
            gt = load_label_map(gt_file, dtype=np.int64)
            check_label_map(gt, pred.shape, self._num_classes, self._ignore_label, gt_file, file_name)
        with timer.part("worker_confusion"):
            gt[gt == self._ignore_label] = self._num_classes
            num_cells = (self._num_classes + 1) ** 2
            confusion = sparse_counts(confusion_cells(pred, gt, self._num_classes), num_cells)
        boundary = None
        if self._compute_boundary_iou:
            with timer.part("worker_boundary"):
                b_gt, b_pred = mask_to_boundary(gt.astype(np.uint8)), mask_to_boundary(pred.astype(np.uint8))
                boundary = sparse_counts(confusion_cells(b_pred, b_gt, self._num_classes), num_cells)
        with timer.part("worker_rle"):
            result = ImageResult(file_name, confusion, boundary, encode_predictions(pred, file_name, self._dataset_ids))
            result.predictions_json  # noqa: B018  (made here, on the background thread)
        return result

    def report_bad_input(self, file_name: str, reason: str) -> None:
        """A bad image or label: stop with one line, or (``skip_bad_images``) record and go on.
        The images before it are done first (an earlier bad label map is reported first)."""
        self._collect(self._worker.drain())
        self._report_bad_input(file_name, reason)

    def _report_bad_input(self, file_name: str, reason: str) -> None:
        if not self._skip_bad_images:
            store = self._plan.store if self._plan is not None else None
            done = store.count() if store is not None else len(self._state.predictions_json_by_file)
            if self._distributed and comm.get_world_size() > 1:
                done = None  # the other processes go on until they are stopped: the launcher counts

            raise ClearCLIPError(
                stop_message(reason, done, len(self._dataset_order), store.folder if store is not None else "")
            )
        logger.warning(f"Skipping a bad image (--skip-bad-images): {reason}")
        self._state.skipped.append((file_name, reason))

    def evaluate(self):
        """The metrics of every process's images and of the plan's stored ones (main process;
        None on the others), with the output files written."""
        with self.timer.part("evaluate"):
            with self.timer.part("evaluate_drain"):
                self._collect(self._worker.drain())
                self.finish_pending()
            return self._evaluate()

    def _evaluate(self):
        state = gather_on_main_process(self._state, self._distributed)
        if state is None:
            return None
        for result in (self._plan.done.values() if self._plan is not None else ()):
            state.add(result)
        order = sorted(state.predictions_json_by_file, key=self._dataset_order.__getitem__)
        skipped = sorted(state.skipped, key=lambda entry: self._dataset_order.get(entry[0], -1))
        if skipped:
            logger.warning(f"{len(skipped)} bad image(s) were skipped, not in the metrics, listed in {SKIPPED_FILE}")
        metrics = sem_seg_metrics(state.confusion, self._class_names, state.boundary_confusion)
        if self._output_dir:
            predictions = join_json_lists(state.predictions_json_by_file[file_name] for file_name in order)
            self._write_outputs(predictions, skipped, metrics)
        metrics.update(mmseg_metrics(state.confusion))  # beside Detectron2's mIoU, not in its .pth
        results = OrderedDict(sem_seg=metrics)
        logger.info(results)
        results["evaluation"] = {"images": len(order), "skipped_images": len(skipped)}
        return results

    def _write_outputs(self, predictions_json: str, skipped: Sequence[Tuple[str, str]], metrics: Dict[str, float]) -> None:
        """``sem_seg_predictions.json`` (the JSON text of every image's entries, in dataset order),
        ``skipped.txt`` and ``sem_seg_evaluation.pth`` (Detectron2's metrics, as Python floats),
        each atomically."""
        with atomic_write(os.path.join(self._output_dir, PREDICTIONS_FILE), "w") as f:
            f.write(predictions_json)
        write_skipped_list(self._output_dir, skipped)
        with atomic_write(os.path.join(self._output_dir, METRICS_FILE), "wb") as f:
            torch.save(dict(metrics), f)


class _BadInput(NamedTuple):
    """A bad label map found on the background thread, reported in order by the calling thread."""

    file_name: str
    reason: str
