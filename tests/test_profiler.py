"""The profiler and `edgeplex profile`: candidates, measuring only what is missing, failures, the CLI."""

from __future__ import annotations

import argparse
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import onnx
import pytest
from models import add_model
from standins import CountingBackend

import edgeplex.backends as backends
from edgeplex.backends import ExecutionConfig, available_backends
from edgeplex.config import ModelConfig, TensorSpec
from edgeplex.repository import Repository
from edgeplex.tuning.cli import add_profile_parser
from edgeplex.tuning.profile import Profile
from edgeplex.tuning.profiler import (
    Step,
    batched_warmup_inputs,
    candidate_batches,
    candidate_configs,
    inputs_for,
    profile_model,
)
from edgeplex.tuning.store import ProfileStore, file_hash, machine_id


def attempts(profiles: Iterable[Profile]) -> int:
    """Sessions opened to measure `profiles`: a disturbed measurement is taken again."""
    return sum(int(p.extra["attempts"]) for p in profiles)


@pytest.fixture
def add(tiny_repo: Path) -> tuple[Path, ModelConfig]:
    repo = Repository(tiny_repo)
    return tiny_repo / "add" / "1" / "model.onnx", repo.load_config(repo.source("add"))


def test_candidate_batches(tiny_repo: Path) -> None:
    repo = Repository(tiny_repo)
    assert candidate_batches(repo.load_config(repo.source("add"))) == [1, 8]
    assert candidate_batches(repo.load_config(repo.source("fixed"))) == [1]
    assert candidate_batches(ModelConfig(name="one", max_batch_size=1)) == [1]


def test_candidate_configs(add: tuple[Path, ModelConfig], monkeypatch: pytest.MonkeyPatch) -> None:
    _, config = add
    ort = candidate_configs(config, 3, ["onnxruntime"])
    assert ort == [ExecutionConfig("onnxruntime", "cpu", "fp32", t, 8) for t in (1, 2, 3)]
    # every available backend, each on its processors; an accelerator gets one thread
    monkeypatch.setitem(backends._BACKENDS, "npuish", CountingBackend("npuish", ("cpu", "npu")))
    found = candidate_configs(config, 2)
    assert {c.backend for c in found} == set(available_backends()) >= {"onnxruntime", "npuish"}
    assert [(c.processor, c.threads) for c in found if c.backend == "npuish"] == [("cpu", 1), ("cpu", 2), ("npu", 1)]
    variants = candidate_configs(config, 1, ["onnxruntime"], variants=("fp32", "int8"))
    assert [c.variant for c in variants] == ["fp32", "int8"]


def test_inputs(add: tuple[Path, ModelConfig]) -> None:
    model_file, config = add
    zeros = inputs_for("add", config, file_hash(model_file))(8)
    assert zeros["x"].shape == (8, 4) and zeros["x"].dtype == np.float32
    assert batched_warmup_inputs(config, 1)["x"].shape == (1, 4)
    # a model named like a zoo model but with another file gets generic inputs, not the zoo's
    assert inputs_for("magika", config, "not-the-zoo-hash")(2)["x"].shape == (2, 4)


def test_second_call_measures_nothing(tmp_path: Path, add: tuple[Path, ModelConfig], fake: CountingBackend) -> None:
    model_file, config = add
    store = ProfileStore(tmp_path / "p.sqlite")
    steps: list[Step] = []
    first = profile_model("add", model_file, config, store, 2, None, 5, 1, steps.append, backends=["counting"])
    # 2 threads x 2 batches (each measured again if the shared machine disturbed it), plus one untimed priming open
    opens = 1 + attempts(first)
    assert fake.opens == opens and 4 <= attempts(first) <= 12
    assert [s.outcome for s in steps] == ["measured"] * 4
    assert [(p.threads, p.batch) for p in first] == [(1, 1), (1, 8), (2, 1), (2, 8)]
    for p in first:
        assert 0 < p.p50_ms <= p.p99_ms and p.throughput > 0 and p.memory_bytes >= 1000
        assert p.model_hash == file_hash(model_file) and p.machine == machine_id() and p.backend_version == "fake-1"
        assert p.extra["samples"] == 5
    steps.clear()
    second = profile_model("add", model_file, config, store, 2, None, 5, 1, steps.append, backends=["counting"])
    assert fake.opens == opens and second == first
    assert [s.outcome for s in steps] == ["stored"] * 4
    # one more core: only the new thread count is measured
    third = profile_model("add", model_file, config, store, 3, None, 5, 1, backends=["counting"])
    assert fake.opens == opens + attempts(p for p in third if p.threads == 3)


