"""The policies' shared pieces: candidates from profiles, hysteresis, slowdown, the baselines."""

from __future__ import annotations

from dataclasses import replace

import pytest

from edgeplex.backends.base import ExecutionConfig
from edgeplex.config import ModelConfig
from edgeplex.engine.placement import InstanceGroup
from edgeplex.tuning.policies import (
    balance_placement,
    candidates_for_models,
    candidates_from_profiles,
    should_switch,
    static_placement,
)
from edgeplex.tuning.profile import Profile
from edgeplex.tuning.timeshare import plan_shared

MiB = 2**20


def test_hysteresis() -> None:
    assert not should_switch(100.0, 105.0)
    assert should_switch(100.0, 115.0)
    assert not should_switch(100.0, 90.0)
    assert should_switch(0.0, 1.0) and not should_switch(0.0, 0.0)


def test_candidates_from_profiles() -> None:
    fast, slow = ExecutionConfig("openvino", "cpu", "fp32", 0, 8), ExecutionConfig("onnxruntime", "cpu", "int8", 1, 8)

    def prof(config: ExecutionConfig, batch: int, p99: float, tput: float, loss: float = 0.0) -> Profile:
        return Profile("m", "h", config, batch, p99 / 2, p99, tput, 10 * MiB, "1", "box", loss)

    profiles = [prof(fast, 1, 5, 100), prof(fast, 4, 20, 300), prof(fast, 8, 60, 400), prof(slow, 1, 8, 90, 0.02)]
    cands = candidates_from_profiles(profiles, cores=4, slo_ms=30)
    # The batcher is capped at the batch size that earned the rate (batch 1: no batching).
    capped = [replace(fast, max_batch=4), replace(slow, max_batch=1)]
    assert [(c.config, c.batch, c.rate, c.threads) for c in cands] == [(capped[0], 4, 300, 4), (capped[1], 1, 90, 1)]
    assert [c.config for c in candidates_from_profiles(profiles, 4, max_fidelity_loss=0.01)] == [
        replace(fast, max_batch=8)]
    assert candidates_from_profiles(profiles, 4, slo_ms=1) == []
    with pytest.raises(ValueError):
        candidates_from_profiles([*profiles, Profile("other", "h", fast, 1, 1, 1, 1, 1, "1", "box")], 4)


def test_candidates_for_models_reads_slo_and_fidelity_bound() -> None:
    fp32, int8 = ExecutionConfig("onnxruntime", "cpu", "fp32", 1, 0), ExecutionConfig("onnxruntime", "cpu", "int8", 1, 0)
    profiles = [
        Profile("a", "h", fp32, 1, 4, 8, 100, MiB, "1", "box"),
        Profile("a", "h", int8, 1, 2, 3, 200, MiB, "1", "box", 0.05),
        Profile("b", "h", fp32, 1, 40, 80, 10, MiB, "1", "box"),
    ]
    models = {
        "a": ModelConfig(name="a", max_fidelity_loss=0.01),
        "b": ModelConfig(name="b", slo_ms=50),
        "c": ModelConfig(name="c"),
    }
    cands = candidates_for_models(profiles, models, cores=2)
    assert [c.config for c in cands["a"]] == [fp32] and cands["b"] == [] and cands["c"] == []
    assert "no candidate" in plan_shared({}, cands, 2, None).unplaced["b"]


def test_static_and_balance_baselines() -> None:
    models = {"a": ModelConfig(name="a", max_batch_size=4), "b": ModelConfig(name="b")}
    static = static_placement(models)
    assert set(static) == {"a", "b"}
    assert static["a"].groups == [InstanceGroup(ExecutionConfig("onnxruntime", "cpu", "fp32", 0, 4), 1)]
    balance = balance_placement(models, ["onnxruntime", "openvino", "onnxruntime/cuda:0"])
    groups = balance["b"].groups
    assert [(g.config.backend, g.config.processor, g.config.threads, g.count) for g in groups] == [
        ("onnxruntime", "cpu", 1, 1),
        ("openvino", "cpu", 1, 1),
        ("onnxruntime", "cuda:0", 1, 1),
    ]
    with pytest.raises(ValueError):
        balance_placement(models, [])


def test_a_batch_must_clearly_beat_batch_one_to_be_chosen() -> None:
    config = ExecutionConfig("onnxruntime", "cpu", "fp32", 1, 8)

    def prof(batch: int, tput: float) -> Profile:
        return Profile("m", "h", config, batch, 10, 12, tput, 10 * MiB, "1", "box")

    (noise,) = candidates_from_profiles([prof(1, 100), prof(8, 105)], cores=2)
    assert (noise.batch, noise.config.max_batch) == (1, 1)  # 5 % is noise: no batching
    (gain,) = candidates_from_profiles([prof(8, 130), prof(1, 100)], cores=2)
    assert (gain.batch, gain.config.max_batch) == (8, 8)
