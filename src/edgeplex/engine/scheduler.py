"""A model's request queue, and the discipline that orders it.

`priority` (the default): by priority level (1 first), then earliest deadline, then arrival.
`fifo`: by arrival alone, the baseline the scheduling benchmark compares against.

Bounded: beyond `max_size` a request is refused at once (Overloaded), never queued without
limit. Executor threads take work with `take`, which forms the dynamic batches (see
`batcher.py` for how a batch is cut); `close` lets them drain what is queued and stop.
"""

from __future__ import annotations

import heapq
import itertools
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

from ..errors import Overloaded, ServerShuttingDown
from .batcher import BatchPolicy, cut_batch, spread_limit
from .request import InferRequest, InferResponse

NO_DEADLINE = 1 << 62
# How many queued requests one `take` looks at to fill a batch: bounds the work per batch when
# the head of the queue is followed by many requests of other shapes.
SCAN_LIMIT = 64


class Discipline:
    """How queued work is ordered: in each model's queue and at the processors' token pools."""

    name = "priority"
    fair_share = True  # models of one priority level share the cores by weight

    def queue_key(self, priority: int, deadline_ns: int, seq: int) -> tuple[int, int, int]:
        return (priority, deadline_ns, seq)

    def core_priority(self, priority: int) -> int:
        """The level a batch waits at for cores."""
        return priority


class Fifo(Discipline):
    """Arrival order everywhere: priorities and deadlines do not reorder (timeouts still apply)."""

    name = "fifo"
    fair_share = False

    def queue_key(self, priority: int, deadline_ns: int, seq: int) -> tuple[int, int, int]:
        return (0, 0, seq)

    def core_priority(self, priority: int) -> int:
        return 1


DISCIPLINES: dict[str, Discipline] = {"priority": Discipline(), "fifo": Fifo()}


def discipline(name: str) -> Discipline:
    try:
        return DISCIPLINES[name]
    except KeyError:
        raise ValueError(f"unknown scheduling '{name}' (expected one of {', '.join(DISCIPLINES)})") from None


@dataclass(order=True)
class Job:
    """A request waiting for an instance, with the future its caller waits on."""

    key: tuple[int, int, int]
    request: InferRequest = field(compare=False)
    future: Future[InferResponse] = field(compare=False)
    priority: int = field(compare=False, default=1)
    deadline_ns: int = field(compare=False, default=NO_DEADLINE)
    rows: int = field(compare=False, default=1)
    # Requests batch together only when everything but the batch axis matches.
    signature: tuple[Any, ...] = field(compare=False, default=())
    enqueued_ns: int = field(compare=False, default_factory=time.monotonic_ns)


class RequestQueue:
    """Thread-safe ordered queue of Jobs for one model version."""

    def __init__(self, max_size: int, order: Discipline | None = None) -> None:
        self.max_size = max_size
        self.order = order or DISCIPLINES["priority"]
        self._heap: list[Job] = []
        self._cond = threading.Condition()
        self._seq = itertools.count()
        self._closed = False
        self._idle = 0  # threads waiting in `take` for work: instances with nothing to do

    def __len__(self) -> int:
        return len(self._heap)

    def put(
        self, request: InferRequest, priority: int, deadline_ns: int | None, rows: int = 1,
        signature: tuple[Any, ...] = (),
    ) -> Future[InferResponse]:
        future: Future[InferResponse] = Future()
        deadline = deadline_ns or NO_DEADLINE
        job = Job(self.order.queue_key(priority, deadline, next(self._seq)), request, future, priority, deadline,
                  rows, signature)
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

    def take(self, policy: BatchPolicy, stop: threading.Event | None = None,
             defer: Callable[[int], tuple[float, bool]] | None = None) -> list[Job]:
        """The next batch (one job when the model does not batch); blocks while empty. Empty once
        closed and drained, or once `stop` is set (a retired instance's thread leaves; the jobs
        stay for the others). `defer(queued)`: (seconds to leave the work to instances that will
        finish it sooner, 0 to take it now; whether one of those is idle here and must be woken).
        Only an idle one is woken: two deferring instances never wake each other in a loop."""
        with self._cond:
            while True:
                if stop is not None and stop.is_set():
                    return []
                if not self._heap:
                    if self._closed:
                        return []
                    self._idle += 1
                    try:
                        self._cond.wait()
                    finally:
                        self._idle -= 1
                    continue
                pause, wake = defer(len(self._heap)) if defer is not None and not self._closed else (0.0, False)
                if pause > 0:
                    if wake:
                        self._cond.notify_all()  # the faster instance waiting here takes it
                    self._cond.wait(pause)
                    continue
                if policy.max_rows <= 1:
                    return [heapq.heappop(self._heap)]
                batch, aside = self._gather(spread_limit(policy.max_rows, len(self._heap), self._idle))
                rows = sum(job.rows for job in batch)
                oldest = min(job.enqueued_ns for job in batch)
                wait_ns = policy.wait_ns(rows, oldest, time.monotonic_ns())
                if wait_ns > 0 and not self._closed:
                    for job in batch + aside:
                        heapq.heappush(self._heap, job)
                    self._cond.wait(wait_ns / 1e9)
                    continue
                keep = cut_batch([job.rows for job in batch], policy)
                for job in batch[keep:] + aside:
                    heapq.heappush(self._heap, job)
                return batch[:keep]

    def retake(self, jobs: list[Job], policy: BatchPolicy) -> list[Job]:
        """Put `jobs` back and take the best batch now (never waits): an instance picks its
        work when it has its cores, so a more urgent request that came meanwhile goes first."""
        with self._cond:
            for job in jobs:
                heapq.heappush(self._heap, job)
            if policy.max_rows <= 1:
                return [heapq.heappop(self._heap)]
            batch, aside = self._gather(spread_limit(policy.max_rows, len(self._heap), self._idle))
            keep = cut_batch([job.rows for job in batch], policy)
            for job in batch[keep:] + aside:
                heapq.heappush(self._heap, job)
            return batch[:keep]

    def _gather(self, max_rows: int) -> tuple[list[Job], list[Job]]:
        """Under the lock: pop the head and the queued jobs that fit its batch, in order; the
        others looked at come back in `aside`."""
        head = heapq.heappop(self._heap)
        batch, aside, rows = [head], [], head.rows
        for _ in range(SCAN_LIMIT):
            if not self._heap or rows >= max_rows:
                break
            job = heapq.heappop(self._heap)
            if job.signature == head.signature and rows + job.rows <= max_rows:
                batch.append(job)
                rows += job.rows
            else:
                aside.append(job)
        return batch, aside

    def wake_all(self) -> None:
        """Wake every waiting `take`, so retired threads notice their stop event."""
        with self._cond:
            self._cond.notify_all()

    def close(self) -> None:
        """Refuse new jobs; waiting `take` calls return empty once the queue is empty."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
