"""Dynamic batching, as small functions that can be tested alone: when a batch is worth waiting
for, where to cut it, how requests are concatenated on the batch axis and split back.

The queue (`scheduler.py`) gathers compatible requests in order; these functions decide the
rest. Each caller gets exactly its own rows back.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from itertools import accumulate
from typing import Any

import numpy as np

from ..config import ModelConfig
from ..errors import BackendError

Inputs = dict[str, np.ndarray]


@dataclass(frozen=True)
class BatchPolicy:
    """How one model's requests are batched. `max_rows` <= 1: never (one request per run)."""

    max_rows: int = 0
    delay_ns: int = 0
    preferred: tuple[int, ...] = ()

    @classmethod
    def of(cls, config: ModelConfig, max_batch: int = 0) -> BatchPolicy:
        """The model's batcher, capped by its execution config's `max_batch` (0: no cap)."""
        batching = config.dynamic_batching
        if batching is None or config.max_batch_size == 0:
            return cls()
        rows = min(config.max_batch_size, max_batch) if max_batch > 0 else config.max_batch_size
        preferred = tuple(size for size in batching.preferred_batch_size if size <= rows)
        return cls(rows, batching.max_queue_delay_microseconds * 1000, preferred)

    @property
    def target(self) -> int:
        """The batch size worth waiting for: the largest preferred size, else the max."""
        return self.preferred[-1] if self.preferred else self.max_rows

    def wait_ns(self, rows: int, oldest_ns: int, now_ns: int) -> int:
        """How much longer a batch of `rows` may wait to grow (0: send it now)."""
        if rows >= self.target or self.delay_ns == 0:
            return 0
        return max(0, oldest_ns + self.delay_ns - now_ns)


def spread_limit(max_rows: int, queued: int, idle_instances: int) -> int:
    """The most rows one instance should take when `idle_instances` others wait for work: an
    even share of what is queued, so a burst keeps every instance busy instead of making one
    large batch while the others idle (on a CPU a batch row costs about what a request does)."""
    if idle_instances <= 0:
        return max_rows
    return max(1, min(max_rows, -(-queued // (idle_instances + 1))))


def cut_batch(rows: Sequence[int], policy: BatchPolicy) -> int:
    """How many of the gathered requests (rows each, in order) to send: the longest prefix that
    makes a preferred size, else all of them."""
    if policy.preferred:
        fits = [count for count, total in enumerate(accumulate(rows), 1) if total in policy.preferred]
        if fits:
            return fits[-1]
    return len(rows)


def signature(inputs: Inputs, batched: bool) -> tuple[Any, ...]:
    """What must match for two requests to share a batch: every input's dtype and shape beyond
    the batch axis (models with free dims, like the OCR ones, see many shapes)."""
    skip = 1 if batched else 0
    return tuple((name, array.dtype.str, array.shape[skip:]) for name, array in sorted(inputs.items()))


def collate(requests: Sequence[Inputs]) -> Inputs:
    """One batch from several requests' inputs, in order (no copy for a single request)."""
    if len(requests) == 1:
        return requests[0]
    return {name: np.concatenate([inputs[name] for inputs in requests]) for name in requests[0]}


def split(outputs: Inputs, rows: Sequence[int]) -> list[Inputs]:
    """Each request's rows of the batch's outputs (views, not copies)."""
    if len(rows) == 1:
        return [outputs]
    total = sum(rows)
    for name, array in outputs.items():
        if array.ndim == 0 or array.shape[0] != total:
            raise BackendError(
                f"output '{name}' has shape {list(array.shape)}: its first axis is not the batch of {total} rows"
            )
    bounds = list(accumulate(rows))[:-1]
    parts = {name: np.split(array, bounds) for name, array in outputs.items()}
    return [{name: parts[name][index] for name in outputs} for index in range(len(rows))]
