"""A model's request queue: ordered by priority, then earliest deadline, then arrival.

Bounded: beyond `max_size` a request is refused at once (Overloaded), never queued without
limit. Executor threads block on `get`; `close` lets them drain what is queued and stop.
"""

from __future__ import annotations

import heapq
import itertools
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass, field

from ..errors import Overloaded, ServerShuttingDown
from .request import InferRequest, InferResponse

NO_DEADLINE = 1 << 62


@dataclass(order=True)
class Job:
    """A request waiting for an instance, with the future its caller waits on."""

    priority: int
    deadline_ns: int
    seq: int
    request: InferRequest = field(compare=False)
    future: Future[InferResponse] = field(compare=False)
    enqueued_ns: int = field(compare=False, default_factory=time.monotonic_ns)


class RequestQueue:
    """Thread-safe priority queue of Jobs for one model version."""

    def __init__(self, max_size: int) -> None:
        self.max_size = max_size
        self._heap: list[Job] = []
        self._cond = threading.Condition()
        self._seq = itertools.count()
        self._closed = False

    def __len__(self) -> int:
        return len(self._heap)

    def put(self, request: InferRequest, priority: int, deadline_ns: int | None) -> Future[InferResponse]:
        future: Future[InferResponse] = Future()
        job = Job(priority, deadline_ns or NO_DEADLINE, next(self._seq), request, future)
        with self._cond:
            if self._closed:
                raise ServerShuttingDown(f"model '{request.model_name}' is unloading; request refused")
            if len(self._heap) >= self.max_size:
                raise Overloaded(
                    f"model '{request.model_name}' has {len(self._heap)} requests queued (max_queue_size "
                    f"{self.max_size}); retry later"
                )
            heapq.heappush(self._heap, job)
            self._cond.notify()
        return future

    def get(self, stop: threading.Event | None = None) -> Job | None:
        """The next job; blocks while empty; None once closed and drained, or once `stop` is set
        (a retired instance's thread leaves; the job stays for the others)."""
        with self._cond:
            while not self._heap or (stop is not None and stop.is_set()):
                if self._closed or (stop is not None and stop.is_set()):
                    return None
                self._cond.wait()
            return heapq.heappop(self._heap)

    def wake_all(self) -> None:
        """Wake every waiting `get`, so retired threads notice their stop event."""
        with self._cond:
            self._cond.notify_all()

    def close(self) -> None:
        """Refuse new jobs; waiting `get` calls return None once the queue is empty."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
