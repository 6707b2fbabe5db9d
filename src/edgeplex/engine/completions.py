"""Results computed on executor threads, handed to an event loop in bursts.

`asyncio.wrap_future` wakes the loop once per result (a write to its self-pipe, a callback
chain, a lock). Executor threads finish batches, so results arrive in bursts: here the first
result of a burst schedules one drain and the rest join it, so the loop wakes once per burst
and every waiting request is answered in that one pass.
"""

from __future__ import annotations

import asyncio
import threading
import weakref
from collections import deque
from concurrent.futures import Future
from typing import Any, TypeVar

Result = TypeVar("Result")


class Completions:
    """One event loop's inbox of finished executor futures. It holds its loop weakly, so a loop
    that is done with (each `asyncio.run` makes one) is freed with its inbox."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = weakref.ref(loop)
        self._lock = threading.Lock()
        self._ready: deque[tuple[asyncio.Future[Any], Future[Any]]] = deque()
        self._drain_scheduled = False

    def watch(self, future: Future[Result]) -> asyncio.Future[Result]:
        """An awaitable for `future`'s result; cancelling it cancels `future` (not yet started:
        it never computes), as `asyncio.wrap_future` does."""
        loop = self._loop()
        assert loop is not None, "watched from a loop that is gone"
        waiter: asyncio.Future[Result] = loop.create_future()
        waiter.add_done_callback(lambda done: future.cancel() if done.cancelled() else None)
        future.add_done_callback(lambda finished: self._arrived(waiter, finished))
        return waiter

    def _arrived(self, waiter: asyncio.Future[Any], finished: Future[Any]) -> None:
        with self._lock:
            self._ready.append((waiter, finished))
            if self._drain_scheduled:
                return
            self._drain_scheduled = True
        loop = self._loop()
        try:
            if loop is None:
                raise RuntimeError("the loop is gone")
            loop.call_soon_threadsafe(self._drain)
        except RuntimeError:  # closed or gone: nobody waits any more; keep nothing
            with self._lock:
                self._ready.clear()
                self._drain_scheduled = False

    def _drain(self) -> None:
        with self._lock:
            ready, self._ready = self._ready, deque()
            self._drain_scheduled = False
        for waiter, finished in ready:
            if waiter.done():  # cancelled by its caller meanwhile
                continue
            try:
                if finished.cancelled():
                    waiter.cancel()
                elif (error := finished.exception()) is not None:
                    waiter.set_exception(error)
                else:
                    waiter.set_result(finished.result())
            except BaseException as exc:  # one bad result (e.g. a StopIteration) must not strand the burst
                waiter.set_exception(RuntimeError(f"the result could not be handed over: {exc!r}"))


_by_loop: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, Completions] = weakref.WeakKeyDictionary()
_by_loop_lock = threading.Lock()


def loop_completions(loop: asyncio.AbstractEventLoop) -> Completions:
    """The inbox of `loop` (one per loop, created on first use, freed with the loop)."""
    with _by_loop_lock:
        inbox = _by_loop.get(loop)
        if inbox is None:
            inbox = _by_loop[loop] = Completions(loop)
        return inbox
