"""Wall-clock seconds per named part of a piece of work, summed over calls (``tools/benchmark.py``)."""

import contextlib
import threading
import time
from typing import Dict, Iterator, List

import torch


def synchronize(device: torch.device) -> None:
    """Wait for the work queued on a CUDA ``device`` (so that the wall clock covers it); nothing elsewhere."""
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


class PartTimer:
    """Sums the wall-clock seconds spent in each named part (``with timer.part(name): ...``);
    safe to use from several threads (give each thread's parts their own names)."""

    def __init__(self):
        self.seconds: Dict[str, float] = {}
        self.calls: Dict[str, List[float]] = {}  # each call's seconds, per part
        self._lock = threading.Lock()

    @contextlib.contextmanager
    def part(self, name: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self.add(name, time.perf_counter() - start)

    def add(self, name: str, seconds: float) -> None:
        with self._lock:
            self.seconds[name] = self.seconds.get(name, 0.0) + seconds
            self.calls.setdefault(name, []).append(seconds)


class NoTimer:
    """A :class:`PartTimer` that times nothing (the default of timed code)."""

    def part(self, name: str) -> contextlib.AbstractContextManager:
        return contextlib.nullcontext()

    def add(self, name: str, seconds: float) -> None:
        pass


NO_TIMER = NoTimer()
