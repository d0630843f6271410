"""The one background queue: a bounded queue between a daemon thread and its user, which both sides leave at once
when it is stopped. It lets decoding, face work and encoding overlap with rendering while memory stays bounded.

* :class:`BackgroundQueue` - the queue itself: :meth:`~BackgroundQueue.put` and :meth:`~BackgroundQueue.get` wait
  in short steps and give up once :meth:`~BackgroundQueue.stop` was called; the video writer's encoding thread
  consumes from one.
* :class:`Worker` - the other direction: runs a function on every item its user puts, in order, in a daemon thread
  (``drive`` and ``speak`` paste the rendered crops back into the portrait and hand them to the video writer there,
  while the next batch renders).
* :class:`Prefetcher` - runs an iterator in a daemon thread and hands its items over through a
  :class:`BackgroundQueue` (the frame reader's decoding, the drive loop's face tracking). An exception in the
  thread is raised in the consumer where it happened; :meth:`~Prefetcher.close` (or leaving the ``with`` block, or
  dropping the object) stops the thread at once, even when the consumer stops early.
"""

from __future__ import annotations

import contextlib
import queue
import threading
import weakref
from collections.abc import Callable, Iterable, Iterator
from typing import Any

PUT_STEP = 0.05  # seconds between checks of the stop flag while the queue is full
GET_STEP = 0.1  # seconds between checks while it is empty


class BackgroundQueue:
    """A bounded queue that stops: once :meth:`stop` is called, waiting :meth:`put` calls return False."""

    def __init__(self, size: int):
        if size < 1:
            raise ValueError(f"queue_size must be at least 1 (got {size})")
        self._queue: queue.Queue = queue.Queue(maxsize=size)
        self._stop = threading.Event()

    @property
    def stopped(self) -> bool:
        return self._stop.is_set()

    def put(self, item: Any, alive: Callable[[], bool] | None = None) -> bool:
        """Wait for room and add ``item``; False (item dropped) once stopped, or when ``alive()`` turns False."""
        while not self._stop.is_set() and (alive is None or alive()):
            try:
                self._queue.put(item, timeout=PUT_STEP)
                return not self._stop.is_set()  # stopped while waiting: the item is dropped with the rest
            except queue.Full:
                continue
        return False

    def get(self, timeout: float = GET_STEP) -> Any:
        """The next item; raises :class:`queue.Empty` after ``timeout`` seconds without one."""
        return self._queue.get(timeout=timeout)

    def empty(self) -> bool:
        return self._queue.empty()

    def stop(self) -> None:
        """Stop both sides and drop what is queued."""
        self._stop.set()
        with contextlib.suppress(queue.Empty):
            while True:
                self._queue.get_nowait()


_END = object()


class _Failure:
    def __init__(self, exc: BaseException):
        self.exc = exc


class _PrefetchState:
    """Everything the thread touches, kept apart from :class:`Prefetcher` so that a prefetcher dropped without
    ``close()`` is garbage-collected and its finalizer stops the thread."""

    def __init__(self, items: Iterator, size: int, name: str, on_stop: Callable[[], None] | None):
        self.items = items
        self.queue = BackgroundQueue(size)
        self.on_stop = on_stop
        self.thread = threading.Thread(target=self.run, name=name, daemon=True)

    def run(self) -> None:
        try:
            for item in self.items:
                if not self.queue.put(item):
                    return
            self.queue.put(_END)
        except BaseException as exc:  # noqa: BLE001 - handed to the consumer thread
            if not self.queue.stopped:
                self.queue.put(_Failure(exc))
        finally:
            close = getattr(self.items, "close", None)
            if close is not None:
                with contextlib.suppress(Exception):
                    close()

    def shutdown(self) -> None:
        self.queue.stop()
        if self.on_stop is not None:
            self.on_stop()
        self.queue.stop()  # what the thread put while it was being stopped
        if self.thread.is_alive() and self.thread is not threading.current_thread():
            self.thread.join(timeout=30)


class Prefetcher:
    """Iterate over ``items`` in a daemon thread, up to ``size`` items ahead. ``on_stop`` unblocks the thread
    when the prefetcher is closed early (e.g. kills the process it reads from)."""

    def __init__(self, items: Iterable, size: int = 16, *, name: str = "audio2lp-prefetch",
                 on_stop: Callable[[], None] | None = None):
        self._state = _PrefetchState(iter(items), size, name, on_stop)
        self._finalizer = weakref.finalize(self, _PrefetchState.shutdown, self._state)
        self._done = False
        self._state.thread.start()

    def __iter__(self) -> Prefetcher:
        return self

    def __next__(self) -> Any:
        if self._done:
            raise StopIteration
        state = self._state
        while True:
            try:
                item = state.queue.get()
                break
            except queue.Empty:
                if not state.thread.is_alive() and state.queue.empty():
                    self.close()
                    raise RuntimeError("the background thread stopped without a result") from None
        if item is _END:
            self.close()
            raise StopIteration
        if isinstance(item, _Failure):
            self.close()
            raise item.exc
        return item

    def close(self) -> None:
        """Stop the thread now; safe to call more than once."""
        self._done = True
        self._finalizer()

    def __enter__(self) -> Prefetcher:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class Worker:
    """Run ``fn(item)`` in a daemon thread for each item :meth:`put` (up to ``size`` waiting), in order.

    An exception raised by ``fn`` is raised in the caller at its next :meth:`put` or at :meth:`close`, and the items
    still waiting are dropped. :meth:`close` waits until every item was processed; :meth:`abort` (or leaving the
    ``with`` block with an exception) drops what waits and stops the thread after the item in hand.
    """

    def __init__(self, fn: Callable[[Any], None], size: int = 8, *, name: str = "audio2lp-worker"):
        self._fn = fn
        self._queue = BackgroundQueue(size)
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while True:
            try:
                item = self._queue.get()
            except queue.Empty:
                if self._queue.stopped:
                    return
                continue
            if item is _END or self._queue.stopped:
                return
            try:
                self._fn(item)
            except BaseException as exc:  # noqa: BLE001 - raised in the caller's thread
                self.error = exc
                self._queue.stop()
                return

    def _raise(self) -> None:
        if self.error is not None:
            raise self.error
        raise RuntimeError("the worker thread stopped")

    def put(self, item: Any) -> None:
        """Queue ``item`` (waits while ``size`` items wait); raises the thread's exception if it failed."""
        if self.error is not None or not self._queue.put(item, alive=self._thread.is_alive):
            self._raise()

    def close(self) -> None:
        """Wait until every queued item was processed; raise the thread's exception, if any."""
        if self._thread.is_alive():
            self._queue.put(_END, alive=self._thread.is_alive)
            self._thread.join()
        if self.error is not None:
            raise self.error

    def abort(self) -> None:
        """Drop the waiting items and stop the thread (after the item in hand)."""
        self._queue.stop()
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(timeout=30)

    def __enter__(self) -> Worker:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()
