"""The profiler: measure a model under every candidate execution config, solo, and keep the results.

Solo means nothing else computes while a config is measured: the caller guarantees it (the
`profile` command runs alone; the server must not profile while serving). The profiles feed the
Pareto front and the allocator, which models co-location separately (its slowdown factor), so a
solo figure is exactly what they need. Nothing is pinned: threads are set through the config.

What the store already holds for (file hash, config, batch, backend version, machine) is not
measured again, and neither is a config that failed before (its reason is kept).
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from ..backends import Backend, ExecutionConfig, Session, available_backends, get_backend
from ..backends.base import measure_rss, prime, release_freed_memory
from ..config import ModelConfig
from ..engine import warmup_inputs
from ..errors import EdgeplexError
from .profile import Profile
from .store import Failure, ProfileStore, file_hash, machine_id

log = logging.getLogger(__name__)

Inputs = dict[str, np.ndarray]
Outcome = Literal["measured", "stored", "failed", "failed before"]
# Only the original for now; quantised / fp16 variants (tuning/variants.py) plug in here.
DEFAULT_VARIANTS: tuple[str, ...] = ("fp32",)


@dataclass(frozen=True)
class Step:
    """One (config, batch) of a model's plan, done: for progress bars and the measured/stored tally."""

    index: int
    total: int
    model: str
    config: ExecutionConfig
    batch: int
    outcome: Outcome
    profile: Profile | None = None
    reason: str = ""


@dataclass(frozen=True)
class Measurement:
    """What one solo run of a config gave."""

    p50_ms: float
    p99_ms: float
    mean_ms: float
    memory_bytes: int
    extra: dict[str, Any] = field(default_factory=dict)


def candidate_batches(config: ModelConfig) -> list[int]:
    """1 and the model's max batch (when it batches): the ends of what the batcher will form."""
    return sorted({1, config.max_batch_size}) if config.max_batch_size > 0 else [1]


def candidate_configs(config: ModelConfig, cores: int, backends: Sequence[str] | None = None,
                      variants: Sequence[str] = DEFAULT_VARIANTS) -> list[ExecutionConfig]:
    """Every backend (default: all available here) x processor x variant x threads 1..cores.

    Accelerators get one thread only: their compute does not run on the intra-op pool.
    """
    found = []
    for name in available_backends() if backends is None else backends:
        backend = get_backend(name)
        for processor in backend.processors():
            threads = range(1, max(cores, 1) + 1) if processor == "cpu" else range(1, 2)
            for variant in variants:
                found += [ExecutionConfig(name, processor, variant, t, config.max_batch_size) for t in threads]
    return found


def batched_warmup_inputs(config: ModelConfig, batch: int) -> Inputs:
    """The engine's warm-up inputs (zeros, unknown dims 32) with `batch` rows."""
    inputs = warmup_inputs(config)
    if config.max_batch_size > 0 and batch != 1:
        inputs = {k: np.repeat(v, batch, axis=0) for k, v in inputs.items()}
    return inputs


def inputs_for(name: str, config: ModelConfig, model_hash: str) -> Callable[[int], Inputs]:
    """Realistic inputs for a zoo model (checked by hash, not name alone), else batched zeros."""
    from ..zoo import ZOO, example_inputs

    zoo = ZOO.get(name)
    if zoo is not None and zoo.sha256 == model_hash:
        return lambda batch: example_inputs(name, batch)
    return lambda batch: batched_warmup_inputs(config, batch)


def measure(backend: Backend, model_file: Path, config: ExecutionConfig, inputs: Inputs,
            iterations: int, warmup: int, max_seconds: float) -> Measurement:
    """Open, run once (memory), warm up, then time up to `iterations` calls within `max_seconds`."""
    prime(backend, model_file, config, inputs)
    release_freed_memory()

    def open_and_run() -> tuple[Session, float]:
        start = time.perf_counter()
        session = backend.open(model_file, config)
        try:
            session.run(inputs)
        except BaseException:
            session.close()
            raise
        return session, time.perf_counter() - start

    (session, first_s), grown = measure_rss(open_and_run)
    try:
        start = time.perf_counter()
        for _ in range(warmup):  # warm-up may use a fifth of the time budget
            if time.perf_counter() - start > max_seconds / 5:
                break
            session.run(inputs)
        times: list[float] = []
        start = time.perf_counter()
        while len(times) < max(iterations, 1) and (not times or time.perf_counter() - start < max_seconds):
            t0 = time.perf_counter()
            session.run(inputs)
            times.append(time.perf_counter() - t0)
        memory = max(grown, session.memory_bytes)
        session_bytes = session.memory_bytes
    finally:
        session.close()
    p50, p99 = (float(v) * 1000 for v in np.percentile(times, [50, 99]))
    extra = {"samples": len(times), "open_and_first_run_ms": round(first_s * 1000, 3), "rss_delta_bytes": grown,
             "session_bytes": session_bytes}
    return Measurement(p50, p99, float(np.mean(times)) * 1000, memory, extra)


