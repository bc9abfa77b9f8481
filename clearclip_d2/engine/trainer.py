"""``Trainer``: Detectron2's ``DefaultTrainer`` with ClearCLIP's evaluation (``tools/train_net.py``).

Evaluation: every dataset of ``DATASETS.TEST`` with its own vocabulary, resumable per image
(``evaluation/resumable.py``), bad files stopped or skipped; results printed as tables and
written to ``OUTPUT_DIR/metrics.json``. Training: the sem-seg train loader for Detectron2 heads
on the frozen ClearCLIP backbone. :func:`check_run_config` refuses a run that cannot work before
any process starts.
"""

import contextlib
import logging
import os
import sys
from collections import OrderedDict

from detectron2.data import MetadataCatalog, build_detection_test_loader, build_detection_train_loader
from detectron2.engine import DefaultTrainer
from detectron2.evaluation import print_csv_format
from detectron2.utils import comm
from tabulate import tabulate

from ..config import check_clearclip_config
from ..data import ClearCLIPDatasetMapper
from ..data.dataset_mapper import max_mapped_image_bytes
from ..data.image_slots import SlotHandingMapper, slots_for_test_loader
from ..data.datasets import check_dataset_prepared
from ..data.sem_seg_train import build_sem_seg_train_mapper
from ..data.vocabulary import load_vocabulary_file
from ..evaluation import ClearCLIPSemSegEvaluator
from ..evaluation.bad_inputs import progress_message
from ..evaluation.sem_seg_evaluation import MAX_IMAGES_IN_FLIGHT
from ..evaluation.resumable import plan_evaluation, run_planned_evaluation
from ..evaluation.shards import SHARD_FOLDER, ShardStore
from ..checks import check_num_workers, check_vocabulary_matches_dataset, check_weights_file
from ..modeling.backbone import check_clearclip_backbone_config
from ..modeling.checkpoint import safe_checkpointer_like
from ..utils.errors import ClearCLIPError
from ..utils.io import atomic_write_json
from ..utils.processes import end_workers_with_the_reader

logger = logging.getLogger("clearclip_d2")
SUMMARY_METRICS = ("mIoU", "mIoU-mmseg", "fwIoU", "mACC", "pACC")


class Trainer(DefaultTrainer):
    """Detectron2's trainer with ClearCLIP's test-time data path and evaluator (resumable, bad
    files stopped or skipped), and the sem-seg train loader for heads on the ClearCLIP backbone."""

    def build_hooks(self):
        """Detectron2's hooks, with its checkpointer (built just before, and saved by the
        periodic-checkpoint hook) replaced by one that reads weights as tensors only."""
        self.checkpointer = safe_checkpointer_like(self.checkpointer, self.cfg)
        return super().build_hooks()

    @classmethod
    def build_evaluator(cls, cfg, dataset_name, output_folder=None, skip_bad_images=False, images_in_flight=MAX_IMAGES_IN_FLIGHT):
        """ClearCLIP's evaluator, its per-image work on a background thread (up to
        ``images_in_flight`` images outstanding; 0: in line, ``tools/benchmark.py --evaluator-in-line``)."""
        if output_folder is None:
            output_folder = evaluation_output_dir(cfg, dataset_name)
        return ClearCLIPSemSegEvaluator(
            dataset_name, distributed=True, output_dir=output_folder, skip_bad_images=skip_bad_images,
            images_in_flight=images_in_flight,
        )

    @classmethod
    def build_train_loader(cls, cfg):
        """A head on the ClearCLIP backbone: images with their label maps, resized, cropped, flipped."""
        if cfg.MODEL.META_ARCHITECTURE == "SemanticSegmentor":
            return build_detection_train_loader(cfg, mapper=build_sem_seg_train_mapper(cfg))
        return super().build_train_loader(cfg)

    @classmethod
    def build_test_loader(cls, cfg, dataset_name, dataset_dicts=None):
        """The test loader of a dataset (Detectron2's signature, for hooks and user code), or of
        ``dataset_dicts`` (the images still to evaluate, as :meth:`test` uses it), whose
        unreadable images come out as markers for the evaluator. Its worker processes end
        with the process reading it (:func:`~..utils.processes.end_workers_with_the_reader`) and
        hand their images over through shared-memory slots (:mod:`~..data.image_slots`)."""
        mapper = ClearCLIPDatasetMapper(cfg, False, mark_bad_images=dataset_dicts is not None)
        slots = slots_for_test_loader(cfg.DATALOADER.NUM_WORKERS, max_mapped_image_bytes(cfg))
        if slots is not None:
            mapper = SlotHandingMapper(mapper, slots)
        if dataset_dicts is None:
            loader = build_detection_test_loader(cfg, dataset_name, mapper=mapper)
        else:
            loader = build_detection_test_loader(dataset_dicts, mapper=mapper, num_workers=cfg.DATALOADER.NUM_WORKERS)
        return end_workers_with_the_reader(loader)

    @classmethod
    def test(cls, cfg, model, evaluators=None, resume_eval=False, skip_bad_images=False):
        """Evaluate every dataset of ``DATASETS.TEST``, each with its own vocabulary, keeping
        per-image results in the output folder (``resume_eval``: skip the images done there)."""
        results = OrderedDict()
        for index, dataset_name in enumerate(cfg.DATASETS.TEST):
            if hasattr(model, "use_dataset"):  # its classes and background threshold
                model.use_dataset(dataset_name)
            evaluator = evaluators[index] if evaluators else cls.build_evaluator(cfg, dataset_name, skip_bad_images=skip_bad_images)
            plan = plan_evaluation(cfg, dataset_name, evaluation_output_dir(cfg, dataset_name), resume_eval)
            with labels_for(model, evaluator):
                results[dataset_name] = run_planned_evaluation(
                    model, plan, evaluator, lambda dicts: cls.build_test_loader(cfg, dataset_name, dicts)
                )
            if comm.is_main_process():
                logger.info(f"Evaluation results for {dataset_name}:")
                print_csv_format(results[dataset_name])
                print_results_table(dataset_name, results[dataset_name])
        return results


