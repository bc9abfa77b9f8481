"""Run set-up for ``tools/train_net.py``: Detectron2's ``default_setup`` and ``launch``.

Detectron2's ``default_setup`` sets up its loggers, logs the environment, the arguments, the
config file and the full config, saves ``OUTPUT_DIR/config.yaml`` (its own backup copy,
written by Detectron2 and read by nothing in this project), seeds the RNGs and sets
``CUDNN_BENCHMARK`` when training. The only addition is the ``clearclip_d2`` logger, in the same
output folder and with the same rank filter. :func:`launch_reporting_user_errors` is
Detectron2's ``launch`` where a worker's :class:`ClearCLIPError` ends the run with one line,
and where the worker processes end with their launcher: a SIGTERM to the launcher is passed on
to every worker, and a worker whose launcher died (even by SIGKILL) gets a SIGTERM from the
kernel (Linux ``PR_SET_PDEATHSIG``). Per-image shards are written atomically, so an evaluation
stopped this way resumes with ``--resume-eval``.
"""

import contextlib
import multiprocessing
import os
import signal
import sys
from functools import partial
from typing import Callable, Optional

from detectron2.engine import default_setup as detectron2_default_setup
from detectron2.utils import comm
from detectron2.utils.logger import setup_logger

from ..utils.cli import EXIT_USER_ERROR
from ..utils.errors import is_user_error, user_message
from ..utils.processes import end_with_parent
from ..utils.run_lock import output_folder_lock
from .launch import launch


def default_setup(cfg, args) -> None:
    """Detectron2's ``default_setup(cfg, args)``, then the ``clearclip_d2`` logger (shown as
    ``clearclip``) writing to ``cfg.OUTPUT_DIR`` like Detectron2's."""
    detectron2_default_setup(cfg, args)
    setup_logger(cfg.OUTPUT_DIR, distributed_rank=comm.get_rank(), name="clearclip_d2", abbrev_name="clearclip")


def output_folder_lock_of_run(cfg, args):
    """The lock of ``OUTPUT_DIR`` for a whole run (:mod:`~clearclip_d2.utils.run_lock`), taken by
    the launcher of the first machine (the other machines' launchers share its folder)."""
    if args.machine_rank != 0 or not cfg.OUTPUT_DIR:
        return contextlib.nullcontext()
    return output_folder_lock(cfg.OUTPUT_DIR)


@contextlib.contextmanager
def workers_stop_on_sigterm():
    """In the launcher: a SIGTERM is passed on to every worker process, then ends the launcher
    (exit status 143), instead of leaving the workers running to the end."""

    def stop_all(signum, frame):
        for worker in multiprocessing.active_children():
            worker.terminate()
        raise SystemExit(128 + signum)

    previous = signal.signal(signal.SIGTERM, stop_all)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def report_user_errors(main, program: str, args, launcher_pid: Optional[int] = None):
    """``main(args)`` in a process started by ``launch``: user errors become one line (with the
    rank) and exit status 2; the process ends with its launcher, ``launcher_pid``, however
    that ends (:func:`~..utils.processes.end_with_parent`; a launcher already gone ends it now)."""
    end_with_parent(launcher_pid)
    try:
        return main(args)
    except Exception as exc:
        if not is_user_error(exc):
            raise
        print(f"{program}: error (rank {comm.get_rank()}): {user_message(exc)}", file=sys.stderr, flush=True)
        sys.exit(EXIT_USER_ERROR)


def launch_reporting_user_errors(main, args, program: str, after_worker_error: Optional[Callable[[], None]] = None) -> None:
    """Detectron2's ``launch(main, args.num_gpus, ...)`` (with the CPU fallback of
    :mod:`clearclip_d2.engine.launch` for Detectron2 v0.6) with the machine flags of
    ``default_argument_parser``. With several processes, a worker's user error is printed by the
    worker (:func:`report_user_errors`), then ``after_worker_error()`` runs once every process
    has ended (to report what they did together), and the run exits with status 2; with one,
    it reaches the caller as the exception."""
    world_size = args.num_gpus * args.num_machines
    try:
        with workers_stop_on_sigterm():
            launch(
                partial(report_user_errors, main, program, launcher_pid=os.getpid()) if world_size > 1 else main,
                args.num_gpus,
                num_machines=args.num_machines,
                machine_rank=args.machine_rank,
                dist_url=args.dist_url,
                args=(args,),
            )
    except Exception as exc:  # a worker failed: its own message was printed already
        if type(exc).__name__ in ("ProcessExitedException", "ProcessRaisedException") and not is_user_error(exc):
            if getattr(exc, "exit_code", None) == EXIT_USER_ERROR:
                if after_worker_error is not None:
                    after_worker_error()
                sys.exit(EXIT_USER_ERROR)
        raise
