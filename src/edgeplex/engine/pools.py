"""Processor token pools: the mechanism that keeps the box from oversubscribing.

A computing instance holds as many tokens as it has intra-op threads, so the sum of the
threads computing at one moment never exceeds the processor's cores. Waiters are served by
priority (1 first), then in arrival order — like Triton's rate limiter, but automatic.

On the CPU each token is a specific core, and the thread that computes is pinned to the cores
it was granted: with one executor thread per instance, letting the OS move computing threads
between cores cost 5-10% of the mix's throughput on the 2-core box (measured, see
benchmarks/README.md).

Within a priority level the pool shares the cores fairly between models (flows), weighted by
their `share`: start-time fair queuing, where a flow's virtual time advances by the
token-seconds it held divided by its weight, and the waiter with the smallest start tag goes
first. A flood on one model therefore cannot starve another of the same level.

Computations are not preempted, so a high-priority request that finds every core busy waits for
the first to finish. A model that cannot afford that wait reserves cores (`reserved_cores`):
while it is active (a request in the last `RESERVATION_WINDOW_S`), work of lower priority may
use only the cores it leaves; at least one core always stays open to them.
"""

from __future__ import annotations

import heapq
import itertools
import os
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field


class Flow:
    """One model's claim on a pool: its weight, and the weighted token-seconds it has used."""

    def __init__(self, name: str, weight: float = 1.0) -> None:
        if weight <= 0:
            raise ValueError(f"flow {name}: weight must be > 0, got {weight}")
        self.name = name
        self.weight = weight
        self.vtime = 0.0


@dataclass(frozen=True)
class Grant:
    """Tokens lent to one computation, and the cores they stand for (empty: not pinnable)."""

    tokens: int
    cores: tuple[int, ...] = ()
    flow: Flow | None = field(default=None, compare=False)
    tag: float = 0.0  # the flow's virtual start time when granted
    start_ns: int = 0
    priority: int = 1


RESERVATION_WINDOW_S = 2.0


@dataclass
class Reservation:
    """Cores kept free of work below `priority` while their owner is active."""

    owner: str
    priority: int
    tokens: int
    last_active_ns: int = 0

    def touch(self) -> None:
        """The owner has work: hold the reservation for the next window."""
        self.last_active_ns = time.monotonic_ns()

    def active(self, now_ns: int, window_s: float = RESERVATION_WINDOW_S) -> bool:
        return now_ns - self.last_active_ns < window_s * 1e9


_pinned = threading.local()


def pin_current_thread(cores: tuple[int, ...]) -> None:
    """Bind the calling thread to `cores` (Linux); a no-op when already bound or not pinnable."""
    if not cores or getattr(_pinned, "cores", None) == cores:
        return
    try:
        os.sched_setaffinity(0, cores)
    except (AttributeError, OSError):  # not Linux, or the cores are no longer ours
        return
    _pinned.cores = cores


@dataclass(order=True)
class _Waiter:
    priority: int
    tag: float
    seq: int
    tokens: int = field(compare=False)
    flow: Flow | None = field(compare=False)
    wakeup: threading.Condition = field(compare=False)
    grant: Grant | None = field(default=None, compare=False)


