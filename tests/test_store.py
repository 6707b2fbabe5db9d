"""The profile store: round trips, what invalidates a profile, failures, threads, schema."""

from __future__ import annotations

import sqlite3
import threading
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from edgeplex.backends import ExecutionConfig
from edgeplex.tuning.profile import Profile
from edgeplex.tuning.store import (
    SCHEMA_VERSION,
    Failure,
    ProfileStore,
    StoreError,
    default_store_path,
    file_hash,
    machine_id,
)

CFG = ExecutionConfig("onnxruntime", "cpu", "fp32", 2, 8)


def profile(model_hash: str = "h1", config: ExecutionConfig = CFG, batch: int = 1, version: str = "1.0",
            machine: str = "m1", p50: float = 2.0) -> Profile:
    return Profile(model="add", model_hash=model_hash, config=config, batch=batch, p50_ms=p50, p99_ms=p50 * 2,
                   throughput=batch * 1000 / p50, memory_bytes=1234567, backend_version=version, machine=machine,
                   fidelity_loss=0.01, measured_at=1700000000.5, extra={"samples": 20})


def test_round_trip(tmp_path: Path) -> None:
    store = ProfileStore(tmp_path / "p.sqlite")
    p = profile()
    store.put(p)
    got = store.get("h1", CFG, 1, "1.0", "m1")
    assert got == p and got is not None
    assert got.extra == {"samples": 20} and got.config == CFG
    # a second store on the same file (a restart) sees it too
    assert ProfileStore(tmp_path / "p.sqlite").for_model("h1", machine="m1") == [p]


def test_put_replaces_same_key(tmp_path: Path) -> None:
    store = ProfileStore(tmp_path / "p.sqlite")
    store.put(profile(p50=2.0))
    store.put(profile(p50=3.0))
    assert [p.p50_ms for p in store.for_model("h1", machine="m1")] == [3.0]


@pytest.mark.parametrize("field,value", [("model_hash", "h2"), ("version", "2.0"), ("machine", "m2"), ("batch", 8),
                                         ("config", replace(CFG, threads=1)), ("config", replace(CFG, variant="int8")),
                                         ("config", replace(CFG, backend="openvino"))])
def test_any_key_change_misses(tmp_path: Path, field: str, value: object) -> None:
    store = ProfileStore(tmp_path / "p.sqlite")
    store.put(profile())
    key: dict[str, Any] = {"model_hash": "h1", "config": CFG, "batch": 1, "version": "1.0", "machine": "m1"} | {field: value}
    assert store.get(key["model_hash"], key["config"], key["batch"], key["version"], key["machine"]) is None


def test_changed_model_file_changes_hash(tmp_path: Path) -> None:
    model = tmp_path / "model.onnx"
    model.write_bytes(b"weights v1")
    store = ProfileStore(tmp_path / "p.sqlite")
    store.put(profile(model_hash=file_hash(model)))
    assert store.get(file_hash(model), CFG, 1, "1.0", "m1") is not None
    model.write_bytes(b"weights v2")
    assert store.get(file_hash(model), CFG, 1, "1.0", "m1") is None


def test_for_model_filters_machine_and_versions(tmp_path: Path) -> None:
    store = ProfileStore(tmp_path / "p.sqlite")
    here = profile(machine=machine_id())
    store.put(here)
    store.put(profile(machine="elsewhere"))
    store.put(profile(machine=machine_id(), version="0.9", batch=8))
    assert len(store.for_model("h1")) == 2  # this machine by default
    assert store.for_model("h1", backend_versions={"onnxruntime": "1.0"}) == [here]
    assert store.for_model("h1", machine="elsewhere")[0].machine == "elsewhere"
    assert store.for_model("other") == []


def test_failures_are_kept_apart(tmp_path: Path) -> None:
    store = ProfileStore(tmp_path / "p.sqlite")
    failure = Failure("add", "h1", CFG, 1, "1.0", "m1", "BackendError: no", 5.0)
    store.put_failure(failure)
    assert store.get("h1", CFG, 1, "1.0", "m1") is None
    assert store.failure("h1", CFG, 1, "1.0", "m1") == failure
    assert store.for_model("h1", machine="m1") == [] and store.failures("h1", machine="m1") == [failure]
    store.put(profile())  # a later success (e.g. retried) replaces the failure
    assert store.failure("h1", CFG, 1, "1.0", "m1") is None
    assert store.get("h1", CFG, 1, "1.0", "m1") is not None


def test_threads_putting(tmp_path: Path) -> None:
    store = ProfileStore(tmp_path / "p.sqlite")
    errors: list[BaseException] = []

    def work(worker: int) -> None:
        try:
            for threads in range(1, 11):
                store.put(profile(config=replace(CFG, threads=threads), batch=worker + 1))
                assert store.get("h1", replace(CFG, threads=threads), worker + 1, "1.0", "m1") is not None
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    workers = [threading.Thread(target=work, args=(i,)) for i in range(6)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    assert errors == []
    assert len(store.for_model("h1", machine="m1")) == 60


def test_schema_versions(tmp_path: Path) -> None:
    path = tmp_path / "p.sqlite"
    ProfileStore(path).put(profile())
    with sqlite3.connect(path) as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
        conn.execute("PRAGMA user_version = 0")  # an older layout: dropped, re-measured
    conn.close()
    assert ProfileStore(path).for_model("h1", machine="m1") == []
    with sqlite3.connect(path) as conn:
        conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")  # a newer edgeplex's: refused
    conn.close()
    with pytest.raises(StoreError, match="newer"):
        ProfileStore(path)


def test_machine_id_and_default_path(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    ident = machine_id()
    assert ident == machine_id() and "cpu" in ident and "GiB" in ident
    monkeypatch.setenv("EDGEPLEX_CACHE", str(tmp_path))
    assert default_store_path() == tmp_path / "profiles.sqlite"
