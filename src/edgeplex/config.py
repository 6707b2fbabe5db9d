"""Model and server configuration, with validation errors that name the file and the field.

A model's configuration is YAML (`config.yaml`), close in meaning to Triton's `config.pbtxt`,
which is read too. Dims exclude the batch dimension when `max_batch_size > 0`, as in Triton.

The server's settings (`Settings`, below) are one object for the server, the engine and the
allocator: each field is also read from an `EDGEPLEX_<FIELD>` environment variable, and its
default is stated once, here (MLServer's `settings.py`, in spirit).
"""

from __future__ import annotations

import difflib
import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from .config_errors import Problem, did_you_mean, dotted, problems, shown
from .config_files import DATATYPE_ALIASES, ConfigFields
from .config_files import read_config_file as read_config_file  # the name callers know
from .errors import ConfigError
from .tensors import DEFAULT_MAX_ELEMENTS, V2_TO_NUMPY

KNOWN_BACKENDS = ("onnxruntime", "openvino")
OPEN_APIS = ("health", "metadata", "metrics")  # API groups that may be served without the API key
DEFAULT_OPEN_APIS = ("health",)
NAME_PATTERN = r"^[A-Za-z0-9_.\-]+$"
PROCESSOR_PATTERN = r"^[a-z][a-z0-9_\-]*(:[A-Za-z0-9_.\-]+)?$"


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
        text = {"STRING": "BYTES"}.get(text, text)
        if text not in V2_TO_NUMPY:
            alias = {k: f"'{v}'" for k, v in DATATYPE_ALIASES.items()}
            raise ValueError(
                f"must be a KServe V2 datatype ({', '.join(V2_TO_NUMPY)}; Triton's TYPE_ names are read too), "
                f"got {shown(value)}{did_you_mean(text, V2_TO_NUMPY, alias)}"
            )
        return text

    @field_validator("dims")
    @classmethod
    def _dims(cls, value: list[int]) -> list[int]:
        if any(d < -1 or d == 0 for d in value):
            raise ValueError(f"must be positive or -1 (any size), got {value}")
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
            raise ValueError(f"must all be 1 or more, got {value}")
        return sorted(set(value))


class ModelConfig(BaseModel):
    """What a model needs to be served. Unknown fields are refused, so typos surface."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, pattern=NAME_PATTERN)
    backend: str = "onnxruntime"
    max_batch_size: int = Field(default=0, ge=0)
    inputs: list[TensorSpec] = Field(default_factory=list)
    outputs: list[TensorSpec] = Field(default_factory=list)
    instance_count: int = Field(default=1, ge=1, le=64)
    # Where its instances run when the config places it: `cpu`, or a processor the engine
    # discovered (`cuda:0`, `gpu:0`, ...; see GET /v2/edgeplex/processors).
    processor: str = Field(default="cpu", pattern=PROCESSOR_PATTERN)
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
            raise ValueError(
                f"must be {' or '.join(repr(b) for b in KNOWN_BACKENDS)} (Triton's 'onnxruntime_onnx' is read as "
                f"'onnxruntime'), got {shown(value)}{did_you_mean(value, KNOWN_BACKENDS)}"
            )
        return value

    def input(self, name: str) -> TensorSpec | None:
        return next((spec for spec in self.inputs if spec.name == name), None)

    def full_dims(self, spec: TensorSpec) -> list[int]:
        """Dims including the batch dimension, as clients see them in metadata."""
        return ([-1] if self.max_batch_size > 0 else []) + list(spec.dims)


def validate_config(fields: dict[str, Any], source: Path | str) -> ModelConfig:
    """A ModelConfig from raw fields; else a ConfigError listing every problem, one per line, each
    with the file and line of its field (when `fields` came from `read_config_file`)."""
    try:
        return ModelConfig.model_validate(fields)
    except ValidationError as exc:
        found = problems(exc, ModelConfig, _ALIASES, _PATTERN_WORDS)
        raise ConfigError(config_message(fields, source, [_triton_only(p) for p in found])) from None


def config_message(fields: Mapping[str, Any], source: Path | str, found: list[Problem]) -> str:
    """Each problem on its own line, `file:line: ...`, in the order of the file's lines; a field
    is named as the file spells it."""
    located = fields if isinstance(fields, ConfigFields) else None
    rows = []
    for problem in found:
        line = located.line(problem.loc) if located is not None else None
        name = located.name(problem.loc) if located is not None else dotted(problem.loc)
        where = f"{located.path}:{line}" if located is not None and line else str(located.path if located else source)
        rows.append((line or 0, f"{where}: {problem.worded(name)}"))
    return "\n".join(text for _, text in sorted(rows, key=lambda row: row[0]))


def _triton_only(problem: Problem) -> Problem:
    """An unknown field that is Triton's says so, rather than that nothing is like it."""
    if problem.unknown and not problem.says and len(problem.loc) == 1 and problem.loc[0] in TRITON_ONLY_FIELDS:
        return Problem(problem.loc, " (a Triton field edgeplex does not read: remove it)", unknown=True)
    return problem


