"""The profiler: measure a model under every candidate execution config, solo, and keep the results.

Solo means nothing else computes while a config is measured. The caller tries to ensure it (the
`profile` command runs alone; a server profiling in the background holds the config's cores),
but it cannot stop other processes, nor its own transport threads: so each measurement also
records how solo it was. `foreign_cpu` is the share of a measuring core that other work took
(the run-queue wait of the measuring threads, /proc/<tid>/schedstat), and `spread` the
coefficient of variation of the timed runs. A disturbed figure is measured again, up to
`attempts` times, and the least disturbed, fastest one is kept; if every attempt was disturbed it
is stored with `confidence` "low", to be re-measured when the machine is quiet. The profiles feed
the Pareto front and the allocator, which models co-location separately, so a solo figure is
exactly what they need. Nothing is pinned: threads are set through the config.

What the store already holds for (file hash, config, batch, backend version, machine) is not
measured again (unless it is of low confidence and `remeasure_low_confidence`), and neither is a
config that failed before (its reason is kept).
"""

from __future__ import annotations

import functools
import logging
import os
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field, replace
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

# When a measurement is not a solo figure. Measured on a 2-core VM (magika, yolov8n, 1-2 threads):
# alone, the measuring threads waited 0.00-0.01 of their time for a core; with a spinning process
# per core, 0.24-0.50, and the figures 17-45% slower. (One spinning process on the *other* core
# of a 1-thread config: 0.01-0.02, and magika's figure unchanged: other processes' CPU on cores
# the config does not use is recorded as `foreign_cores` but does not by itself disturb.)
FOREIGN_CPU_MAX = 0.15  # share of a measuring core other work took
# Coefficient of variation of the timed runs. Alone, 0.07-0.18 for those models; it is only
# judged for runs of 1 ms or more and at least 5 samples: shorter runs vary with interrupts and
# Python's own overhead (CV 0.3-0.6 for a 20 us model on an idle machine), not with the sharing.
SPREAD_MAX = 0.3
SPREAD_MIN_MS = 1.0
SPREAD_MIN_SAMPLES = 5
# /proc/stat counts clock ticks (10 ms): a shorter loop cannot resolve other processes' cores.
FOREIGN_CORES_MIN_WINDOW_S = 0.25
# A loop shorter than this is judged as if it lasted this long: a preemption of a few hundred
# microseconds in a 100 us loop of a tiny model is a blip, not a core shared with other work.
FOREIGN_CPU_MIN_WINDOW_S = 0.01


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
    """What one run of a config gave, and how solo it was."""

    p50_ms: float
    p99_ms: float
    mean_ms: float
    memory_bytes: int
    extra: dict[str, Any] = field(default_factory=dict)
    spread: float = 0.0  # coefficient of variation of the timed runs
    p90_p10: float = 1.0  # p90 / p10 of the timed runs
    # The share of a measuring core that other work (other processes, this process's other
    # threads) took during the timed loop; None where it cannot be read.
    foreign_cpu: float | None = None
    # Cores other processes used on average during the timed loop (/proc/stat); None when the
    # loop was too short to resolve it. Recorded, not judged (see FOREIGN_CPU_MAX).
    foreign_cores: float | None = None
    samples: int = 0

    @property
    def disturbance(self) -> str:
        """Why this is not a solo figure, or "" when it is."""
        if self.foreign_cpu is not None and self.foreign_cpu > FOREIGN_CPU_MAX:
            return f"other work took {self.foreign_cpu:.2f} of a measuring core (> {FOREIGN_CPU_MAX})"
        if self.p50_ms >= SPREAD_MIN_MS and self.samples >= SPREAD_MIN_SAMPLES and self.spread > SPREAD_MAX:
            return f"run times spread by CV {self.spread:.2f} (> {SPREAD_MAX})"
        return ""

    @property
    def disturbed(self) -> bool:
        return bool(self.disturbance)


# -- CPU accounting (Linux /proc): who else computed while a config was measured -----------------
# Small readers and pure parsers, so the arithmetic is testable on fixed text. Elsewhere (no
# /proc, no schedstat) they return None and nothing is judged disturbed for want of a reading.

