"""Command-line plumbing shared by the tools: one-line errors, the device choice, the checked config."""

import argparse
import contextlib
import logging
import sys
from typing import Sequence

import torch

from .errors import is_user_error, user_message

EXIT_USER_ERROR = 2
DEFAULT_CONFIG_FILE = "configs/clearclip_coco.yaml"  # the tools' --config-file, from the repository root


def add_config_file_option(parser: argparse.ArgumentParser) -> None:
    """``--config-file FILE``, default :data:`DEFAULT_CONFIG_FILE`."""
    parser.add_argument("--config-file", default=DEFAULT_CONFIG_FILE, metavar="FILE", help="config file (default: %(default)s)")


def add_opts_option(parser: argparse.ArgumentParser) -> None:
    """``--opts KEY VALUE ...``: config overrides; it takes the rest of the command line."""
    parser.add_argument(
        "--opts", default=[], nargs=argparse.REMAINDER, metavar="KEY VALUE",
        help="config overrides as KEY VALUE pairs, e.g. MODEL.CLEARCLIP.PRETRAINED /path/to/weights.bin",
    )  # fmt: skip


def setup_tool_loggers() -> None:
    """Detectron2's console loggers for fvcore and ``clearclip_d2`` (shown as ``clearclip``)."""
    from detectron2.utils.logger import setup_logger

    setup_logger(name="fvcore")
    setup_logger(name="clearclip_d2", abbrev_name="clearclip")


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


def load_run_config(config_file: str, opts: Sequence = ()):
    """The frozen config of a run: file + ``KEY VALUE`` overrides, with the CPU fall-back."""
    from ..config import load_clearclip_config

    cfg = load_clearclip_config(config_file, opts)
    resolve_device(cfg)
    cfg.freeze()
    return cfg


def load_segmentor_config(config_file: str, opts: Sequence = (), program: str = "this tool"):
    """The frozen, checked config of a tool that runs ``ClearCLIPSegmentor`` itself (demo,
    feature analysis, benchmark): file + ``KEY VALUE`` overrides, CPU fall-back, and one line
    for another ``MODEL.META_ARCHITECTURE`` or a bad ``MODEL.CLEARCLIP`` value."""
    from ..config import check_clearclip_config
    from .errors import ClearCLIPError

    cfg = load_run_config(config_file, opts)
    if cfg.MODEL.META_ARCHITECTURE != "ClearCLIPSegmentor":
        raise ClearCLIPError(
            f"MODEL.META_ARCHITECTURE is {cfg.MODEL.META_ARCHITECTURE!r}; {program} runs ClearCLIPSegmentor"
        )
    check_clearclip_config(cfg)
    return cfg
