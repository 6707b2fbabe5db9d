"""A loaded model version: its sessions (instances), its queue, its executor threads, its stats.

One executor thread per instance: the backends release the GIL while they compute, so
instances of different models (and of one model) run truly in parallel, each holding its
processor's tokens only while it computes.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass

import numpy as np

from ..backends import ExecutionConfig, Session
from ..config import ModelConfig
from ..errors import DeadlineExceeded, EdgeplexError, InvalidInput, ModelEvicted, Overloaded, ServerShuttingDown
from ..tensors import numpy_dtype, shape_matches, v2_datatype
from .batcher import BatchPolicy, collate, signature, split
from .pools import Flow
from .processors import CPU, Processors
from .request import InferRequest, InferResponse
from .scheduler import DISCIPLINES, Discipline, Job, RequestQueue
from .stats import ConfigCounters, ModelStats
from .thread_names import name_current_thread

log = logging.getLogger(__name__)


@dataclass
class Instance:
    """One open session of the model under one execution config."""

    session: Session
    config: ExecutionConfig
    memory_bytes: int


DEFER_MIN_S, DEFER_MAX_S = 0.0005, 0.05  # how long a slower instance leaves work to a faster one
SOONER = 0.8  # another instance must finish a job within this share of this one's run time


class _Worker:
    """An instance and the executor thread that serves it; retiring it lets the thread finish
    its current job, leave, and close the session."""

    def __init__(self, runner: ModelRunner, instance: Instance, name: str) -> None:
        self.instance = instance
        self.retired = threading.Event()
        self.thread = threading.Thread(target=runner._serve, args=(self,), name=name, daemon=True)
        self.run_ns = 0.0  # smoothed time one execution takes on this instance (0: not seen yet)
        self.busy_since_ns = 0  # when its current job started (0: idle)

    def learn(self, run_ns: int) -> None:
        self.run_ns = float(run_ns) if not self.run_ns else 0.8 * self.run_ns + 0.2 * run_ns

    def done_by(self, now_ns: int) -> float:
        """When it would finish a job handed to it now: after its current one, then one run. A
        current job already past its usual time (waiting for cores, a stalled device) is taken
        to need at least as long again as it has run."""
        if not self.busy_since_ns:
            return now_ns + self.run_ns
        elapsed = now_ns - self.busy_since_ns
        return now_ns + max(self.run_ns - elapsed, elapsed) + self.run_ns


class ModelRunner:
    """Serves one model version: validates, queues and executes its requests.

    The queue and the statistics outlive the instances: `replace_instances` swaps the sessions
    under a running model (a placement change) with no request lost or answered twice."""

    def __init__(
        self, config: ModelConfig, version: str, instances: list[Instance], processors: Processors,
        stats: ModelStats | None = None, order: Discipline | None = None,
    ) -> None:
        self.config = config
        self.version = version
        self.processors = processors
        self.stats = stats or ModelStats(config.name, version)
        self.order = order or DISCIPLINES["priority"]
        # Its claim on each processor's pool (fair sharing is per processor, as the pools are).
        self._flows: dict[str, Flow] = {}
        self._expected_run_ns = 0  # what one execution takes, with margin (for deadline checks)
        self._run_mean_ns = self._run_dev_ns = 0.0
        # Reserved cores are the CPU's: an accelerator's executions are not preempted by host work.
        self._cpu = processors.pool(CPU)
        self.reservation = (self._cpu.reserve(f"{config.name}/{version}", config.priority, config.reserved_cores)
                            if config.reserved_cores else None)
        self._output_names = [spec.name for spec in config.outputs]
        self.queue = RequestQueue(config.max_queue_size, self.order)
        self._lock = threading.Lock()
        self._workers: list[_Worker] = []
        self._serial = 0
        self._in_flight = 0
        self._evicted = False
        self._by_config: dict[ExecutionConfig, ConfigCounters] = {}
        self.submitted = 0  # requests admitted to the queue, ever (the monitor's arrivals)
        self.replace_instances(instances)

    @property
    def instances(self) -> list[Instance]:
        with self._lock:
            return [worker.instance for worker in self._workers]

    def config_counters(self) -> dict[ExecutionConfig, ConfigCounters]:
        """Per execution config, what its instances computed since this runner started."""
        with self._lock:
            return dict(self._by_config)

    @property
    def memory_bytes(self) -> int:
        return sum(inst.memory_bytes for inst in self.instances)

    @property
    def busy(self) -> bool:
        """Requests queued or computing now (an eviction must wait for an idle model)."""
        return self._in_flight > 0

    def replace_instances(self, instances: list[Instance]) -> None:
        """Serve from `instances` from now on. Those already serving keep their thread; new ones
        start before the others retire, so the queue is never without a server; a retired
        instance's session closes once its thread has finished its current job."""
        if not instances:
            raise ValueError(f"model '{self.config.name}': a runner needs at least one instance")
        with self._lock:
            serving = {id(worker.instance): worker for worker in self._workers}
            workers = []
            for instance in instances:
                worker = serving.pop(id(instance), None)
                if worker is None:
                    self._serial += 1
                    worker = _Worker(self, instance, f"edgeplex-{self.config.name}-{self.version}-{self._serial}")
                    worker.thread.start()
                workers.append(worker)
            self._workers = workers
        for worker in serving.values():
            worker.retired.set()
        self.queue.wake_all()

    def submit(self, request: InferRequest) -> Future[InferResponse]:
        """Validate and enqueue; the future resolves on an executor thread. A request without a
        timeout of its own gets the model's `slo_ms` as its deadline."""
        validate_inputs(self.config, request)
        priority = request.priority or self.config.priority
        timeout_us = request.timeout_us or (int(self.config.slo_ms * 1000) if self.config.slo_ms else None)
        deadline = time.monotonic_ns() + timeout_us * 1000 if timeout_us else None
        batched = self.config.max_batch_size > 0
        if self.reservation is not None:
            self.reservation.touch()
        with self._lock:
            self._in_flight += 1
            self.submitted += 1
        try:
            future = self.queue.put(request, priority, deadline, _batch_size(self.config, request),
                                    signature(request.inputs, batched))
        except BaseException as exc:
            if isinstance(exc, Overloaded):
                self.stats.record_rejection()
            self._done(None)
            if isinstance(exc, ServerShuttingDown) and self._evicted:  # it raced an eviction: reload, retry
                raise ModelEvicted(f"model '{self.config.name}' was evicted for memory while the request arrived") from exc
            raise
        future.add_done_callback(self._done)
        return future

    def close(self, timeout: float | None = None, evicted: bool = False) -> None:
        """Finish what is queued, then stop the threads and release the sessions. `evicted`:
        a request that races the close is told so, and its caller loads the model again."""
        self._evicted = evicted
        self.queue.close()
        with self._lock:
            workers = list(self._workers)
        for worker in workers:
            worker.thread.join(timeout)
        if self.reservation is not None:
            self._cpu.unreserve(self.reservation)

    def _done(self, _: object) -> None:
        with self._lock:
            self._in_flight -= 1

    def _serve(self, worker: _Worker) -> None:
        instance = worker.instance
        name_current_thread(worker.thread.name.removeprefix("edgeplex-"))  # e.g. ppocr_cls-1-2 in top -H
        policy = BatchPolicy.of(self.config, instance.config.max_batch)
        if self.order.fair_share:  # priority scheduling: the OS favours higher levels too
            lower_os_priority(self.config.priority)
        try:
            while jobs := self.queue.take(policy, worker.retired, lambda queued: self._defer(worker, queued)):
                worker.busy_since_ns = time.monotonic_ns()
                try:
                    ran_ns = self._execute(instance, jobs, policy)
                    if ran_ns is not None:  # only a run that computed: a failing one must not look fast
                        worker.learn(ran_ns)
                except Exception as exc:  # a backend bug must not kill the executor thread
                    log.exception("model %s: unexpected failure", self.config.name)
                    self._fail(jobs, exc)
                finally:
                    worker.busy_since_ns = 0
        finally:
            instance.session.close()

    def _defer(self, worker: _Worker, queued: int) -> tuple[float, bool]:
        """Earliest expected completion across unequal instances (mixed configs, a trial): leave
        the queued work to the instances that would finish it sooner than this one — when there
        are at least as many of them as jobs queued — and look again in a while. Instances of one
        config never defer to each other (their timings differ by noise only), nor does one not
        yet timed. Returns (seconds to wait, whether one of the sooner instances is idle and
        must be woken to take the work)."""
        if not worker.run_ns:
            return 0.0, False
        with self._lock:
            # Instances of the same config are interchangeable: only another config's may be sooner.
            others = [w for w in self._workers if w.instance.config != worker.instance.config and not w.retired.is_set()]
        now = time.monotonic_ns()
        mine = now + SOONER * worker.run_ns  # clearly sooner: equal instances' noise never defers
        sooner = [w for w in others if w.run_ns and w.done_by(now) < mine]  # only instances seen to compute
        if len(sooner) < queued:
            return 0.0, False
        first = min(w.done_by(now) for w in sooner)
        idle = any(not w.busy_since_ns for w in sooner)
        return min(max((first - now) / 1e9, DEFER_MIN_S), DEFER_MAX_S), idle

    def _execute(self, instance: Instance, jobs: list[Job], policy: BatchPolicy) -> int | None:
        """Run one batch: drop what expired, hold the cores, take the best batch queued now,
        drop what can no longer finish in time, run, split, answer each caller. Returns how long
        the run took (collate + compute), None when nothing computed."""
        jobs = self._expire(self._claim(jobs))
        if not jobs:
            return None
        priority = self.order.core_priority(min(job.priority for job in jobs))
        processor = self.processors.get(instance.config.processor)
        flow = self._flow(processor.name) if self.order.fair_share else None
        with self.processors.pool(processor.name).hold(processor.tokens(instance.config), priority, flow):
            # Deadlines may have passed while waiting for cores, or a run no longer fits before them.
            jobs = self._expire(self._claim(self.queue.retake(jobs, policy)), self._expected_run_ns)
            if not jobs:
                return None
            started = time.monotonic_ns()
            try:
                inputs = collate([job.request.inputs for job in jobs])
                collated = time.monotonic_ns()
                outputs = instance.session.run(inputs, self._wanted(jobs))
            except EdgeplexError as exc:
                self._fail(jobs, exc)
                return None
        computed = time.monotonic_ns()
        rows = [job.rows for job in jobs]
        try:
            parts = split(outputs, rows)
        except EdgeplexError as exc:
            self._fail(jobs, exc)
            return None
        done = time.monotonic_ns()
        input_ns, infer_ns, output_ns = collated - started, computed - collated, done - computed
        self.stats.record_execution(sum(rows), input_ns, infer_ns, output_ns)
        self._learn_run_time(computed - started)
        with self._lock:
            counters = self._by_config.get(instance.config, ConfigCounters())
            self._by_config[instance.config] = counters.plus(sum(rows), infer_ns)
        for job, part in zip(jobs, parts):
            request = job.request
            if job.deadline_ns < done:
                self.stats.record_deadline_miss()
            self.stats.record_success(started - job.enqueued_ns, input_ns, infer_ns, output_ns,
                                      done - job.enqueued_ns, job.rows)
            wanted = request.outputs or self._output_names
            response = InferResponse(request.model_name, self.version, {k: part[k] for k in wanted}, id=request.id)
            job.future.set_result(response)
        return computed - started

    @property
    def flows(self) -> dict[str, Flow]:
        """Its claims on the processors it has computed on under fair sharing, by processor."""
        return dict(self._flows)

    def _flow(self, processor: str) -> Flow:
        flow = self._flows.get(processor)
        if flow is None:
            flow = self._flows.setdefault(processor, Flow(f"{self.config.name}/{self.version}", self.config.share))
        return flow

    def _wanted(self, jobs: list[Job]) -> list[str]:
        """The outputs a batch must compute: everything any of its callers asked for."""
        asked = {name for job in jobs for name in (job.request.outputs or self._output_names)}
        return [name for name in self._output_names if name in asked]

    def _learn_run_time(self, run_ns: int) -> None:
        """Smoothed run time and its mean deviation (as TCP estimates round trips): the bound a
        run stays within (mean + 2 deviations) is what a deadline must leave room for."""
        if not self._run_mean_ns:
            self._run_mean_ns, self._run_dev_ns = float(run_ns), run_ns / 2
        else:
            self._run_dev_ns = 0.75 * self._run_dev_ns + 0.25 * abs(run_ns - self._run_mean_ns)
            self._run_mean_ns = 0.875 * self._run_mean_ns + 0.125 * run_ns
        self._expected_run_ns = int(self._run_mean_ns + 2 * self._run_dev_ns)

    def _claim(self, jobs: list[Job]) -> list[Job]:
        """Mark newly taken jobs running; drop those whose caller went away while queued."""
        return [job for job in jobs if job.future.running() or job.future.set_running_or_notify_cancel()]

    def _expire(self, jobs: list[Job], run_ns: int = 0) -> list[Job]:
        """The jobs still to run: with `timeout_action: reject`, those past their deadline — or,
        about to run, whose deadline is closer than a run takes (`run_ns`, measured) — are
        answered with DeadlineExceeded here, without computing."""
        if self.config.timeout_action != "reject":
            return jobs
        now = time.monotonic_ns()
        live = []
        for job in jobs:
            if job.deadline_ns >= now + run_ns:
                live.append(job)
                continue
            self.stats.record_deadline_miss()
            waited = f"request waited {(now - job.enqueued_ns) / 1e6:.1f} ms"
            why = (f"{waited}, past its timeout" if job.deadline_ns < now else
                   f"{waited}; {(job.deadline_ns - now) / 1e6:.1f} ms before its timeout, less than a run takes "
                   f"(about {run_ns / 1e6:.1f} ms)")
            self._fail([job], DeadlineExceeded(f"model '{job.request.model_name}': {why}; not computed"))
        return live

    def _fail(self, jobs: list[Job], exc: BaseException) -> None:
        now = time.monotonic_ns()
        for job in jobs:
            if not job.future.done():
                self.stats.record_failure(now - job.enqueued_ns)
                job.future.set_exception(exc)


