"""Model and server configuration, with validation errors that name the file and the field.

A model's configuration is YAML (`config.yaml`), close in meaning to Triton's `config.pbtxt`,
which is read too. Dims exclude the batch dimension when `max_batch_size > 0`, as in Triton.

The server's settings (`Settings`, below) are one object for the server, the engine and the
allocator: each field is also read from an `EDGEPLEX_<FIELD>` environment variable, and its
default is stated once, here (MLServer's `settings.py`, in spirit).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from .errors import ConfigError
from .tensors import DEFAULT_MAX_ELEMENTS, V2_TO_NUMPY

KNOWN_BACKENDS = ("onnxruntime", "openvino")


class TensorSpec(BaseModel):
    """One input or output: its name, V2 datatype and dims (-1 = any size)."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1)
    datatype: str
    dims: list[int]

    @field_validator("datatype", mode="before")
    @classmethod
    def _datatype(cls, value: object) -> str:
        text = str(value).upper().removeprefix("TYPE_")
        if text == "STRING":
            text = "BYTES"
        if text not in V2_TO_NUMPY:
            raise ValueError(f"unknown datatype '{value}' (expected one of {', '.join(V2_TO_NUMPY)})")
        return text

    @field_validator("dims")
    @classmethod
    def _dims(cls, value: list[int]) -> list[int]:
        if any(d < -1 or d == 0 for d in value):
            raise ValueError(f"dims {value} must be positive or -1 (any size)")
        return value


class DynamicBatching(BaseModel):
    """Triton's `dynamic_batching`: queued requests are concatenated on the batch axis.

    The batcher sends what is queued at once unless a batch smaller than the largest preferred
    size (or than max_batch_size) can still grow within `max_queue_delay_microseconds` of its
    oldest request."""

    model_config = ConfigDict(extra="forbid")

    max_queue_delay_microseconds: int = Field(default=0, ge=0, le=10_000_000)
    preferred_batch_size: list[int] = Field(default_factory=list)

    @field_validator("preferred_batch_size")
    @classmethod
    def _preferred(cls, value: list[int]) -> list[int]:
        if any(size < 1 for size in value):
            raise ValueError(f"preferred batch sizes {value} must be >= 1")
        return sorted(set(value))


