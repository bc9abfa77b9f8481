"""Processes that end with their parent: the ranks of a run with their launcher, data-loader
workers with their rank (Linux ``PR_SET_PDEATHSIG``; elsewhere nothing happens)."""

import contextlib
import ctypes
import os
import signal
import sys
from typing import Callable, Optional

import torch.utils.data

PR_SET_PDEATHSIG = 1  # from <linux/prctl.h>


def is_running(pid: int) -> bool:
    """Whether process ``pid`` is running (Linux ``/proc``). A zombie, one that has ended but is
    not yet reaped, is not: a process that ended with its own parent stays one until init
    reaps it, and its children have been handed to init already."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            state = f.read().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state not in ("Z", "X")


def end_with_parent(parent: Optional[int] = None) -> None:
    """Have the kernel send this process SIGTERM when its parent ends, however it ends (even by
    SIGKILL). The parent is the thread that started this process.

    The request covers only a parent that ends after it, so ``parent`` (the pid this process was
    started by; default: the current parent) is checked afterwards: if the process has another
    parent by then and ``parent`` is gone, this process ends now.
    """
    if not sys.platform.startswith("linux"):
        return
    expected = os.getppid() if parent is None else parent
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    if os.getppid() != expected and not is_running(expected):  # it ended before the request was in place
        os.kill(os.getpid(), signal.SIGTERM)


class EndWithTheReader:
    """A DataLoader ``worker_init_fn`` that has each worker process end with the process reading
    the loader (the one that built this object), then runs ``previous`` (the loader's own
    ``worker_init_fn``, if any).

    PyTorch's workers check for a gone parent only every few seconds, and miss one that ended
    while they were starting (seen: a worker of a rank stopped with its launcher, waiting for
    work forever). The request is made when the worker starts, before it takes any work.
    """

    def __init__(self, previous: Optional[Callable[[int], None]] = None):
        self.previous = previous
        self.reader_pid = os.getpid()

    def __call__(self, worker_id: int) -> None:
        end_with_parent(self.reader_pid)
        if self.previous is not None:
            self.previous(worker_id)


def end_workers_with_the_reader(loader: torch.utils.data.DataLoader) -> torch.utils.data.DataLoader:
    """``loader`` (not yet iterated) whose worker processes end with this process
    (:class:`EndWithTheReader` as its ``worker_init_fn``)."""
    loader.worker_init_fn = EndWithTheReader(loader.worker_init_fn)
    return loader