NICE_PER_LEVEL = 2


def lower_os_priority(level: int) -> None:
    """Give the calling executor thread a niceness that grows with its priority level (1: none).

    The token pool decides which computations run; but the server's transport threads and
    other processes share the same cores, and the OS scheduler would otherwise treat a
    background model's computing thread like an urgent one's. Raising niceness needs no
    privilege; a thread keeps it for its life."""
    if level <= 1:
        return
    try:
        inherited = os.getpriority(os.PRIO_PROCESS, 0)  # the calling thread's, on Linux
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), min(19, inherited + NICE_PER_LEVEL * (level - 1)))
    except (AttributeError, OSError):  # not Linux
        pass


def _batch_size(config: ModelConfig, request: InferRequest) -> int:
    if config.max_batch_size == 0 or not request.inputs:
        return 1
    return int(next(iter(request.inputs.values())).shape[0])


def validate_inputs(config: ModelConfig, request: InferRequest) -> None:
    """Check names, datatypes, shapes and the batch size against the config; InvalidInput names the fault."""
    name = config.name
    expected = {spec.name for spec in config.inputs}
    unknown = [key for key in request.inputs if key not in expected]
    if unknown:
        raise InvalidInput(f"model '{name}' has no input '{unknown[0]}' (inputs: {', '.join(sorted(expected))})")
    missing = [spec.name for spec in config.inputs if spec.name not in request.inputs]
    if missing:
        raise InvalidInput(f"model '{name}': input '{missing[0]}' is missing")
    batch: int | None = None
    for spec in config.inputs:
        array = request.inputs[spec.name]
        got = v2_datatype(array.dtype)
        if got != spec.datatype:
            raise InvalidInput(f"model '{name}': input '{spec.name}' must be {spec.datatype}, got {got}")
        shape = list(array.shape)
        if config.max_batch_size > 0:
            if not shape or not 1 <= shape[0] <= config.max_batch_size:
                raise InvalidInput(
                    f"model '{name}': input '{spec.name}' shape {shape}: batch size must be 1..{config.max_batch_size}"
                )
            if batch is not None and shape[0] != batch:
                raise InvalidInput(f"model '{name}': inputs disagree on the batch size ({batch} vs {shape[0]})")
            batch = shape[0]
            shape = shape[1:]
        if not shape_matches(shape, spec.dims):
            raise InvalidInput(
                f"model '{name}': input '{spec.name}' has shape {list(array.shape)}, expected "
                f"{config.full_dims(spec)} (-1 = any size)"
            )
        if spec.datatype != "BYTES" and array.dtype != numpy_dtype(spec.datatype):
            raise InvalidInput(f"model '{name}': input '{spec.name}' dtype {array.dtype} is not {spec.datatype}")
    if request.outputs is not None:
        known = {spec.name for spec in config.outputs}
        for out in request.outputs:
            if out not in known:
                raise InvalidInput(f"model '{name}' has no output '{out}' (outputs: {', '.join(sorted(known))})")


