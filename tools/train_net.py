#!/usr/bin/env python
"""ClearCLIP evaluation (and head training on the ClearCLIP backbone) with Detectron2.

ClearCLIP itself is training-free::

    python tools/train_net.py --eval-only --config-file configs/clearclip_coco.yaml
    python tools/train_net.py --eval-only --num-gpus 2 --config-file configs/clearclip_coco.yaml \
        MODEL.CLEARCLIP.PRETRAINED /path/to/open_clip_pytorch_model.bin OUTPUT_DIR output/coco

A Detectron2 head on the frozen ClearCLIP backbone trains as usual::

    python tools/train_net.py --num-gpus 8 --config-file configs/clearclip_backbone_sem_seg_fpn_coco.yaml

``--num-gpus N`` starts N processes (one per GPU; on a machine without CUDA, N CPU processes
with the gloo backend). Metrics go to ``OUTPUT_DIR/metrics.json``. Per-image results are kept
in ``OUTPUT_DIR/eval_shards`` as the evaluation goes: ``--resume-eval`` continues an
interrupted evaluation; ``--skip-bad-images`` leaves unreadable images and bad label maps out
(listed in ``OUTPUT_DIR/skipped.txt``) instead of stopping.
"""

import logging
import os
import sys
import warnings
from collections import OrderedDict

warnings.filterwarnings("ignore", message=r".*torch\.jit\.script.*", category=FutureWarning)

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from detectron2.checkpoint import DetectionCheckpointer  # noqa: E402
from detectron2.data import build_detection_test_loader, build_detection_train_loader  # noqa: E402
from detectron2.engine import DefaultTrainer, default_argument_parser, launch  # noqa: E402
from detectron2.evaluation import print_csv_format  # noqa: E402
from detectron2.utils import comm  # noqa: E402
from tabulate import tabulate  # noqa: E402

from clearclip_d2.config import check_clearclip_config, load_clearclip_config  # noqa: E402
from clearclip_d2.data import ClearCLIPDatasetMapper  # noqa: E402
from clearclip_d2.data.datasets import check_dataset_prepared  # noqa: E402
from clearclip_d2.data.sem_seg_train import build_sem_seg_train_mapper  # noqa: E402
from clearclip_d2.evaluation import ClearCLIPSemSegEvaluator  # noqa: E402
from clearclip_d2.evaluation.resumable import plan_evaluation, run_planned_evaluation  # noqa: E402
from clearclip_d2.modeling.backbone import check_clearclip_backbone_config  # noqa: E402
from clearclip_d2.utils import ClearCLIPError, atomic_write_json  # noqa: E402
from clearclip_d2.utils.cli import EXIT_USER_ERROR, default_setup_atomic, exit_on_user_error, resolve_device  # noqa: E402
from clearclip_d2.utils.errors import is_user_error, user_message  # noqa: E402

logger = logging.getLogger("clearclip_d2")
SUMMARY_METRICS = ("mIoU", "mIoU-mmseg", "fwIoU", "mACC", "pACC")