def labels_for(model, evaluator):
    """ClearCLIP's evaluator needs only the labels: the model skips the [K, H, W] probabilities
    (``labels_only``); other evaluators get Detectron2's ``sem_seg``."""
    if isinstance(evaluator, ClearCLIPSemSegEvaluator) and hasattr(model, "labels_only"):
        return model.labels_only()
    return contextlib.nullcontext()


def evaluation_output_dir(cfg, dataset_name):
    """``OUTPUT_DIR`` for one test dataset, ``OUTPUT_DIR/<dataset>`` when there are several."""
    if len(cfg.DATASETS.TEST) > 1:
        return os.path.join(cfg.OUTPUT_DIR, dataset_name)
    return cfg.OUTPUT_DIR


def print_results_table(dataset_name, results):
    metrics = results.get("sem_seg", {})
    summary = [[name, f"{metrics[name]:.2f}"] for name in SUMMARY_METRICS if name in metrics]
    per_class = [
        [key[len("IoU-"):], f"{value:.2f}", f"{metrics.get('ACC-' + key[len('IoU-'):], float('nan')):.2f}"]
        for key, value in metrics.items()
        if key.startswith("IoU-")
    ]
    print(f"\n{dataset_name}\n" + tabulate(summary, headers=["metric", "value"], tablefmt="pipe"), flush=True)
    print(tabulate(per_class, headers=["class", "IoU", "ACC"], tablefmt="pipe") + "\n", flush=True)
    counts = results.get("evaluation", {})
    if counts.get("skipped_images"):
        print(f"{counts['images']} images evaluated, {counts['skipped_images']} bad images skipped (skipped.txt)\n", flush=True)


def check_run_config(cfg, eval_only: bool) -> None:
    """Refuse, in one line, a run that cannot work: training ClearCLIP, no datasets, a dataset
    not prepared, a bad ``MODEL.CLEARCLIP`` value or ClearCLIP backbone."""
    if cfg.MODEL.META_ARCHITECTURE == "ClearCLIPSegmentor":
        check_clearclip_config(cfg)
        if not eval_only:
            raise ClearCLIPError(
                "ClearCLIP is training-free: there is nothing to train; run with --eval-only to evaluate"
            )
    check_weights_file(cfg.MODEL.WEIGHTS, "MODEL.WEIGHTS", cfg.MODEL.CLEARCLIP.TRUST_PICKLED_WEIGHTS)
    check_num_workers(cfg.DATALOADER.NUM_WORKERS)
    if cfg.MODEL.BACKBONE.NAME == "build_clearclip_backbone":
        check_clearclip_backbone_config(cfg)
    if eval_only and not cfg.DATASETS.TEST:
        raise ClearCLIPError("DATASETS.TEST is empty: name the datasets to evaluate")
    if not eval_only and not cfg.DATASETS.TRAIN:
        raise ClearCLIPError("DATASETS.TRAIN is empty: name the datasets to train on")
    for dataset_name in cfg.DATASETS.TEST if eval_only else [*cfg.DATASETS.TRAIN, *cfg.DATASETS.TEST]:
        check_dataset_prepared(dataset_name)
    if cfg.MODEL.META_ARCHITECTURE == "ClearCLIPSegmentor" and cfg.MODEL.CLEARCLIP.CLASS_NAMES_FILE:
        num_names = len(load_vocabulary_file(cfg.MODEL.CLEARCLIP.CLASS_NAMES_FILE))
        for dataset_name in cfg.DATASETS.TEST:
            num_classes = len(MetadataCatalog.get(dataset_name).get("stuff_classes") or [])
            check_vocabulary_matches_dataset(num_names, dataset_name, num_classes, f"MODEL.CLEARCLIP.CLASS_NAMES_FILE {cfg.MODEL.CLEARCLIP.CLASS_NAMES_FILE}")


def report_evaluation_progress(cfg, program: str) -> None:
    """After the processes of an evaluation stopped at a bad file have all ended: print, per test
    dataset, how many images are done (the shards on disk, written by every process)."""
    for dataset_name in cfg.DATASETS.TEST:
        store = ShardStore(os.path.join(evaluation_output_dir(cfg, dataset_name), SHARD_FOLDER), "")
        fingerprint = store.read_fingerprint() if os.path.isdir(store.folder) else None
        if fingerprint is not None:
            total = (fingerprint.get("dataset") or {}).get("images", "?")
            print(f"{program}: {progress_message(dataset_name, store.count(), total, store.folder)}", file=sys.stderr, flush=True)


def write_metrics(cfg, results):
    """``OUTPUT_DIR/metrics.json`` (``{dataset_name: results}``), by the main process."""
    if comm.is_main_process():
        path = os.path.join(cfg.OUTPUT_DIR, "metrics.json")
        atomic_write_json(path, results)
        logger.info(f"Wrote {path}")