def profile_model(name: str, model_file: Path, config: ModelConfig, store: ProfileStore, cores: int,
                  inputs_for_batch: Callable[[int], Inputs] | None = None, iterations: int = 50, warmup: int = 5,
                  progress: Callable[[Step], None] | None = None, *, backends: Sequence[str] | None = None,
                  max_seconds: float = 3.0, retry_failed: bool = False,
                  variants: Mapping[str, tuple[Path, float]] | None = None,
                  guard: Callable[[ExecutionConfig], AbstractContextManager[object]] | None = None) -> list[Profile]:
    """Profiles of every candidate (config, batch) of a model, measuring only what the store lacks.

    The caller guarantees the machine is otherwise idle (solo measurement). `variants` maps a
    variant name to (its file, its fidelity loss); default: the original as "fp32", loss 0.
    Failed configs are recorded with their reason and skipped (again with `retry_failed`).
    `guard(config)` is held around each measurement: a server profiling in the background holds
    the config's cores from its token pool, so the measurement neither oversubscribes nor is
    disturbed by the requests it serves meanwhile.
    """
    files = dict(variants) if variants else {"fp32": (Path(model_file), 0.0)}
    hashes = {variant: file_hash(path) for variant, (path, _) in files.items()}
    make_inputs = inputs_for_batch or inputs_for(name, config, hashes.get("fp32") or next(iter(hashes.values())))
    machine = machine_id()
    plan = [(c, b) for c in candidate_configs(config, cores, backends, tuple(files)) for b in candidate_batches(config)]
    batch_inputs: dict[int, Inputs] = {}
    profiles: list[Profile] = []
    for index, (cfg, batch) in enumerate(plan):
        backend = get_backend(cfg.backend)
        version = backend.version()
        key = (hashes[cfg.variant], cfg, batch, version, machine)

        report = functools.partial(_report, progress, index, len(plan), name, cfg, batch)
        stored = store.get(*key)
        if stored is not None:
            profiles.append(stored)
            report("stored", stored)
            continue
        failed = None if retry_failed else store.failure(*key)
        if failed is not None:
            report("failed before", reason=failed.reason)
            continue
        if batch not in batch_inputs:
            batch_inputs[batch] = make_inputs(batch)
        path, loss = files[cfg.variant]
        try:
            with guard(cfg) if guard is not None else nullcontext():
                m = measure(backend, path, cfg, batch_inputs[batch], iterations, warmup, max_seconds)
        except Exception as exc:  # any failure of one config is that config's, never the whole run's
            reason = exc.message if isinstance(exc, EdgeplexError) else f"{type(exc).__name__}: {exc}"
            log.warning("%s: %s at batch %d failed: %s", name, cfg.label(), batch, reason)
            store.put_failure(Failure(name, key[0], cfg, batch, version, machine, reason, time.time()))
            report("failed", reason=reason)
            continue
        profile = Profile(model=name, model_hash=key[0], config=cfg, batch=batch, p50_ms=m.p50_ms, p99_ms=m.p99_ms,
                          throughput=batch * 1000.0 / max(m.mean_ms, 1e-6), memory_bytes=m.memory_bytes, backend_version=version,
                          machine=machine, fidelity_loss=loss, measured_at=time.time(), extra=m.extra)
        store.put(profile)
        profiles.append(profile)
        report("measured", profile)
    return profiles


def _report(progress: Callable[[Step], None] | None, index: int, total: int, model: str, config: ExecutionConfig,
            batch: int, outcome: Outcome, profile: Profile | None = None, reason: str = "") -> None:
    if progress is not None:
        progress(Step(index, total, model, config, batch, outcome, profile, reason))


def current_backend_versions(backends: Sequence[str] | None = None) -> dict[str, str]:
    """backend -> installed version, to read only current profiles with `ProfileStore.for_model`."""
    return {name: get_backend(name).version() for name in (available_backends() if backends is None else backends)}
