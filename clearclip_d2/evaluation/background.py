"""One background thread for per-image work whose results must come back in order."""

import collections
import concurrent.futures
from typing import Any, Callable, Iterator, Optional


class InOrderWorker:
    """Runs submitted calls one at a time on one background thread (started on the first call);
    their results come back in submission order, an exception of a call where its result would.

    ``max_pending``: how many calls may be outstanding before :meth:`finished` waits for the
    oldest (so that a slow worker holds the caller back instead of piling up work); 0: no
    thread, each call runs in :meth:`submit` (the same results, in line).
    """

    def __init__(self, max_pending: int, name: str):
        self.max_pending = max_pending
        self.name = name
        self._executor: Optional[concurrent.futures.ThreadPoolExecutor] = None
        self._pending: "collections.deque[concurrent.futures.Future]" = collections.deque()

    def submit(self, fn: Callable[..., Any], *args: Any) -> None:
        if self.max_pending == 0:
            self._pending.append(_run_now(fn, *args))
            return
        if self._executor is None:
            self._executor = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix=self.name)
        self._pending.append(self._executor.submit(fn, *args))

    def finished(self) -> Iterator[Any]:
        """The results of the oldest calls that have finished, waiting while more than
        ``max_pending`` are outstanding."""
        while self._pending and (self._pending[0].done() or len(self._pending) > self.max_pending):
            yield self._pending.popleft().result()

    def drain(self) -> Iterator[Any]:
        """The results of every outstanding call, waiting for each."""
        while self._pending:
            yield self._pending.popleft().result()

    def close(self) -> None:
        """Wait for the outstanding calls, drop their results, and end the thread."""
        concurrent.futures.wait(self._pending)
        self._pending.clear()
        if self._executor is not None:
            self._executor.shutdown(wait=True)
            self._executor = None


def _run_now(fn: Callable[..., Any], *args: Any) -> concurrent.futures.Future:
    """A finished future of ``fn(*args)``: its result, or the exception it raised."""
    future: concurrent.futures.Future = concurrent.futures.Future()
    try:
        future.set_result(fn(*args))
    except BaseException as e:  # handed over where the result would be, as from the thread
        future.set_exception(e)
    return future