class ModelConfig(BaseModel):
    """What a model needs to be served. Unknown fields are refused, so typos surface."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, pattern=r"^[A-Za-z0-9_.\-]+$")
    backend: str = "onnxruntime"
    max_batch_size: int = Field(default=0, ge=0)
    inputs: list[TensorSpec] = Field(default_factory=list)
    outputs: list[TensorSpec] = Field(default_factory=list)
    instance_count: int = Field(default=1, ge=1, le=64)
    # Where its instances run when the config places it: `cpu`, or a processor the engine
    # discovered (`cuda:0`, `gpu:0`, ...; see GET /v2/edgeplex/processors).
    processor: str = Field(default="cpu", pattern=r"^[a-z][a-z0-9_\-]*(:[A-Za-z0-9_.\-]+)?$")
    # Intra-op threads per instance; 0 lets the backend pick (ONNX Runtime: one per core).
    threads: int = Field(default=1, ge=0, le=256)
    priority: int = Field(default=1, ge=1, le=16)
    # The deadline of a request that states no timeout of its own (and the allocator's p99 bound).
    slo_ms: float | None = Field(default=None, gt=0)
    # What happens to a request whose deadline passed before it runs: refused without computing
    # (Triton's REJECT) or computed anyway (DELAY), counted as a deadline miss either way.
    timeout_action: Literal["reject", "run"] = "reject"
    # Admission control: beyond this many queued requests, a new one is refused at once (429).
    max_queue_size: int = Field(default=1024, ge=1, le=1_000_000)
    # Weight of the model's share of the cores among models of the same priority level.
    share: float = Field(default=1.0, gt=0, le=1000)
    # Cores kept free of lower-priority work while the model is active (a request in the last
    # 2 s): its requests then never wait for a lower-priority computation to finish.
    reserved_cores: int = Field(default=0, ge=0, le=256)
    dynamic_batching: DynamicBatching | None = None
    # The most fidelity a variant may lose against fp32 (its metadata's `loss`: 1 - task
    # agreement) to be chosen; 0 keeps the model on its original file.
    max_fidelity_loss: float = Field(default=0.01, ge=0, le=1)
    pinned: bool = False
    default_model_filename: str = "model.onnx"
    parameters: dict[str, str] = Field(default_factory=dict)

    @field_validator("backend")
    @classmethod
    def _backend(cls, value: str) -> str:
        value = {"onnxruntime_onnx": "onnxruntime"}.get(value, value)
        if value not in KNOWN_BACKENDS:
            raise ValueError(f"unknown backend '{value}' (expected one of {', '.join(KNOWN_BACKENDS)})")
        return value

    def input(self, name: str) -> TensorSpec | None:
        return next((spec for spec in self.inputs if spec.name == name), None)

    def full_dims(self, spec: TensorSpec) -> list[int]:
        """Dims including the batch dimension, as clients see them in metadata."""
        return ([-1] if self.max_batch_size > 0 else []) + list(spec.dims)


def read_config_file(path: Path, model_name: str) -> dict[str, Any]:
    """The raw fields of a config.yaml or config.pbtxt (not yet validated)."""
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc}") from None
    if path.suffix == ".pbtxt":
        return _pbtxt_fields(text, path)
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: invalid YAML: {exc}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of fields, got {type(data).__name__}")
    return data


def validate_config(fields: dict[str, Any], source: Path | str) -> ModelConfig:
    """A ModelConfig from raw fields; ConfigError naming the source and each bad field."""
    try:
        return ModelConfig.model_validate(fields)
    except ValidationError as exc:
        problems = "; ".join(
            f"field '{'.'.join(str(p) for p in err['loc']) or '<root>'}': {err['msg']}" for err in exc.errors()
        )
        raise ConfigError(f"{source}: {problems}") from None


def _pbtxt_fields(text: str, path: Path) -> dict[str, Any]:
    """Read Triton's config.pbtxt with Triton's own schema, then map it to our fields."""
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2 as mc

    proto = mc.ModelConfig()
    try:
        text_format.Parse(text, proto)
    except text_format.ParseError as exc:
        raise ConfigError(f"{path}: invalid config.pbtxt: {exc}") from None

    def spec(t: Any) -> dict[str, Any]:
        return {"name": t.name, "datatype": mc.DataType.Name(t.data_type), "dims": list(t.dims)}

    fields: dict[str, Any] = {}
    if proto.name:
        fields["name"] = proto.name
    backend = proto.backend or proto.platform
    if backend:
        fields["backend"] = backend
    if proto.max_batch_size:
        fields["max_batch_size"] = proto.max_batch_size
    if proto.input:
        fields["inputs"] = [spec(t) for t in proto.input]
    if proto.output:
        fields["outputs"] = [spec(t) for t in proto.output]
    if proto.instance_group:
        fields["instance_count"] = sum(max(group.count, 1) for group in proto.instance_group)
        gpu = next((g for g in proto.instance_group if g.kind == mc.ModelInstanceGroup.KIND_GPU), None)
        if gpu is not None:  # Triton's GPU instances: ONNX Runtime's CUDA providers on that device
            fields["processor"] = f"cuda:{gpu.gpus[0] if gpu.gpus else 0}"
    if proto.default_model_filename:
        fields["default_model_filename"] = proto.default_model_filename
    if proto.HasField("dynamic_batching"):
        fields.update(_pbtxt_batching(proto.dynamic_batching, mc))
    params = {key: value.string_value for key, value in proto.parameters.items()}
    if params:
        fields["parameters"] = params
    return fields


def _pbtxt_batching(batching: Any, mc: Any) -> dict[str, Any]:
    """Triton's dynamic_batching block: the batcher, the default priority and queue policy."""
    fields: dict[str, Any] = {"dynamic_batching": {
        "max_queue_delay_microseconds": batching.max_queue_delay_microseconds,
        "preferred_batch_size": list(batching.preferred_batch_size),
    }}
    if batching.default_priority_level:
        fields["priority"] = batching.default_priority_level
    if batching.HasField("default_queue_policy"):
        policy = batching.default_queue_policy
        fields["timeout_action"] = "run" if policy.timeout_action == mc.ModelQueuePolicy.DELAY else "reject"
        if policy.max_queue_size:
            fields["max_queue_size"] = policy.max_queue_size
        if policy.default_timeout_microseconds:
            fields["slo_ms"] = policy.default_timeout_microseconds / 1000
    return fields