class TokenPool:
    """Counting tokens of one processor (e.g. "cpu" with `capacity` = cores).

    A release hands the freed tokens straight to the waiters at the head of the line and wakes
    only them, so a busy pool does not wake every waiting thread on every release.
    """

    def __init__(self, processor: str, capacity: int, cores: list[int] | None = None) -> None:
        """`cores`: the CPU ids the tokens stand for (at least `capacity` of them to pin)."""
        if capacity < 1:
            raise ValueError(f"processor {processor}: capacity must be >= 1, got {capacity}")
        self.processor = processor
        self.capacity = capacity
        self._free_cores = sorted(cores)[:capacity] if cores and len(cores) >= capacity else []
        self._in_use = 0
        self._peak = 0
        self._busy_ns = 0  # integral of tokens held over time: utilisation without sampling
        self._changed_ns = time.monotonic_ns()
        self._lock = threading.Lock()
        self._waiters: list[_Waiter] = []
        self._seq = itertools.count()
        self._vclock = 0.0  # the start tag of the latest grant: where a newly active flow starts
        self._reservations: list[Reservation] = []
        self.reservation_window_s = RESERVATION_WINDOW_S
        self._held: dict[int, int] = {}  # tokens held now, by priority level

    @property
    def in_use(self) -> int:
        return self._in_use

    @property
    def busy_seconds(self) -> float:
        """Token-seconds held so far (capacity x wall time when fully used)."""
        with self._lock:
            self._account()
            return self._busy_ns / 1e9

    @property
    def waiting(self) -> int:
        """Threads waiting for tokens now."""
        return len(self._waiters)

    @property
    def peak(self) -> int:
        """The most tokens ever held at once; never above `capacity` (the invariant)."""
        return self._peak

    def clamp(self, tokens: int) -> int:
        """What a request for `tokens` really takes: at least 1, at most the whole processor."""
        return max(1, min(tokens, self.capacity))

    def reserve(self, owner: str, priority: int, tokens: int) -> Reservation:
        """Keep up to `tokens` cores free of work below `priority` while `owner` is active (see
        `Reservation.touch`); at most capacity - 1 are ever reserved in all."""
        with self._lock:
            reservation = Reservation(owner, priority, max(0, tokens))
            self._reservations.append(reservation)
            return reservation

    def unreserve(self, reservation: Reservation) -> None:
        with self._lock:
            if reservation in self._reservations:
                self._reservations.remove(reservation)
            self._grant()

    def acquire(self, tokens: int, priority: int = 1, flow: Flow | None = None) -> Grant:
        """Block until `tokens` are granted; no higher-priority waiter, nor one of the same level
        whose flow has used less of its share, is overtaken."""
        tokens = self.clamp(tokens)
        with self._lock:
            tag = max(flow.vtime, self._vclock) if flow is not None else self._vclock
            if not self._waiters and tokens <= self._free_for(priority):
                return self._take(tokens, flow, tag, priority)
            waiter = _Waiter(priority, tag, next(self._seq), tokens, flow, threading.Condition(self._lock))
            heapq.heappush(self._waiters, waiter)
            # It may go before those waiting (a higher priority that fits the free tokens while a
            # lower one waits for more): grant now rather than at the next release.
            self._grant()
            try:
                while waiter.grant is None:
                    # A reservation lapses without a release to announce it: look again then.
                    if not waiter.wakeup.wait(self.reservation_window_s if self._reservations else None):
                        self._grant()
            except BaseException:  # interrupted: give back or leave the line, or it blocks everyone
                if waiter.grant is not None:
                    self._give_back(waiter.grant)
                else:
                    self._waiters.remove(waiter)
                    heapq.heapify(self._waiters)
                self._grant()
                raise
            return waiter.grant

    def release(self, grant: Grant) -> None:
        with self._lock:
            self._give_back(grant)
            self._grant()

    @contextmanager
    def hold(self, tokens: int, priority: int = 1, flow: Flow | None = None) -> Iterator[Grant]:
        """Hold `tokens` for the block, with the calling thread pinned to their cores."""
        grant = self.acquire(tokens, priority, flow)
        try:
            pin_current_thread(grant.cores)
            yield grant
        finally:
            self.release(grant)

    def _account(self) -> int:
        now = time.monotonic_ns()
        self._busy_ns += self._in_use * (now - self._changed_ns)
        self._changed_ns = now
        return now

    def _free_for(self, priority: int) -> int:
        """Under the lock: the tokens work at `priority` may take now — the free ones, less the
        reservations of active higher levels that those levels are not using themselves."""
        free = self.capacity - self._in_use
        if not self._reservations:
            return free
        now = time.monotonic_ns()
        window = self.reservation_window_s
        reserved = sum(r.tokens for r in self._reservations if r.priority < priority and r.active(now, window))
        reserved = min(reserved, self.capacity - 1)
        held_above = sum(tokens for level, tokens in self._held.items() if level < priority)
        return free - max(0, reserved - held_above)

    def _take(self, tokens: int, flow: Flow | None, tag: float, priority: int) -> Grant:
        now = self._account()
        self._in_use += tokens
        self._held[priority] = self._held.get(priority, 0) + tokens
        self._peak = max(self._peak, self._in_use)
        self._vclock = max(self._vclock, tag)
        cores = tuple(self._free_cores[:tokens]) if self._free_cores else ()
        del self._free_cores[: len(cores)]
        return Grant(tokens, cores, flow, tag, now, priority)

    def _give_back(self, grant: Grant) -> None:
        now = self._account()
        if grant.flow is not None:  # charge the flow what it held, in its weight's units
            used = grant.tokens * (now - grant.start_ns) / 1e9 / grant.flow.weight
            grant.flow.vtime = max(grant.flow.vtime, grant.tag) + used
        self._in_use -= grant.tokens
        self._held[grant.priority] -= grant.tokens
        if self._in_use < 0:  # pragma: no cover - a bug, never a client's doing
            raise RuntimeError(f"token pool {self.processor} released more than it lent")
        self._free_cores.extend(grant.cores)

    def _grant(self) -> None:
        """Under the lock: give tokens to the head waiters, in order, while they fit."""
        while self._waiters and self._waiters[0].tokens <= self._free_for(self._waiters[0].priority):
            waiter = heapq.heappop(self._waiters)
            waiter.grant = self._take(waiter.tokens, waiter.flow, waiter.tag, waiter.priority)
            waiter.wakeup.notify()
