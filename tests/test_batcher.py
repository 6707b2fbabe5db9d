"""The dynamic batcher's pieces, alone: policy, waiting, cutting, collating and splitting."""

from __future__ import annotations

import numpy as np
import pytest

from edgeplex.config import ModelConfig
from edgeplex.engine.batcher import BatchPolicy, collate, cut_batch, signature, split
from edgeplex.errors import BackendError


def config(**fields: object) -> ModelConfig:
    return ModelConfig.model_validate({"name": "m", "max_batch_size": 8, **fields})


def test_policy_follows_the_config_and_the_execution_cap() -> None:
    assert BatchPolicy.of(config()) == BatchPolicy()  # no dynamic_batching: one request per run
    assert BatchPolicy.of(config(max_batch_size=0, dynamic_batching={})).max_rows == 0
    batching = {"max_queue_delay_microseconds": 500, "preferred_batch_size": [6, 2, 4]}
    policy = BatchPolicy.of(config(dynamic_batching=batching))
    assert policy == BatchPolicy(8, 500_000, (2, 4, 6))
    capped = BatchPolicy.of(config(dynamic_batching=batching), max_batch=4)
    assert (capped.max_rows, capped.preferred, capped.target) == (4, (2, 4), 4)
    assert BatchPolicy.of(config(dynamic_batching={})).target == 8


def test_a_partial_batch_waits_only_within_the_delay() -> None:
    policy = BatchPolicy(8, delay_ns=1_000_000)
    assert policy.wait_ns(rows=3, oldest_ns=0, now_ns=400_000) == 600_000
    assert policy.wait_ns(rows=3, oldest_ns=0, now_ns=1_000_001) == 0  # the oldest waited long enough
    assert policy.wait_ns(rows=8, oldest_ns=0, now_ns=0) == 0  # full
    assert BatchPolicy(8).wait_ns(rows=1, oldest_ns=0, now_ns=0) == 0  # no delay: send what is there
    assert BatchPolicy(8, 1_000_000, (2, 4)).wait_ns(rows=4, oldest_ns=0, now_ns=0) == 0  # largest preferred


def test_cut_at_the_largest_preferred_size_reached() -> None:
    policy = BatchPolicy(8, 0, (2, 4))
    assert cut_batch([1, 1, 1, 1, 1], policy) == 4
    assert cut_batch([1, 2, 1], policy) == 3  # 1, 3, 4 rows: 4 is preferred
    assert cut_batch([3, 3], policy) == 2  # no prefix is preferred: all of it
    assert cut_batch([1, 1, 1], BatchPolicy(8)) == 3


def test_signature_separates_shapes_and_types_but_not_batch_sizes() -> None:
    a = {"x": np.zeros((1, 4), np.float32)}
    assert signature(a, True) == signature({"x": np.zeros((5, 4), np.float32)}, True)
    assert signature(a, True) != signature({"x": np.zeros((1, 5), np.float32)}, True)
    assert signature(a, True) != signature({"x": np.zeros((1, 4), np.float64)}, True)
    assert signature(a, False) != signature({"x": np.zeros((5, 4), np.float32)}, False)


def test_collate_then_split_gives_each_caller_its_rows() -> None:
    requests = [{"x": np.full((n, 3), n, np.float32), "k": np.full((n, 1), -n, np.int32)} for n in (1, 3, 2)]
    batch = collate(requests)
    assert batch["x"].shape == (6, 3) and batch["k"].dtype == np.int32
    outputs = {"y": batch["x"] * 2, "k": batch["k"]}
    parts = split(outputs, [1, 3, 2])
    for request, part in zip(requests, parts):
        np.testing.assert_array_equal(part["y"], request["x"] * 2)
        np.testing.assert_array_equal(part["k"], request["k"])
    assert collate(requests[:1]) is requests[0]  # one request: no copy


def test_split_refuses_outputs_without_the_batch_axis() -> None:
    with pytest.raises(BackendError, match="first axis is not the batch of 3 rows"):
        split({"y": np.zeros((2, 4))}, [1, 2])
    with pytest.raises(BackendError, match="output 's'"):
        split({"s": np.array(1.0)}, [1, 1])


def test_a_burst_is_spread_over_the_idle_instances() -> None:
    from edgeplex.engine.batcher import spread_limit

    assert spread_limit(16, queued=8, idle_instances=0) == 16  # nobody else to share with
    assert spread_limit(16, queued=8, idle_instances=1) == 4  # two instances, four each
    assert spread_limit(16, queued=9, idle_instances=2) == 3
    assert spread_limit(4, queued=40, idle_instances=1) == 4  # never past the max
    assert spread_limit(16, queued=1, idle_instances=3) == 1