def _tick() -> int:
    return os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def parse_box_busy(stat: str) -> float:
    """Busy seconds of all CPUs from /proc/stat: user, nice, system, irq, softirq and steal (time
    the hypervisor gave the machine's cores to others is time taken from the measurement too)."""
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(v) for v in stat.split("\n", 1)[0].split()[1:9])
    return (user + nice + system + irq + softirq + steal) / _tick()


def parse_process_cpu(stat: str) -> float:
    """User + system CPU seconds of a process (all its threads) from /proc/<pid>/stat."""
    fields = stat.rpartition(")")[2].split()  # the command name may hold spaces and parentheses
    return (int(fields[11]) + int(fields[12])) / _tick()


def parse_schedstat(schedstat: str) -> float:
    """Seconds a thread waited on a run queue (runnable, but a core ran something else), from
    /proc/<pid>/task/<tid>/schedstat: "<on-cpu ns> <waiting ns> <timeslices>"."""
    return int(schedstat.split()[1]) / 1e9


def _read(path: str) -> str | None:
    try:
        with open(path) as f:
            return f.read()
    except OSError:  # not Linux, no schedstat, or the thread ended
        return None


def box_busy_seconds() -> float | None:
    text = _read("/proc/stat")
    return parse_box_busy(text) if text else None


def process_cpu_seconds() -> float | None:
    text = _read("/proc/self/stat")
    return parse_process_cpu(text) if text else None


def thread_wait_seconds(tid: int) -> float | None:
    text = _read(f"/proc/self/task/{tid}/schedstat")
    return parse_schedstat(text) if text else None


def thread_ids() -> set[int]:
    """Native ids of this process's threads (empty where /proc is missing)."""
    try:
        return {int(t) for t in os.listdir("/proc/self/task")}
    except OSError:
        return set()


def usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


class CpuWatch:
    """Watches a timed loop: `CpuWatch(threads)` just before it, `finish(...)` just after.

    `threads` are the native ids of the threads that compute the measurement (the calling
    thread and the session's intra-op pool). What they waited for a core is time other work
    took from the measurement, whoever it was: another process, or this server's own transport
    and serving threads (which a whole-process account would miss).
    """

    def __init__(self, threads: Iterable[int]) -> None:
        self.waits = {tid: wait for tid in threads if (wait := thread_wait_seconds(tid)) is not None}
        self.box, self.ours = box_busy_seconds(), process_cpu_seconds()
        self.start = time.perf_counter()

    def finish(self, measuring_threads: int) -> tuple[float | None, float | None]:
        """(foreign_cpu, foreign_cores); see `Measurement`."""
        wall = max(time.perf_counter() - self.start, 1e-9)
        box, ours = box_busy_seconds(), process_cpu_seconds()
        foreign_cores = None
        if box is not None and ours is not None and self.box is not None and self.ours is not None and (
                wall >= FOREIGN_CORES_MIN_WINDOW_S):
            foreign_cores = max(0.0, (box - self.box) - (ours - self.ours)) / wall
        window = max(wall, FOREIGN_CPU_MIN_WINDOW_S)
        waited = [(w - w0) / window for tid, w0 in self.waits.items() if (w := thread_wait_seconds(tid)) is not None]
        if waited:
            return min(max(waited), 1.0), foreign_cores
        if foreign_cores is None:
            return None, None
        # No schedstat: what other processes used beyond the cores the config leaves free, per measuring core.
        spare = max(usable_cores() - measuring_threads, 0)
        return min(max(foreign_cores - spare, 0.0) / max(measuring_threads, 1), 1.0), foreign_cores


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
    """Open, run once (memory), warm up, then time up to `iterations` calls within `max_seconds`;
    with the runs' spread and what other work took from the measuring threads meanwhile."""
    prime(backend, model_file, config, inputs)
    release_freed_memory()
    existing = thread_ids()

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
    # The calling thread computes (alone at 1 thread); the threads the open started are its pool.
    measuring = {threading.get_native_id()} | (thread_ids() - existing)
    try:
        start = time.perf_counter()
        for _ in range(warmup):  # warm-up may use a fifth of the time budget
            if time.perf_counter() - start > max_seconds / 5:
                break
            session.run(inputs)
        times: list[float] = []
        watch = CpuWatch(measuring)
        start = time.perf_counter()
        while len(times) < max(iterations, 1) and (not times or time.perf_counter() - start < max_seconds):
            t0 = time.perf_counter()
            session.run(inputs)
            times.append(time.perf_counter() - t0)
        foreign_cpu, foreign_cores = watch.finish(config.threads)
        memory = max(grown, session.memory_bytes)
        session_bytes = session.memory_bytes
    finally:
        session.close()
    p10, p50, p90, p99 = (float(v) * 1000 for v in np.percentile(times, [10, 50, 90, 99]))
    mean = float(np.mean(times)) * 1000
    spread = float(np.std(times)) * 1000 / mean if mean > 0 else 0.0
    p90_p10 = p90 / p10 if p10 > 0 else 1.0
    extra = {"samples": len(times), "open_and_first_run_ms": round(first_s * 1000, 3), "rss_delta_bytes": grown,
             "session_bytes": session_bytes, "spread": round(spread, 3), "p90_p10": round(p90_p10, 3),
             "foreign_cpu": _rounded(foreign_cpu), "foreign_cores": _rounded(foreign_cores)}
    return Measurement(p50, p99, mean, memory, extra, spread, p90_p10, foreign_cpu, foreign_cores, len(times))