class Trainer(DefaultTrainer):
    """Detectron2's trainer with ClearCLIP's test-time data path and evaluator (resumable, bad
    files stopped or skipped), and the sem-seg train loader for heads on the ClearCLIP backbone."""

    @classmethod
    def build_evaluator(cls, cfg, dataset_name, output_folder=None, skip_bad_images=False):
        if output_folder is None:
            output_folder = evaluation_output_dir(cfg, dataset_name)
        return ClearCLIPSemSegEvaluator(
            dataset_name, distributed=True, output_dir=output_folder, skip_bad_images=skip_bad_images
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
        unreadable images come out as markers for the evaluator."""
        if dataset_dicts is None:
            return build_detection_test_loader(cfg, dataset_name, mapper=ClearCLIPDatasetMapper(cfg, False))
        mapper = ClearCLIPDatasetMapper(cfg, False, mark_bad_images=True)
        return build_detection_test_loader(dataset_dicts, mapper=mapper, num_workers=cfg.DATALOADER.NUM_WORKERS)

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
            results[dataset_name] = run_planned_evaluation(
                model, plan, evaluator, lambda dicts: cls.build_test_loader(cfg, dataset_name, dicts)
            )
            if comm.is_main_process():
                logger.info(f"Evaluation results for {dataset_name}:")
                print_csv_format(results[dataset_name])
                print_results_table(dataset_name, results[dataset_name])
        return results


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


def build_config(args):
    """Config from the file and the command-line overrides, checked before any process starts."""
    cfg = load_clearclip_config(args.config_file, args.opts)
    resolve_device(cfg)
    cfg.freeze()
    return cfg


def check_config(cfg, args):
    if cfg.MODEL.META_ARCHITECTURE == "ClearCLIPSegmentor":
        check_clearclip_config(cfg)
        if not args.eval_only:
            raise ClearCLIPError(
                "ClearCLIP is training-free: there is nothing to train; run with --eval-only to evaluate"
            )
    if cfg.MODEL.BACKBONE.NAME == "build_clearclip_backbone":
        check_clearclip_backbone_config(cfg)
    if args.eval_only and not cfg.DATASETS.TEST:
        raise ClearCLIPError("DATASETS.TEST is empty: name the datasets to evaluate")
    if not args.eval_only and not cfg.DATASETS.TRAIN:
        raise ClearCLIPError("DATASETS.TRAIN is empty: name the datasets to train on")
    for dataset_name in cfg.DATASETS.TEST if args.eval_only else [*cfg.DATASETS.TRAIN, *cfg.DATASETS.TEST]:
        check_dataset_prepared(dataset_name)


def main(args):
    cfg = build_config(args)
    default_setup_atomic(cfg, args)
    if args.eval_only:
        model = Trainer.build_model(cfg)
        if cfg.MODEL.WEIGHTS:
            DetectionCheckpointer(model, save_dir=cfg.OUTPUT_DIR).resume_or_load(cfg.MODEL.WEIGHTS, resume=args.resume)
        results = Trainer.test(cfg, model, resume_eval=args.resume_eval, skip_bad_images=args.skip_bad_images)
        write_metrics(cfg, results)
        return results
    trainer = Trainer(cfg)
    trainer.resume_or_load(resume=args.resume)
    trainer.train()
    # DefaultTrainer keeps the evaluation after the last iteration here (returned only with EXPECTED_RESULTS).
    results = getattr(trainer, "_last_eval_results", None)
    if results:
        write_metrics(cfg, results)
    return results


def write_metrics(cfg, results):
    """``OUTPUT_DIR/metrics.json`` (``{dataset_name: results}``), by the main process."""
    if comm.is_main_process():
        path = os.path.join(cfg.OUTPUT_DIR, "metrics.json")
        atomic_write_json(path, results)
        logger.info(f"Wrote {path}")


def worker_main(args):
    """``main`` in a process started by ``launch``: user errors become one line and exit 2."""
    try:
        return main(args)
    except Exception as exc:
        if not is_user_error(exc):
            raise
        print(f"train_net.py: error (rank {comm.get_rank()}): {user_message(exc)}", file=sys.stderr, flush=True)
        sys.exit(EXIT_USER_ERROR)


def run(args):
    check_config(build_config(args), args)
    world_size = args.num_gpus * args.num_machines
    try:
        launch(
            worker_main if world_size > 1 else main,
            args.num_gpus,
            num_machines=args.num_machines,
            machine_rank=args.machine_rank,
            dist_url=args.dist_url,
            args=(args,),
        )
    except Exception as exc:  # a worker failed: its own message was printed already
        if type(exc).__name__ in ("ProcessExitedException", "ProcessRaisedException") and not is_user_error(exc):
            if getattr(exc, "exit_code", None) == EXIT_USER_ERROR:
                sys.exit(EXIT_USER_ERROR)
        raise


def argument_parser():
    """Detectron2's ``default_argument_parser`` plus the long-evaluation flags."""
    parser = default_argument_parser()
    parser.add_argument(
        "--resume-eval",
        action="store_true",
        help="continue an interrupted evaluation: skip the images whose results are in OUTPUT_DIR/eval_shards "
        "(refused if the config, weights or dataset changed)",
    )
    parser.add_argument(
        "--skip-bad-images",
        action="store_true",
        help="leave unreadable images and bad label maps out of the metrics, list them in OUTPUT_DIR/skipped.txt "
        "and go on (default: stop naming the file)",
    )
    return parser


if __name__ == "__main__":
    arguments = argument_parser().parse_args()
    print("Command Line Args:", arguments)
    with exit_on_user_error("train_net.py"):
        run(arguments)