def test_changed_model_file_is_measured_again(tmp_path: Path, fake: CountingBackend) -> None:
    model_file = add_model(tmp_path / "add" / "1" / "model.onnx")
    config = ModelConfig(name="add", max_batch_size=0, inputs=[TensorSpec(name="x", datatype="FP32", dims=[1, 4])])
    store = ProfileStore(tmp_path / "p.sqlite")
    profile_model("add", model_file, config, store, 1, None, 3, 0, backends=["counting"])
    opens = fake.opens
    profile_model("add", model_file, config, store, 1, None, 3, 0, backends=["counting"])
    assert fake.opens == opens
    model = onnx.load(str(model_file))
    model.doc_string = "retrained"
    onnx.save(model, str(model_file))
    again = profile_model("add", model_file, config, store, 1, None, 3, 0, backends=["counting"])
    assert fake.opens == opens + attempts(again)


@pytest.mark.parametrize("failure", ["fail_open", "fail_run"])
def test_failed_config_recorded_and_skipped(tmp_path: Path, add: tuple[Path, ModelConfig], fake: CountingBackend,
                                            failure: str) -> None:
    model_file, config = add
    setattr(fake, failure, 2)
    store = ProfileStore(tmp_path / "p.sqlite")
    steps: list[Step] = []
    got = profile_model("add", model_file, config, store, 2, None, 3, 0, steps.append, backends=["counting"])
    assert [p.threads for p in got] == [1, 1]
    failed = [s for s in steps if s.outcome == "failed"]
    assert len(failed) == 2 and all("fake:" in s.reason and s.config.threads == 2 for s in failed)
    assert {f.batch for f in store.failures(file_hash(model_file))} == {1, 8}
    opens, steps[:] = fake.opens, []
    again = profile_model("add", model_file, config, store, 2, None, 3, 0, steps.append, backends=["counting"])
    assert fake.opens == opens and again == got  # not retried
    assert [s.outcome for s in steps] == ["stored", "stored", "failed before", "failed before"]
    setattr(fake, failure, 0)
    retried = profile_model("add", model_file, config, store, 2, None, 3, 0, backends=["counting"], retry_failed=True)
    assert fake.opens == opens + attempts(p for p in retried if p.threads == 2)
    assert len(retried) == 4 and store.failures(file_hash(model_file)) == []


def test_slow_config_is_time_bounded(tmp_path: Path, add: tuple[Path, ModelConfig], fake: CountingBackend) -> None:
    model_file, config = add
    store = ProfileStore(tmp_path / "p.sqlite")
    got = profile_model("add", model_file, config, store, 1, None, 10**7, 10**7, backends=["counting"],
                        max_seconds=0.1)
    assert got and all(1 <= p.extra["samples"] < 10**7 for p in got)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="edgeplex")
    parser.add_argument("--quiet", action="store_true")
    add_profile_parser(parser.add_subparsers(dest="command", required=True))
    return parser


def test_cli_profile(tmp_path: Path, tiny_repo: Path, capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["profile", "--repository", str(tiny_repo), "add", "fixed", "broken", "--store", str(tmp_path / "p.sqlite"),
            "--cores", "2", "--iterations", "3", "--warmup", "0", "--plots", str(tmp_path / "fronts"),
            "--backend", "onnxruntime"]
    args = _parser().parse_args(argv)
    assert args.func(args) == 1  # `broken` is reported, the others profiled
    out, err = capsys.readouterr()
    assert "onnxruntime  cpu       fp32" in out and "p50 ms" in out and "memory MB" in out
    assert "4 configs: 4 measured, 0 from the store" in out and "2 configs: 2 measured" in out
    assert "broken: not profiled:" in out
    assert "edgeplex profile: add [1/4] onnxruntime/cpu/fp32/t1/b8 batch 1: measured" in err  # not a TTY: lines
    for name in ("add", "fixed"):
        png = tmp_path / "fronts" / f"{name}.png"
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    args = _parser().parse_args(["--quiet", *argv[:5], *argv[6:]])  # again, without `broken`, quietly
    assert args.func(args) == 0
    out, err = capsys.readouterr()
    assert "4 configs: 0 measured, 4 from the store" in out and err == ""


@pytest.mark.integration
def test_profile_real_magika(tmp_path: Path, zoo_repo: Path) -> None:
    repo = Repository(zoo_repo)
    source = repo.source("magika")
    config = repo.load_config(source)
    model_file = source.versions[source.latest_version] / config.default_model_filename
    store = ProfileStore(tmp_path / "p.sqlite")
    got = profile_model("magika", model_file, config, store, 2, None, 5, 1, max_seconds=1.0)
    assert {p.config.backend for p in got} == set(available_backends())
    assert {(p.threads, p.batch) for p in got if p.config.processor == "cpu"} == {(1, 1), (1, 16), (2, 1), (2, 16)}
    for p in got:
        assert 0 < p.p50_ms <= p.p99_ms and p.throughput > 0 and p.memory_bytes > 0
    assert store.for_model(file_hash(model_file)) == got
