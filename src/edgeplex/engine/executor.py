"""Processor token pools: the mechanism that keeps the box from oversubscribing.

A computing instance holds as many tokens as it has intra-op threads, so the sum of the
threads computing at one moment never exceeds the processor's cores. Waiters are served by
priority (1 first), then in arrival order — like Triton's rate limiter, but automatic.
"""

from __future__ import annotations

import heapq
import itertools
import threading
from contextlib import contextmanager
from collections.abc import Iterator


class TokenPool:
    """Counting tokens of one processor (e.g. "cpu" with `capacity` = cores)."""

    def __init__(self, processor: str, capacity: int) -> None:
        if capacity < 1:
            raise ValueError(f"processor {processor}: capacity must be >= 1, got {capacity}")
        self.processor = processor
        self.capacity = capacity
        self._in_use = 0
        self._peak = 0
        self._busy_ns = 0
        self._cond = threading.Condition()
        self._waiters: list[tuple[int, int]] = []
        self._seq = itertools.count()

    @property
    def in_use(self) -> int:
        return self._in_use

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

    def acquire(self, tokens: int, priority: int = 1) -> int:
        """Block until `tokens` are free and no higher-priority or earlier waiter is ahead."""
        tokens = self.clamp(tokens)
        ticket = (priority, next(self._seq))
        with self._cond:
            heapq.heappush(self._waiters, ticket)
            try:
                while self._waiters[0] != ticket or self._in_use + tokens > self.capacity:
                    self._cond.wait()
            except BaseException:  # interrupted: leave the line, or it blocks everyone behind
                self._waiters.remove(ticket)
                heapq.heapify(self._waiters)
                self._cond.notify_all()
                raise
            heapq.heappop(self._waiters)
            self._in_use += tokens
            self._peak = max(self._peak, self._in_use)
            # The next waiter may fit in what is left.
            self._cond.notify_all()
        return tokens

    def release(self, tokens: int) -> None:
        with self._cond:
            self._in_use -= tokens
            if self._in_use < 0:  # pragma: no cover - a bug, never a client's doing
                raise RuntimeError(f"token pool {self.processor} released more than it lent")
            self._cond.notify_all()

    @contextmanager
    def hold(self, tokens: int, priority: int = 1) -> Iterator[int]:
        taken = self.acquire(tokens, priority)
        try:
            yield taken
        finally:
            self.release(taken)
