"""Command-line plumbing shared by the tools: one-line errors and the device choice."""

import contextlib
import logging
import sys

import torch

from .errors import is_user_error, user_message

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
