"""Protocol-level documents shared by the HTTP and gRPC adapters: server metadata, Triton's
model configuration and the repository index, each built once from the engine's state."""

from __future__ import annotations

import logging
import weakref
from collections.abc import Sequence
from typing import Any

from .. import __version__
from ..config import ModelConfig
from ..engine import Engine, InstanceGroup
from ..errors import ModelNotFound, ModelNotReady

SERVER_NAME = "edgeplex"
EXTENSIONS = [
    "binary_tensor_data",
    "model_repository",
    "model_configuration",
    "statistics",
]


REPOSITORY_API_OFF = "the repository load/unload API is off on this server (start it with --enable-repository-api)"
SHUTTING_DOWN = "the server is shutting down"

log = logging.getLogger(__name__)
# What readiness last reported per engine, so a probe every second logs only changes, and the
# HTTP and gRPC adapters of one engine log them once between them.
_last_reported: weakref.WeakKeyDictionary[Engine, dict[str, str]] = weakref.WeakKeyDictionary()


def server_metadata() -> dict[str, Any]:
    return {"name": SERVER_NAME, "version": __version__, "extensions": list(EXTENSIONS)}


def server_readiness(engine: Engine, strict: bool) -> dict[str, Any]:
    """The server readiness document both adapters answer: `{"ready": true}`, or `{"ready": false}`
    with why: `reason` when shutting down, and under `strict` (Triton's `--strict-readiness`)
    `models`, every model asked to load that cannot take requests, with its reason."""
    if not engine.ready():
        return {"ready": False, "reason": SHUTTING_DOWN}
    missing = engine.not_ready() if strict else {}
    _log_change(engine, missing)
    if missing:
        return {"ready": False, "models": missing}
    return {"ready": True}


def _log_change(engine: Engine, missing: dict[str, str]) -> None:
    """Log the models strict readiness waits on when they change (not at every probe)."""
    if _last_reported.get(engine, {}) == missing:
        return
    _last_reported[engine] = dict(missing)
    if missing:
        names = "; ".join(f"{name}: {reason}" for name, reason in missing.items())
        log.warning("server not ready (strict readiness) until these models are: %s", names)
    else:
        log.info("server ready: every model asked to load is ready")


def model_readiness(engine: Engine, name: str, version: str = "") -> dict[str, Any]:
    """`{"name", "ready"}` of one model (and `reason` when not ready); ModelNotFound for an
    unknown model or version, which the adapters answer as 404 / NOT_FOUND."""
    try:
        engine.check_servable(name, version)
    except ModelNotReady as exc:
        return {"name": name, "ready": False, "reason": exc.message}
    return {"name": name, "ready": True}


def model_config_document(engine: Engine, name: str, version: str = "") -> dict[str, Any]:
    """What `/v2/models/{m}/config` and gRPC `ModelConfig` answer: the model's config as it RUNS
    (the backend, threads, batching and one instance group per execution config of its
    placement), with the operator's config and the fields that bind the allocator beside it
    (`edgeplex`, JSON only; gRPC clients read the same in `parameters`)."""
    running = engine.config(name, version)
    try:
        view = engine.model(name)
    except ModelNotFound:  # never loaded: the config is what its file says
        view = None
    groups = view.placement.groups if view is not None and view.servable and view.placement is not None else []
    document = model_config_dict(running, groups)
    placement = " + ".join(f"{g.count}x {g.config.backend}/{g.config.processor}/{g.config.variant}/t{g.config.threads}"
                           + (f"/batch {g.config.max_batch}" if g.config.max_batch > 0 else "") for g in groups)
    bound = view.binding.describe() if view is not None else []
    document["parameters"]["edgeplex.placement"] = {"string_value": placement or "none"}
    document["parameters"]["edgeplex.bound"] = {"string_value": ", ".join(bound)}
    document["edgeplex"] = {"placement": placement, "bound": bound,
                            "operator_config": model_config_dict(engine.operator_config(name, version))}
    return document


def model_config_dict(config: ModelConfig, groups: Sequence[InstanceGroup] = ()) -> dict[str, Any]:
    """Triton's `ModelConfig` as JSON (numbers as numbers, as Triton writes them), which
    perf_analyzer and tritonclient read; the gRPC adapter parses the same dict into the proto.
    `groups`: the placement's instance groups (default: the config's own one)."""

    def tensor(spec: Any) -> dict[str, Any]:
        return {"name": spec.name, "data_type": f"TYPE_{'STRING' if spec.datatype == 'BYTES' else spec.datatype}", "dims": list(spec.dims)}

    instance_groups = ([_instance_group(f"{config.name}_{i}", g.config.processor, g.count) for i, g in enumerate(groups)]
                       if groups else [_instance_group(config.name, config.processor, config.instance_count)])
    document: dict[str, Any] = {
        "name": config.name,
        "platform": f"{config.backend}_onnx",
        "backend": config.backend,
        "max_batch_size": config.max_batch_size,
        "input": [tensor(s) for s in config.inputs],
        "output": [tensor(s) for s in config.outputs],
        "instance_group": instance_groups,
        "default_model_filename": config.default_model_filename,
        "parameters": {
            **{key: {"string_value": value} for key, value in config.parameters.items()},
            "threads": {"string_value": str(config.threads)},
            **({"slo_ms": {"string_value": str(config.slo_ms)}} if config.slo_ms is not None else {}),
        },
    }
    if config.dynamic_batching is not None:
        document["dynamic_batching"] = {
            "preferred_batch_size": list(config.dynamic_batching.preferred_batch_size),
            "max_queue_delay_microseconds": config.dynamic_batching.max_queue_delay_microseconds,
        }
    return document


def _instance_group(name: str, processor: str, count: int) -> dict[str, Any]:
    """Triton's instance group: KIND_CPU, or KIND_GPU on `cuda:N`."""
    kind, _, index = processor.partition(":")
    if kind == "cuda":
        return {"name": name, "count": count, "kind": "KIND_GPU", "gpus": [int(index or 0)]}
    return {"name": name, "count": count, "kind": "KIND_CPU"}


def repository_index(engine: Engine, ready_only: bool = False) -> list[dict[str, Any]]:
    """Triton's repository index: every model with its state and, when not ready, the reason."""
    entries: list[dict[str, Any]] = []
    for state in engine.models():
        if ready_only and state.state != "READY":
            continue
        versions = list(state.versions) or [""]
        for version in versions:
            entries.append({"name": state.name, "version": version, "state": state.state, "reason": state.reason})
    return entries