# Names that Triton's config (or habit) gives a field, and what to write instead.
_ALIASES: dict[type[BaseModel], dict[str, str]] = {
    ModelConfig: {
        "input": "'inputs'", "output": "'outputs'", "platform": "'backend'",
        "instance_group": "'instance_count' and 'processor'",
        "count": "'instance_count'", "instances": "'instance_count'", "kind": "'processor'",
        "gpus": "'processor' (e.g. cuda:0)", "default_priority_level": "'priority'",
        "priority_levels": "'priority' (1 is served first)",
        "max_queue_delay_microseconds": "'dynamic_batching.max_queue_delay_microseconds'",
        "preferred_batch_size": "'dynamic_batching.preferred_batch_size'",
        "default_queue_policy": "'timeout_action', 'max_queue_size' and 'slo_ms'",
        "default_timeout_microseconds": "'slo_ms' (in milliseconds)",
        "intra_op_num_threads": "'threads'", "num_threads": "'threads'",
        "model_filename": "'default_model_filename'", "filename": "'default_model_filename'",
    },
    TensorSpec: {"data_type": "'datatype'", "dtype": "'datatype'", "type": "'datatype'", "shape": "'dims'",
                 "dim": "'dims'"},
    DynamicBatching: {
        "default_priority_level": "'priority', at the top level",
        "priority_levels": "'priority', at the top level",
        "default_queue_policy": "'timeout_action', 'max_queue_size' and 'slo_ms', at the top level",
        "max_queue_size": "'max_queue_size', at the top level",
        "max_batch_size": "'max_batch_size', at the top level",
    },
}
# Fields of Triton's ModelConfig that edgeplex has no use for.
TRITON_ONLY_FIELDS = frozenset({
    "version_policy", "optimization", "sequence_batching", "ensemble_scheduling", "model_warmup",
    "model_operations", "model_transaction_policy", "model_repository_agents", "response_cache",
    "batch_input", "batch_output", "cc_model_filenames", "metric_tags", "runtime",
})
_PATTERN_WORDS = {
    NAME_PATTERN: "may contain only letters, digits, '_', '.' and '-'",
    PROCESSOR_PATTERN: "must be 'cpu' or a processor such as 'cuda:0' or 'gpu:0' (see GET /v2/edgeplex/processors)",
}


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


def flag_name(setting: str) -> str:
    """The command-line flag that gives a setting: `http_port` -> `--http-port` (`models`: `--model`)."""
    return "--model" if setting == "models" else "--" + setting.replace("_", "-")


def _settings_problems(exc: ValidationError, given: Mapping[str, Any], model: type[BaseModel]) -> list[str]:
    """One line per bad setting, naming it, its flag, and the environment variable it came from."""
    rows = []
    for problem in problems(exc, model):
        name = str(problem.loc[0]) if problem.loc else ""
        secret = name == "api_key"  # never echo a key
        if not name:
            rows.append(problem.says)
        elif problem.unknown:
            rows.append(problem.worded(name, noun="setting"))
        elif name not in given and (var := _env_var(name)) is not None:
            value = "" if secret else f"={os.environ[var]!r}"
            rows.append(f"environment variable {var}{value} (setting '{name}'): {problem.says}{problem.hint}")
        else:
            value = "" if secret or not problem.given else f" = {problem.given}"
            rows.append(f"setting '{dotted(problem.loc)}'{value} ({flag_name(name)}): {problem.says}{problem.hint}")
    return rows


def _settings_message(rows: list[str]) -> str:
    """`invalid setting: ...`, or each of several on its own line."""
    if len(rows) == 1:
        return f"invalid setting: {rows[0]}"
    return "invalid settings:\n" + "\n".join(f"  {row}" for row in rows)


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
        typos = self._misspelled_variables()
        try:
            super().__init__(**values)
        except ValidationError as exc:
            raise ConfigError(_settings_message(typos + _settings_problems(exc, values, type(self)))) from None
        if typos:
            raise ConfigError(_settings_message(typos))

    @classmethod
    def _misspelled_variables(cls) -> list[str]:
        """EDGEPLEX_* variables that are no setting of this command but look like one (a typo
        would else be ignored in silence). Only names close to a setting's count: edgeplex has
        other variables (EDGEPLEX_CACHE, EDGEPLEX_ZOO)."""
        if cls is LogSettings:  # every command reads these; `serve` checks the whole environment
            return []
        known = sorted(cls.model_fields)
        rows = []
        for var in sorted(os.environ):
            setting = var.upper().removeprefix(ENV_PREFIX).lower()
            if var.upper().startswith(ENV_PREFIX) and setting not in known:
                close = difflib.get_close_matches(setting, known, n=1, cutoff=0.8)
                if close:
                    rows.append(f"environment variable {var} is not a setting (did you mean {env_name(close[0])}?)")
        return rows

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
    open_apis: Annotated[list[str], NoDecode] = Field(
        default_factory=lambda: list(DEFAULT_OPEN_APIS),
        description="with an API key, the API groups served without it: health (liveness, readiness), "
        "metadata, metrics; comma-separated, or none (Kubernetes and KServe probes carry no key)",
    )
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

    @field_validator("open_apis", mode="before")
    @classmethod
    def _open_apis(cls, value: object) -> object:
        items = value.split(",") if isinstance(value, str) else list(value) if isinstance(value, list | tuple) else value
        if not isinstance(items, list):
            return items
        groups = [str(item).strip().lower() for part in items for item in str(part).split(",") if str(item).strip()]
        unknown = [g for g in groups if g not in (*OPEN_APIS, "none")]
        if unknown:
            raise ValueError(f"unknown API group(s) {', '.join(unknown)} (expected {', '.join(OPEN_APIS)} or none)")
        return [g for g in groups if g != "none"]

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