_UNITS = {"": 1, "B": 1, "K": 10**3, "KB": 10**3, "M": 10**6, "MB": 10**6, "G": 10**9, "GB": 10**9,
          "KIB": 2**10, "MIB": 2**20, "GIB": 2**30, "TB": 10**12, "TIB": 2**40}


def parse_bytes(text: str) -> int:
    """'1GiB', '512MB', '2e9' -> bytes; ValueError naming the text if it is not a size."""
    import re

    match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+(?:[eE][0-9]+)?)\s*([A-Za-z]*)\s*", text)
    unit = match.group(2).upper() if match else ""
    if match is None or unit not in _UNITS:
        raise ValueError(f"'{text}' is not a size (examples: 1GiB, 512MB, 800000000)")
    value = int(float(match.group(1)) * _UNITS[unit])
    if value <= 0:
        raise ValueError(f"'{text}' must be a positive size")
    return value


def default_cores() -> int:
    """The cores this process may use (respects CPU affinity and cgroup pinning)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


# -- server settings ------------------------------------------------------------------------------
# Every default of `edgeplex serve`, stated once. The server, the engine and the allocator read
# them from here (through `Settings`), and so do other modules that need the same limits.

Policy = Literal["config", "static", "balance", "pareto"]
Scheduling = Literal["priority", "fifo"]
LogLevel = Literal["debug", "info", "warning", "error"]
LogFormat = Literal["text", "json"]

ENV_PREFIX = "EDGEPLEX_"
DEFAULT_HOST = "127.0.0.1"
DEFAULT_HTTP_PORT = 8000
DEFAULT_GRPC_PORT = 8001
DEFAULT_MAX_BODY_BYTES = 64 * 1024 * 1024  # HTTP bodies (inflated too) and gRPC messages
DEFAULT_MAX_TENSOR_ELEMENTS = DEFAULT_MAX_ELEMENTS  # per input tensor, both protocols (the codec's own bound)
DEFAULT_DRAIN_SECONDS = 10.0
DEFAULT_POLICY: Policy = "pareto"
DEFAULT_SCHEDULING: Scheduling = "priority"
DEFAULT_REPLAN_SECONDS = 2.0
DEFAULT_MIN_GAIN = 0.10
DEFAULT_PROFILE_MISSING = True
DEFAULT_EXPLORE = True
# Python's default is 5000 us; measured on the 4-model mix (2 cores, balance, fixed job): 500 us
# gave +4.6% and +11.6% (two alternations) and 4-10% less server CPU per request.
DEFAULT_SWITCH_INTERVAL_US = 500
DEFAULT_PROFILE_SECONDS = 0.5
DEFAULT_LOG_LEVEL: LogLevel = "info"
DEFAULT_LOG_FORMAT: LogFormat = "text"
MIN_API_KEY_LENGTH = 8


def env_name(setting: str) -> str:
    """The environment variable a setting is read from: `http_port` -> `EDGEPLEX_HTTP_PORT`."""
    return ENV_PREFIX + setting.upper()


def _env_var(setting: str) -> str | None:
    """The variable (as spelled in the environment) that set `setting`, if one did."""
    wanted = env_name(setting)
    return next((key for key, value in os.environ.items() if key.upper() == wanted and value != ""), None)


def _settings_problems(exc: ValidationError, given: Mapping[str, Any]) -> str:
    """One line naming each bad setting, and the environment variable it came from, if any."""
    problems = []
    for err in exc.errors():
        loc = err["loc"]
        name = str(loc[0]) if loc else ""
        message = err["msg"].removeprefix("Value error, ")
        secret = name == "api_key"  # never echo a key
        if not name:
            problems.append(message)
        elif err["type"] == "extra_forbidden":
            problems.append(f"unknown setting '{name}'")
        elif name not in given and (var := _env_var(name)) is not None:
            value = "" if secret else f"={os.environ[var]!r}"
            problems.append(f"environment variable {var}{value} (setting '{name}'): {message}")
        else:
            value = "" if secret else f" = {err['input']!r}"
            problems.append(f"setting '{'.'.join(str(p) for p in loc)}'{value}: {message}")
    return "invalid settings: " + "; ".join(problems)


def _lower(value: object) -> object:
    return value.strip().lower() if isinstance(value, str) else value


class LogSettings(BaseSettings):
    """How edgeplex logs: the options every command takes (`--log-level`, `--log-format`)."""

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="forbid", env_ignore_empty=True)

    log_level: LogLevel = Field(DEFAULT_LOG_LEVEL, description="least severe level logged")
    log_format: LogFormat = Field(
        DEFAULT_LOG_FORMAT, description="plain lines, or one JSON object per line with each record's fields"
    )

    def __init__(self, **values: Any) -> None:
        """Keyword values win over `EDGEPLEX_*` variables, which win over the defaults; a bad
        value raises ConfigError naming the setting and, when it came from one, the variable."""
        try:
            super().__init__(**values)
        except ValidationError as exc:
            raise ConfigError(_settings_problems(exc, values)) from None

    @field_validator("log_level", "log_format", mode="before")
    @classmethod
    def _case(cls, value: object) -> object:
        return _lower(value)


class Settings(LogSettings):
    """Every setting of `edgeplex serve`: the server, the engine and the allocator.

    Each field is also read from `EDGEPLEX_<FIELD>` (e.g. `EDGEPLEX_HTTP_PORT=9000`); keyword
    values (the command line's flags) win over the environment, which wins over the defaults."""

    # -- what is served
    repository: Path | None = Field(None, description="model repository (default: the zoo, pulled if absent)")
    models: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="load only these models (default: all)",
    )
    # -- server
    host: str = Field(DEFAULT_HOST, min_length=1, description="address both protocols bind")
    http_port: int = Field(DEFAULT_HTTP_PORT, ge=0, le=65535, description="KServe V2 HTTP port (0: any free port)")
    grpc_port: int = Field(DEFAULT_GRPC_PORT, ge=0, le=65535, description="KServe V2 gRPC port (0: any free port)")
    max_body_bytes: int = Field(
        DEFAULT_MAX_BODY_BYTES, ge=1, description="largest HTTP body (after inflating gzip/deflate) and gRPC message"
    )
    max_tensor_elements: int = Field(
        DEFAULT_MAX_TENSOR_ELEMENTS, ge=1,
        description="largest input tensor, in elements (413 / RESOURCE_EXHAUSTED beyond)",
    )
    api_key: str | None = Field(
        None, repr=False,
        description="require this key on every request (Authorization: Bearer KEY or x-api-key); "
        f"at least {MIN_API_KEY_LENGTH} characters",
    )
    api_key_file: Path | None = Field(None, description="read the API key from this file's first line")
    enable_repository_api: bool = Field(False, description="allow model load/unload over HTTP and gRPC")
    drain_seconds: float = Field(
        DEFAULT_DRAIN_SECONDS, ge=0, description="on SIGINT/SIGTERM, how long in-flight requests may finish"
    )
    strict_readiness: bool = Field(
        True, description="ready only when every model that should load is ready (Triton's --strict-readiness); "
        "off: ready once the server is up",
    )
    exit_on_error: bool = Field(
        False, description="exit (status 2) when a model fails to load at start, instead of serving the others",
    )
    # -- engine
    cores: int = Field(default_factory=default_cores, ge=1, description="cores in the budget")
    memory_budget: int | None = Field(
        None, gt=0, description="bytes, or a size such as 1GiB; beyond it, least recently used models are evicted "
        "(default: no budget)",
    )
    scheduling: Scheduling = Field(
        DEFAULT_SCHEDULING, description="request order: priority (priority level, then earliest deadline) or fifo"
    )
    # -- allocator
    policy: Policy = Field(
        DEFAULT_POLICY,
        description="how models are placed: config (as each model's config says), static (ONNX Runtime "
        "defaults), balance (an instance on every backend), pareto (profiles + measured load + feedback)",
    )
    profile_store: Path | None = Field(
        None, description="profile database (default: profiles.sqlite in the cache, $EDGEPLEX_CACHE)"
    )
    replan_seconds: float = Field(DEFAULT_REPLAN_SECONDS, gt=0, description="how often pareto re-plans")
    min_gain: float = Field(
        DEFAULT_MIN_GAIN, ge=0, description="the predicted relative gain a re-placement must bring to be applied"
    )
    profile_missing: bool = Field(
        DEFAULT_PROFILE_MISSING, description="profile models without stored profiles in the background (pareto)"
    )
    profile_seconds: float = Field(
        DEFAULT_PROFILE_SECONDS, gt=0, description="time limit of each background measurement, in seconds"
    )
    explore: bool = Field(
        DEFAULT_EXPLORE, description="give configs never observed a bounded trial beside a model's own instances (pareto)"
    )
    switch_interval_us: int = Field(
        DEFAULT_SWITCH_INTERVAL_US, ge=50, le=100_000,
        description="the server process's GIL switch interval in microseconds: a short one hands the GIL sooner to "
                    "an executor thread back from a computation, which holds its cores meanwhile",
    )

    @field_validator("policy", "scheduling", mode="before")
    @classmethod
    def _choice_case(cls, value: object) -> object:
        return _lower(value)

    @field_validator("models", mode="before")
    @classmethod
    def _models(cls, value: object) -> object:
        if isinstance(value, str):
            text = value.strip()
            if text.startswith("["):
                return json.loads(text)
            return [name.strip() for name in text.split(",") if name.strip()]
        return [] if value is None else value

    @field_validator("memory_budget", mode="before")
    @classmethod
    def _memory_budget(cls, value: object) -> object:
        if isinstance(value, str):
            text = value.strip()
            return None if text.lower() in ("", "none") else parse_bytes(text)
        return value

    @field_validator("api_key")
    @classmethod
    def _api_key(cls, value: str | None) -> str | None:
        if value is None:
            return None
        value = value.strip()
        if len(value) < MIN_API_KEY_LENGTH:
            raise ValueError(f"the API key must have at least {MIN_API_KEY_LENGTH} characters")
        return value

    @model_validator(mode="after")
    def _key_from_file(self) -> Settings:
        """`api_key_file` gives the key only when `api_key` is not set."""
        if self.api_key is None and self.api_key_file is not None:
            path = self.api_key_file
            try:
                lines = path.read_text().strip().splitlines()
            except OSError as exc:
                raise ValueError(f"API key file {path}: cannot read: {exc.strerror or exc}") from None
            key = lines[0].strip() if lines else ""
            if len(key) < MIN_API_KEY_LENGTH:
                raise ValueError(f"API key file {path}: the key must have at least {MIN_API_KEY_LENGTH} characters")
            self.api_key = key
        return self


# The name the server and its tests have used for the settings.
ServerConfig = Settings
