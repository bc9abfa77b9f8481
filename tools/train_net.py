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
(listed in ``OUTPUT_DIR/skipped.txt``) instead of stopping. The trainer and the evaluation
are ``clearclip_d2/engine/trainer.py``; the set-up is ``clearclip_d2/engine/defaults.py``.
"""

import os
import sys
import warnings

warnings.filterwarnings("ignore", message=r".*torch\.jit\.script.*", category=FutureWarning)

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from detectron2.engine import default_argument_parser  # noqa: E402

from clearclip_d2.engine.defaults import default_setup, launch_reporting_user_errors, output_folder_lock_of_run  # noqa: E402
from clearclip_d2.engine.trainer import Trainer, check_run_config, report_evaluation_progress, write_metrics  # noqa: E402
from clearclip_d2.modeling.checkpoint import SafeDetectionCheckpointer  # noqa: E402
from clearclip_d2.utils.cli import exit_on_user_error, load_run_config  # noqa: E402

PROGRAM = "train_net.py"


def setup(args):
    """The frozen config of the file and the overrides; loggers, config backup and seeds."""
    cfg = load_run_config(args.config_file, args.opts)
    default_setup(cfg, args)
    return cfg


def main(args):
    cfg = setup(args)
    if args.eval_only:
        model = Trainer.build_model(cfg)
        if cfg.MODEL.WEIGHTS:
            SafeDetectionCheckpointer(
                model, cfg.OUTPUT_DIR, trust_pickled=cfg.MODEL.CLEARCLIP.TRUST_PICKLED_WEIGHTS
            ).resume_or_load(cfg.MODEL.WEIGHTS, resume=args.resume)
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
    with exit_on_user_error(PROGRAM):
        run_cfg = load_run_config(arguments.config_file, arguments.opts)
        check_run_config(run_cfg, arguments.eval_only)  # before any process starts
        with output_folder_lock_of_run(run_cfg, arguments):  # one run per OUTPUT_DIR, until every process ends
            launch_reporting_user_errors(
                main, arguments, PROGRAM, after_worker_error=lambda: report_evaluation_progress(run_cfg, PROGRAM)
            )
