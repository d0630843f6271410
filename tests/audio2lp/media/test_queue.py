"""audio2lp.media.queue: the one background queue (used by the frame reader, the video writer and drive)."""

from __future__ import annotations

import queue
import threading
import time

import pytest

from audio2lp.media.queue import BackgroundQueue, Prefetcher


def test_prefetcher_yields_in_order_and_runs_ahead():
    produced = []

    def items():
        for i in range(10):
            produced.append(i)
            yield i

    with Prefetcher(items(), size=3) as it:
        first = next(it)
        time.sleep(0.2)
        assert first == 0 and len(produced) >= 3  # the thread worked ahead, bounded by the queue
        assert [first, *it] == list(range(10))


def test_prefetcher_raises_where_the_thread_failed():
    def items():
        yield 1
        yield 2
        raise ValueError("broken at 3")

    it = Prefetcher(items(), size=2)
    assert next(it) == 1 and next(it) == 2
    with pytest.raises(ValueError, match="broken at 3"):
        next(it)
    with pytest.raises(StopIteration):
        next(it)


def test_early_close_stops_the_thread_and_closes_the_source():
    closed, stopped = threading.Event(), threading.Event()

    def items():
        try:
            i = 0
            while True:
                yield i
                i += 1
        finally:
            closed.set()

    it = Prefetcher(items(), size=2, on_stop=stopped.set)
    assert next(it) == 0
    it.close()
    assert stopped.is_set() and closed.wait(5)
    assert not it._state.thread.is_alive()
    with pytest.raises(StopIteration):
        next(it)


def test_background_queue_put_gives_up_once_stopped():
    q = BackgroundQueue(1)
    assert q.put("a")
    t0 = time.monotonic()
    threading.Timer(0.2, q.stop).start()
    assert q.put("b") is False  # full until stopped, then refused
    assert time.monotonic() - t0 < 5 and q.stopped
    q.stop()
    assert q.empty() and q.put("c") is False
    with pytest.raises(queue.Empty):
        q.get(timeout=0.01)
    with pytest.raises(ValueError):
        BackgroundQueue(0)
