"""Command-line plumbing shared by the tools: one-line errors, the device choice, run set-up."""

import contextlib
import logging
import os
import sys
from typing import Sequence

import torch
from detectron2.utils import comm
from detectron2.utils.collect_env import collect_env_info
from detectron2.utils.env import seed_all_rng
from detectron2.utils.logger import setup_logger

from .errors import is_user_error, user_message
from .io import atomic_write

EXIT_USER_ERROR = 2


@contextlib.contextmanager
def exit_on_user_error(program: str = "clearclip_d2"):
    """Turn a :class:`ClearCLIPError` (also one re-raised by a worker) into one line on stderr
    and exit status 2; any other exception keeps its traceback."""
    try:
        yield
    except SystemExit:
        raise
    except BaseException as exc:
        if isinstance(exc, KeyboardInterrupt) or not is_user_error(exc):
            raise
        print(f"{program}: error: {user_message(exc)}", file=sys.stderr, flush=True)
        sys.exit(EXIT_USER_ERROR)


def resolve_device(cfg) -> None:
    """Fall back to the CPU when the config asks for CUDA on a machine without it (in place)."""
    if str(cfg.MODEL.DEVICE).startswith("cuda") and not torch.cuda.is_available():
        logging.getLogger(__name__).warning("CUDA is not available: running on the CPU (MODEL.DEVICE cpu)")
        cfg.MODEL.DEVICE = "cpu"


def load_segmentor_config(config_file: str, opts: Sequence = (), program: str = "this tool"):
    """The frozen, checked config of a tool that runs ``ClearCLIPSegmentor`` itself (demo,
    feature analysis, benchmark): file + ``KEY VALUE`` overrides, CPU fall-back, and one line
    for another ``MODEL.META_ARCHITECTURE`` or a bad ``MODEL.CLEARCLIP`` value."""
    from ..config import check_clearclip_config, load_clearclip_config
    from .errors import ClearCLIPError

    cfg = load_clearclip_config(config_file, opts)
    resolve_device(cfg)
    cfg.freeze()
    if cfg.MODEL.META_ARCHITECTURE != "ClearCLIPSegmentor":
        raise ClearCLIPError(
            f"MODEL.META_ARCHITECTURE is {cfg.MODEL.META_ARCHITECTURE!r}; {program} runs ClearCLIPSegmentor"
        )
    check_clearclip_config(cfg)
    return cfg


def default_setup_atomic(cfg, args) -> None:
    """Detectron2's ``default_setup`` (loggers, environment, arguments and config logged, seeds,
    ``CUDNN_BENCHMARK`` when training), except that ``OUTPUT_DIR/config.yaml`` is written
    atomically and the ``--config-file`` text itself is not logged (the full config is);
    ``clearclip_d2``'s logger is set up too."""
    output_dir, rank = cfg.OUTPUT_DIR, comm.get_rank()
    if comm.is_main_process() and output_dir:
        os.makedirs(output_dir, exist_ok=True)
    setup_logger(output_dir, distributed_rank=rank, name="fvcore")
    setup_logger(output_dir, distributed_rank=rank, name="clearclip_d2", abbrev_name="clearclip")
    logger = setup_logger(output_dir, distributed_rank=rank)
    logger.info(f"Rank of current process: {rank}. World size: {comm.get_world_size()}")
    logger.info("Environment info:\n" + collect_env_info())
    logger.info(f"Command line arguments: {args}")
    if comm.is_main_process() and output_dir:
        path = os.path.join(output_dir, "config.yaml")
        logger.info(f"Running with full config:\n{cfg.dump()}")
        with atomic_write(path, "w") as f:
            f.write(cfg.dump())
        logger.info(f"Full config saved to {path}")
    seed_all_rng(None if cfg.SEED < 0 else cfg.SEED + rank)
    if not getattr(args, "eval_only", False):
        torch.backends.cudnn.benchmark = cfg.CUDNN_BENCHMARK
