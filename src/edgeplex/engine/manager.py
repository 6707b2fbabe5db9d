"""ModelManager: loads and unloads models from the repository and keeps their state.

A model that fails to load is kept as UNAVAILABLE with its reason, visible in the repository
index; it never stops the others. Loads are serialised so that each model's resident-set
delta (its measured memory) is its own. A reload opens the new sessions before the old ones
drain, so no request is lost to it.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field
from pathlib import Path

from ..backends import Backend, ExecutionConfig, get_backend
from ..backends.base import measure_rss
from ..config import ModelConfig
from ..errors import BackendError, EdgeplexError, ModelNotFound, ModelNotReady
from ..repository import ModelSource, Repository
from .executor import TokenPool
from .runner import Instance, ModelRunner, warmup_inputs

log = logging.getLogger(__name__)

READY, UNAVAILABLE, LOADING, UNLOADING = "READY", "UNAVAILABLE", "LOADING", "UNLOADING"


@dataclass
class ModelState:
    """What the repository index reports for a model."""

    name: str
    state: str = UNAVAILABLE
    reason: str = ""
    config: ModelConfig | None = None
    runners: dict[str, ModelRunner] = field(default_factory=dict)

    @property
    def latest(self) -> str:
        return max(self.runners, key=int) if self.runners else ""


class ModelManager:
    """Owns every loaded model version; thread-safe."""

    def __init__(self, repository: Repository, pools: dict[str, TokenPool]) -> None:
        self.repository = repository
        self.pools = pools
        self._states: dict[str, ModelState] = {}
        self._lock = threading.Lock()
        self._load_lock = threading.Lock()

    def states(self) -> list[ModelState]:
        """Every model known: loaded, failed, or present in the repository but not loaded."""
        with self._lock:
            known = dict(self._states)
        try:
            for name in self.repository.scan():
                known.setdefault(name, ModelState(name, state=UNAVAILABLE, reason="unloaded"))
        except EdgeplexError as exc:
            log.warning("cannot scan the repository: %s", exc)
        return [known[name] for name in sorted(known)]

    def state(self, name: str) -> ModelState:
        """The state of a model this manager has tried to load; ModelNotFound otherwise."""
        with self._lock:
            state = self._states.get(name)
        if state is None:
            raise ModelNotFound(f"model '{name}' is not loaded")
        return state

    def runner(self, name: str, version: str = "") -> ModelRunner:
        """The runner serving `name` at `version` ("" = latest); 404 / 503 with the reason."""
        with self._lock:
            state = self._states.get(name)
        if state is None:
            try:
                self.repository.source(name)
            except ModelNotFound:
                raise ModelNotFound(f"model '{name}' is not in the repository") from None
            raise ModelNotReady(f"model '{name}' is not loaded")
        if state.state != READY:
            raise ModelNotReady(f"model '{name}' is not ready ({state.state.lower()}: {state.reason or 'no reason'})")
        runner = state.runners.get(version or state.latest)
        if runner is None:
            raise ModelNotFound(f"model '{name}' has no version '{version}' (versions: {', '.join(sorted(state.runners))})")
        return runner

    def config(self, name: str) -> ModelConfig:
        """The model's complete config, loaded or not (read from the repository if needed)."""
        with self._lock:
            state = self._states.get(name)
        if state is not None and state.config is not None:
            return state.config
        return self.repository.load_config(self.repository.source(name))

    def load(self, name: str) -> ModelState:
        """(Re)load a model; on failure it is UNAVAILABLE with the reason and the error is raised."""
        source = self.repository.source(name)
        with self._lock:
            state = self._states.setdefault(name, ModelState(name))
            old = dict(state.runners) if state.state == READY else {}
            if not old:
                state.state, state.reason = LOADING, ""
        try:
            config = self.repository.load_config(source)
            runners = self._open(source, config)
        except EdgeplexError as exc:
            with self._lock:
                if not old:
                    state.state, state.reason = UNAVAILABLE, exc.message
            log.error("model %s failed to load: %s", name, exc.message)
            raise
        with self._lock:
            state.config, state.runners = config, runners
            state.state, state.reason = READY, ""
        for runner in old.values():
            runner.close()
        log.info(
            "model %s ready: versions %s, %d instance(s), %.1f MB",
            name, ", ".join(sorted(runners)), config.instance_count,
            sum(r.memory_bytes for r in runners.values()) / 1e6,
        )
        return state

    def unload(self, name: str) -> None:
        """Stop taking requests for `name`, finish those queued, release its sessions."""
        with self._lock:
            state = self._states.get(name)
            if state is None or state.state != READY:
                if state is None:
                    self.repository.source(name)  # 404 if it does not even exist
                return
            state.state, state.reason = UNLOADING, ""
            runners = state.runners
        for runner in runners.values():
            runner.close()
        with self._lock:
            state.runners = {}
            state.state, state.reason = UNAVAILABLE, "unloaded"
        log.info("model %s unloaded", name)

    def close(self) -> None:
        for state in self.states():
            if state.state == READY:
                self.unload(state.name)

    def _open(self, source: ModelSource, config: ModelConfig) -> dict[str, ModelRunner]:
        backend = get_backend(config.backend)
        pool = self.pools["cpu"]
        exec_config = ExecutionConfig(
            backend=config.backend, processor="cpu", threads=config.threads, max_batch=config.max_batch_size
        )
        runners: dict[str, ModelRunner] = {}
        instances: list[Instance] = []
        try:
            for version, folder in sorted(source.versions.items()):
                path = folder / config.default_model_filename
                if not path.is_file():
                    raise BackendError(f"model '{config.name}' version {version}: {path} is missing")
                instances = []
                for _ in range(config.instance_count):
                    instances.append(self._open_instance(backend, path, exec_config, config))
                runners[str(version)] = ModelRunner(config, str(version), instances, pool)
                instances = []
        except BaseException:
            # A later version or instance failed: release what was opened (threads, sessions).
            for inst in instances:
                inst.session.close()
            for runner in runners.values():
                runner.close()
            raise
        return runners

    def _open_instance(self, backend: Backend, path: Path, exec_config: ExecutionConfig, config: ModelConfig) -> Instance:
        """Open one session and run it once, measuring the resident memory both took."""
        with self._load_lock:
            session, opened = measure_rss(lambda: backend.open(path, exec_config))
            try:
                _, warmed = measure_rss(lambda: session.run(warmup_inputs(config)))
            except EdgeplexError as exc:
                log.info("model %s: warm-up run skipped (%s)", config.name, exc.message)
                warmed = 0
        # The backend's own figure is a floor where the resident-set delta misses reused pages.
        return Instance(session, exec_config, max(opened, session.memory_bytes) + warmed)
