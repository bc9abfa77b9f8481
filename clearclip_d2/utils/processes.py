"""Processes that end with their parent: the ranks of a run with their launcher, data-loader
workers with their rank (Linux ``PR_SET_PDEATHSIG``; elsewhere nothing happens)."""

import contextlib
import ctypes
import os
import signal
import sys
from typing import Callable, Dict, Optional

import torch.utils.data

PR_SET_PDEATHSIG = 1  # from <linux/prctl.h>


def end_with_parent() -> None:
    """Have the kernel send this process SIGTERM when its parent ends, however it ends (even by
    SIGKILL). The parent is the thread that started this process."""
    if not sys.platform.startswith("linux"):
        return
    parent = os.getppid()
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    if os.getppid() != parent:  # it ended before the request was in place
        os.kill(os.getpid(), signal.SIGTERM)


class EndingWithTheLoader:
    """A mapper whose data-loader worker processes end with the process that reads the loader.

    PyTorch's workers notice a parent that is gone only every few seconds, and one that is busy
    or blocked may outlive it for good (seen: a worker of a rank killed with its launcher).
    In a worker, the first call asks the kernel to end the worker with its parent; in the
    reading process itself (``num_workers`` 0) nothing changes.
    """

    def __init__(self, mapper: Callable[[Dict], Dict]):
        self.mapper = mapper
        self._set_in_pid: Optional[int] = None

    def __call__(self, dataset_dict: Dict) -> Dict:
        if self._set_in_pid != os.getpid():
            self._set_in_pid = os.getpid()
            if torch.utils.data.get_worker_info() is not None:
                end_with_parent()
        return self.mapper(dataset_dict)
