"""The evaluator's background thread: results in submission order, errors where their result
would be, and the caller held back once too many calls are outstanding."""

import threading

import pytest

from clearclip_d2.evaluation.background import InOrderWorker


def test_results_come_back_in_order_with_errors_in_place():
    worker = InOrderWorker(max_pending=2, name="test")
    release = threading.Event()

    def work(value):
        if value == 0:
            release.wait(5)  # the first call finishes last of all
        if value == 3:
            raise ValueError("three")
        return value

    for value in range(5):
        worker.submit(work, value)
    assert threading.active_count() >= 2
    release.set()
    results = []
    with pytest.raises(ValueError, match="three"):
        for result in worker.drain():
            results.append(result)
    assert results == [0, 1, 2]
    assert list(worker.drain()) == [4]
    worker.close()


def test_finished_waits_only_beyond_max_pending():
    worker = InOrderWorker(max_pending=2, name="test")
    first, others = threading.Event(), threading.Event()
    worker.submit(lambda: first.wait(5) and 0)
    worker.submit(lambda: others.wait(5) and 1)
    assert list(worker.finished()) == []  # 2 outstanding, none finished: no wait
    worker.submit(lambda: others.wait(5) and 2)
    timer = threading.Timer(0.2, first.set)
    timer.start()
    assert list(worker.finished()) == [0]  # 3 outstanding > 2: waits for the oldest only
    others.set()
    worker.close()  # waits for the rest, drops them, ends the thread
    assert list(worker.drain()) == []
    timer.join()


def test_max_pending_zero_runs_each_call_in_line():
    worker = InOrderWorker(max_pending=0, name="test")
    threads = []

    def work(value):
        threads.append(threading.current_thread())
        if value == 1:
            raise ValueError("one")
        return value

    worker.submit(work, 0)
    assert threads == [threading.current_thread()]  # ran in submit, in this thread
    worker.submit(work, 1)
    worker.submit(work, 2)
    assert next(worker.finished()) == 0
    with pytest.raises(ValueError, match="one"):
        next(worker.finished())
    assert list(worker.finished()) == [2]
    worker.close()