def _rounded(value: float | None) -> float | None:
    return None if value is None else round(value, 3)


def measure_trusted(run: Callable[[], Measurement], attempts: int = 3, remeasure_seconds: float = 6.0,
                    pause_s: float = 0.0) -> tuple[Measurement, int]:
    """`run()` once, and again while what it gave was disturbed: at most `attempts` runs, and no
    new one once `remeasure_seconds` have gone on re-measuring. Returns the kept measurement (the
    fastest median among the least disturbed: undisturbed ones if any; interference only ever
    slows a run down) and how many runs were made. `pause_s` between runs lets a burst pass."""
    got = [run()]
    started = time.perf_counter()
    while got[-1].disturbed and len(got) < attempts and time.perf_counter() - started < remeasure_seconds:
        log.info("measurement disturbed (%s): measuring again (%d/%d)", got[-1].disturbance, len(got) + 1, attempts)
        if pause_s > 0:
            time.sleep(pause_s)
        got.append(run())
    return min(got, key=lambda m: (m.disturbed, m.p50_ms)), len(got)


def profile_model(name: str, model_file: Path, config: ModelConfig, store: ProfileStore, cores: int,
                  inputs_for_batch: Callable[[int], Inputs] | None = None, iterations: int = 50, warmup: int = 5,
                  progress: Callable[[Step], None] | None = None, *, backends: Sequence[str] | None = None,
                  max_seconds: float = 3.0, retry_failed: bool = False,
                  variants: Mapping[str, tuple[Path, float]] | None = None,
                  guard: Callable[[ExecutionConfig], AbstractContextManager[object]] | None = None,
                  attempts: int = 3, remeasure_seconds: float | None = None,
                  remeasure_low_confidence: bool = False,
                  select: Callable[[ExecutionConfig, int], bool] | None = None) -> list[Profile]:
    """Profiles of every candidate (config, batch) of a model, measuring only what the store lacks.

    The machine should be otherwise idle (solo measurement). `variants` maps a variant name to
    (its file, its fidelity loss); default: the original as "fp32", loss 0. Failed configs are
    recorded with their reason and skipped (again with `retry_failed`). `guard(config)` is held
    around each measurement: a server profiling in the background holds the config's cores from
    its token pool, so the measurement neither oversubscribes nor is disturbed by the requests it
    serves meanwhile.

    A disturbed measurement (see `Measurement.disturbance`) is taken again, up to `attempts` runs
    per figure and while less than `remeasure_seconds` (default: (attempts - 1) x `max_seconds`)
    have gone on re-measuring it; the kept figure's `extra` records `spread`, `foreign_cpu`,
    `attempts` and `confidence` ("low" when every attempt was disturbed). With
    `remeasure_low_confidence`, stored figures of low confidence are measured again rather than
    returned (the faster of the old and the new is kept while neither is confident). `select`:
    measure only the (config, batch) pairs it accepts (a server's first, short pass).
    """
    files = dict(variants) if variants else {"fp32": (Path(model_file), 0.0)}
    hashes = {variant: file_hash(path) for variant, (path, _) in files.items()}
    make_inputs = inputs_for_batch or inputs_for(name, config, hashes.get("fp32") or next(iter(hashes.values())))
    machine = machine_id()
    plan = [(c, b) for c in candidate_configs(config, cores, backends, tuple(files)) for b in candidate_batches(config)
            if select is None or select(c, b)]
    batch_inputs: dict[int, Inputs] = {}
    profiles: list[Profile] = []
    for index, (cfg, batch) in enumerate(plan):
        backend = get_backend(cfg.backend)
        version = backend.version()
        key = (hashes[cfg.variant], cfg, batch, version, machine)

        report = functools.partial(_report, progress, index, len(plan), name, cfg, batch)
        stored = store.get(*key)
        if stored is not None and (stored.confident or not remeasure_low_confidence):
            profiles.append(stored)
            report("stored", stored)
            continue
        failed = None if retry_failed or stored is not None else store.failure(*key)
        if failed is not None:
            report("failed before", reason=failed.reason)
            continue
        if batch not in batch_inputs:
            batch_inputs[batch] = make_inputs(batch)
        path, loss = files[cfg.variant]
        run = functools.partial(_guarded_measure, guard, backend, path, cfg, batch_inputs[batch], iterations, warmup,
                                max_seconds)
        budget = (max(attempts, 1) - 1) * max_seconds if remeasure_seconds is None else remeasure_seconds
        try:
            m, tries = measure_trusted(run, attempts, budget, pause_s=min(0.5, max_seconds / 10))
        except Exception as exc:  # any failure of one config is that config's, never the whole run's
            reason = exc.message if isinstance(exc, EdgeplexError) else f"{type(exc).__name__}: {exc}"
            log.info("%s: %s at batch %d cannot be measured (not a candidate): %s", name, cfg.label(), batch, reason)
            store.put_failure(Failure(name, key[0], cfg, batch, version, machine, reason, time.time()))
            report("failed", reason=reason)
            continue
        if stored is not None:  # a low-confidence figure re-measured: its earlier attempts count too
            tries += int(stored.extra.get("attempts", 1))
        trust = {"attempts": tries, "confidence": "low" if m.disturbed else "high"}
        if m.disturbed:
            log.info("%s: %s at batch %d was disturbed on each of %d attempt(s), stored with low confidence: %s",
                        name, cfg.label(), batch, tries, m.disturbance)
            trust["disturbance"] = m.disturbance
        profile = Profile(model=name, model_hash=key[0], config=cfg, batch=batch, p50_ms=m.p50_ms, p99_ms=m.p99_ms,
                          throughput=batch * 1000.0 / max(m.mean_ms, 1e-6), memory_bytes=m.memory_bytes, backend_version=version,
                          machine=machine, fidelity_loss=loss, measured_at=time.time(), extra=m.extra | trust)
        if stored is not None and m.disturbed and stored.p50_ms <= m.p50_ms:
            # Re-measured, still disturbed, and no faster than before: the old figure stays, its attempts counted.
            profile = replace(stored, extra=stored.extra | {"attempts": tries})
        store.put(profile)
        profiles.append(profile)
        report("measured", profile)
    return profiles


def _guarded_measure(guard: Callable[[ExecutionConfig], AbstractContextManager[object]] | None, backend: Backend,
                     model_file: Path, config: ExecutionConfig, inputs: Inputs, iterations: int, warmup: int,
                     max_seconds: float) -> Measurement:
    """One measurement, holding `guard(config)` (released between attempts, so serving goes on)."""
    with guard(config) if guard is not None else nullcontext():
        return measure(backend, model_file, config, inputs, iterations, warmup, max_seconds)


def _report(progress: Callable[[Step], None] | None, index: int, total: int, model: str, config: ExecutionConfig,
            batch: int, outcome: Outcome, profile: Profile | None = None, reason: str = "") -> None:
    if progress is not None:
        progress(Step(index, total, model, config, batch, outcome, profile, reason))


def current_backend_versions(backends: Sequence[str] | None = None) -> dict[str, str]:
    """backend -> installed version, to read only current profiles with `ProfileStore.for_model`."""
    return {name: get_backend(name).version() for name in (available_backends() if backends is None else backends)}