def warmup_inputs(config: ModelConfig) -> dict[str, np.ndarray]:
    """Inputs for the first run at load, so a session's one-off costs are paid before requests.

    Zeros of a plausible shape: batch 1, unknown dims 32. A general rule keeps them valid for
    models that refuse zeros: an integer input of at most one element named like a sample rate
    (`sr`, `sample_rate`, ...) gets 16000, and such an audio model's [batch, samples] inputs get
    512 samples (32 ms at 16 kHz: its windows are longer than 32). A config may state what a
    model needs in `parameters`: `warmup_dims.<input>` (its full dims, e.g. "1,576") and
    `warmup_value.<input>` (the number it is filled with); a bad one is a ConfigError."""
    from ..config import TensorSpec
    from ..errors import ConfigError

    def is_rate(spec: TensorSpec) -> bool:
        dims = config.full_dims(spec)
        return (spec.datatype.startswith(("INT", "UINT")) and spec.name.lower() in _RATE_NAMES
                and all(d in (1, -1) for d in dims) and len(dims) <= (2 if config.max_batch_size > 0 else 1))

    audio = any(is_rate(spec) for spec in config.inputs)
    inputs: dict[str, np.ndarray] = {}
    for spec in config.inputs:
        full = config.full_dims(spec)
        dims = [32 if d == -1 else d for d in full]
        if config.max_batch_size > 0:
            dims[0] = 1
        if audio and spec.datatype.startswith("FP") and len(full) == 2 and full[-1] == -1:
            dims[-1] = 512  # [batch, samples] of audio
        fill = 16000.0 if is_rate(spec) else 0.0
        for key, text in ((f"warmup_dims.{spec.name}", config.parameters.get(f"warmup_dims.{spec.name}")),
                          (f"warmup_value.{spec.name}", config.parameters.get(f"warmup_value.{spec.name}"))):
            if text is None:
                continue
            try:
                if key.startswith("warmup_dims"):
                    dims = [int(d) for d in text.replace("x", ",").split(",")]
                    if any(d < 1 for d in dims) or not shape_matches(dims, full):
                        raise ValueError(f"must be positive dims that fit {full}")
                else:
                    fill = float(text)
            except ValueError as exc:
                raise ConfigError(f"model '{config.name}': parameter {key} = {text!r} is not usable: {exc}") from None
        if spec.datatype == "BYTES":
            inputs[spec.name] = np.full(dims, b"", dtype=object)
        else:
            inputs[spec.name] = np.full(dims, fill).astype(numpy_dtype(spec.datatype))
    return inputs


# Names an audio model's sample-rate input goes by (warm-up fills it with 16000, not 0).
_RATE_NAMES = frozenset({"sr", "fs", "rate", "sample_rate", "sampling_rate", "samplerate"})
