"""Processor token pools: the mechanism that keeps the box from oversubscribing.

A computing instance holds as many tokens as it has intra-op threads, so the sum of the
threads computing at one moment never exceeds the processor's cores. Waiters are served by
priority (1 first), then in arrival order — like Triton's rate limiter, but automatic.
"""

from __future__ import annotations

import heapq
import itertools
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field


@dataclass(order=True)
class _Waiter:
    priority: int
    seq: int
    tokens: int = field(compare=False)
    wakeup: threading.Condition = field(compare=False)
    granted: bool = field(default=False, compare=False)


class TokenPool:
    """Counting tokens of one processor (e.g. "cpu" with `capacity` = cores).

    A release hands the freed tokens straight to the waiters at the head of the line and wakes
    only them, so a busy pool does not wake every waiting thread on every release.
    """

    def __init__(self, processor: str, capacity: int) -> None:
        if capacity < 1:
            raise ValueError(f"processor {processor}: capacity must be >= 1, got {capacity}")
        self.processor = processor
        self.capacity = capacity
        self._in_use = 0
        self._peak = 0
        self._lock = threading.Lock()
        self._waiters: list[_Waiter] = []
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
        """Block until `tokens` are granted; no higher-priority or earlier waiter is overtaken."""
        tokens = self.clamp(tokens)
        with self._lock:
            if not self._waiters and self._in_use + tokens <= self.capacity:
                self._take(tokens)
                return tokens
            waiter = _Waiter(priority, next(self._seq), tokens, threading.Condition(self._lock))
            heapq.heappush(self._waiters, waiter)
            try:
                while not waiter.granted:
                    waiter.wakeup.wait()
            except BaseException:  # interrupted: give back or leave the line, or it blocks everyone
                if waiter.granted:
                    self._in_use -= tokens
                else:
                    self._waiters.remove(waiter)
                    heapq.heapify(self._waiters)
                self._grant()
                raise
        return tokens

    def release(self, tokens: int) -> None:
        with self._lock:
            self._in_use -= tokens
            if self._in_use < 0:  # pragma: no cover - a bug, never a client's doing
                raise RuntimeError(f"token pool {self.processor} released more than it lent")
            self._grant()

    @contextmanager
    def hold(self, tokens: int, priority: int = 1) -> Iterator[int]:
        taken = self.acquire(tokens, priority)
        try:
            yield taken
        finally:
            self.release(taken)

    def _take(self, tokens: int) -> None:
        self._in_use += tokens
        self._peak = max(self._peak, self._in_use)

    def _grant(self) -> None:
        """Under the lock: give tokens to the head waiters, in order, while they fit."""
        while self._waiters and self._in_use + self._waiters[0].tokens <= self.capacity:
            waiter = heapq.heappop(self._waiters)
            self._take(waiter.tokens)
            waiter.granted = True
            waiter.wakeup.notify()
