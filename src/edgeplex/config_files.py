"""Reading a model's config file (config.yaml, or Triton's config.pbtxt) and where each field is.

The fields come back as a `ConfigFields` dict that also knows, for any field, the line it is
written on and how the file spells it (a config.pbtxt says `input[0].data_type` where edgeplex
says `inputs[0].datatype`), so that every error can point at `config.yaml:4`.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml

from .config_errors import Loc, did_you_mean, dotted
from .errors import ConfigError

# What people coming from Triton or numpy type for a KServe V2 datatype.
DATATYPE_ALIASES = {
    "FLOAT": "FP32", "FLOAT32": "FP32", "FLOAT16": "FP16", "HALF": "FP16", "DOUBLE": "FP64",
    "FLOAT64": "FP64", "INT": "INT32", "LONG": "INT64", "STR": "BYTES", "BOOLEAN": "BOOL",
    "BFLOAT16": "BF16",
}


class ConfigFields(dict[str, Any]):
    """A config file's raw fields (not yet validated), with where each one is written."""

    def __init__(self, fields: dict[str, Any], path: Path, lines: dict[tuple[str, ...], int],
                 pbtxt: bool = False) -> None:
        super().__init__(fields)
        self.path = path
        self.lines = lines  # location (each part as text) -> line number, 1-based
        self.pbtxt = pbtxt

    def spelled(self, loc: Loc) -> Loc:
        """The location of edgeplex's field `loc` as the file writes it."""
        return _pbtxt_loc(loc, self) if self.pbtxt else loc

    def name(self, loc: Loc) -> str:
        """The field's name as the user wrote it: `inputs[0].dims`, or `input[0].dims` in pbtxt."""
        return dotted(self.spelled(loc))

    def line(self, loc: Loc) -> int | None:
        """The line of the field (or of the nearest enclosing one written in the file)."""
        key = tuple(str(part) for part in self.spelled(loc))
        for end in range(len(key), 0, -1):
            if key[:end] in self.lines:
                return self.lines[key[:end]]
        return None

    def where(self, loc: Loc) -> str:
        """`path:line` of the field, or the path alone when its line is not known."""
        line = self.line(loc)
        return f"{self.path}:{line}" if line else str(self.path)


def read_config_file(path: Path, model_name: str) -> ConfigFields:
    """The raw fields of a config.yaml or config.pbtxt, with their lines."""
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror or exc}") from None
    if path.suffix == ".pbtxt":
        return _pbtxt_fields(text, path)
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark is not None else str(path)
        problem = getattr(exc, "problem", None) or str(exc)
        context = getattr(exc, "context", None)
        raise ConfigError(f"{where}: invalid YAML: {problem}" + (f" ({context})" if context else "")) from None
    if data is None:
        return ConfigFields({}, path, {})
    if not isinstance(data, dict):
        kind = "a list" if isinstance(data, list) else "a string" if isinstance(data, str) else type(data).__name__
        raise ConfigError(f"{path}:1: expected a mapping of fields (name: value), got {kind}")
    lines: dict[tuple[str, ...], int] = {}
    _yaml_lines(node, (), lines)
    return ConfigFields(data, path, lines)


def _yaml_lines(node: yaml.Node | None, loc: tuple[str, ...], lines: dict[tuple[str, ...], int]) -> None:
    """Record the line of every key and list item under `node` (YAML marks count from 0)."""
    if isinstance(node, yaml.MappingNode):
        for key, value in node.value:
            if isinstance(key, yaml.ScalarNode):
                lines.setdefault(loc + (key.value,), key.start_mark.line + 1)
                _yaml_lines(value, loc + (key.value,), lines)
    elif isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            lines.setdefault(loc + (str(index),), item.start_mark.line + 1)
            _yaml_lines(item, loc + (str(index),), lines)


# -- Triton's config.pbtxt ----------------------------------------------------------------------

# Where edgeplex's field is written in a config.pbtxt (the rest have the same name).
_PBTXT_PLACES: dict[str, tuple[str, ...]] = {
    "instance_count": ("instance_group",),
    "processor": ("instance_group",),
    "priority": ("dynamic_batching", "default_priority_level"),
    "timeout_action": ("dynamic_batching", "default_queue_policy", "timeout_action"),
    "max_queue_size": ("dynamic_batching", "default_queue_policy", "max_queue_size"),
    "slo_ms": ("dynamic_batching", "default_queue_policy", "default_timeout_microseconds"),
    "parameters": ("parameters",),
}
_PBTXT_WHAT = {
    "ModelConfig": "", "ModelInput": " in an input", "ModelOutput": " in an output",
    "ModelInstanceGroup": " in an instance_group", "ModelDynamicBatching": " in dynamic_batching",
    "ModelQueuePolicy": " in a queue policy", "ModelParameter": " in a parameter value",
}


def _pbtxt_loc(loc: Loc, fields: ConfigFields) -> Loc:
    if not loc:
        return loc
    head = loc[0]
    if head in ("inputs", "outputs"):
        rest = tuple("data_type" if part == "datatype" else part for part in loc[1:])
        return (str(head)[:-1], *rest)
    if head == "backend":
        return ("backend",) if ("backend",) in fields.lines else ("platform",)
    if head in _PBTXT_PLACES:
        return _PBTXT_PLACES[str(head)]
    return loc


def _pbtxt_fields(text: str, path: Path) -> ConfigFields:
    """Read Triton's config.pbtxt with Triton's own schema, then map it to our fields."""
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2 as mc

    proto = mc.ModelConfig()
    try:
        text_format.Parse(text, proto)
    except text_format.ParseError as exc:
        line = exc.GetLine() if exc.GetLine() > 0 else None
        where = f"{path}:{line}" if line else str(path)
        raise ConfigError(f"{where}: {_pbtxt_problem(str(exc))}") from None

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
    return ConfigFields(fields, path, _pbtxt_lines(text), pbtxt=True)


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


def _pbtxt_problem(message: str) -> str:
    """protobuf's parse error, worded for people (its `line:column :` prefix dropped)."""
    from google.protobuf import descriptor_pool

    message = re.sub(r"^\d+:\d+ : ", "", message)
    message = re.sub(r"^'[^\n]*?': (?=[A-Z])", "", message)  # protobuf echoes the line first
    unknown = re.match(r'Message type "([\w.]+)" has no field named "(\w+)"', message)
    if unknown:
        owner, name = unknown.groups()
        try:
            known = list(descriptor_pool.Default().FindMessageTypeByName(owner).fields_by_name)
        except KeyError:
            known = []
        what = _PBTXT_WHAT.get(owner.rsplit(".", 1)[-1], f" in {owner}")
        return f"unknown field '{name}'{what}{did_you_mean(name, known)}"
    enum = re.match(r'Enum type "([\w.]+)" has no value named (\w+)', message)
    if enum:
        owner, name = enum.groups()
        try:
            values = [v for v in descriptor_pool.Default().FindEnumTypeByName(owner).values_by_name if v != "TYPE_INVALID"]
        except KeyError:
            values = []
        plain = name.upper().removeprefix("TYPE_")
        alias = {k: f"'TYPE_{v}'" for k, v in DATATYPE_ALIASES.items()} if owner.endswith("DataType") else {}
        hint = did_you_mean(plain, [v.removeprefix("TYPE_") for v in values], alias)
        hint = re.sub(r"'(?!TYPE_)(\w+)'", r"'TYPE_\1'", hint) if owner.endswith("DataType") else hint
        return f"unknown value {name} (expected one of {', '.join(values)}){hint}"
    parsed = re.match(r"Couldn't parse (\w+): (.*)", message)
    if parsed:
        kind, value = parsed.groups()
        article = "an" if kind[0] in "aeiou" else "a"
        return f"expected {article} {kind}, got {value}"
    return f"invalid config.pbtxt: {message.rstrip('.')}"


def _pbtxt_lines(text: str) -> dict[tuple[str, ...], int]:
    """The line of every field of a config.pbtxt that protobuf has already parsed, by location
    (`('input', '0', 'dims')`): repeated fields are numbered in order, as in the parsed message."""
    from google.protobuf import text_format
    from google.protobuf.descriptor import FieldDescriptor
    from tritonclient.grpc import model_config_pb2 as mc

    lines: dict[tuple[str, ...], int] = {}
    tok = text_format.Tokenizer(text.splitlines())

    def value(loc: tuple[str, ...], line: int, kind: Any) -> None:
        lines.setdefault(loc, line)
        if tok.token in ("{", "<"):
            closer = "}" if tok.token == "{" else ">"
            tok.NextToken()
            message(loc, closer, kind)
            tok.NextToken()
            return
        was_string = tok.token[:1] in ("'", '"')
        tok.NextToken()
        while was_string and tok.token[:1] in ("'", '"'):  # adjacent strings are one value
            tok.NextToken()

    def message(loc: tuple[str, ...], closer: str | None, descriptor: Any) -> None:
        seen: dict[str, int] = {}
        while not tok.AtEnd() and tok.token != closer:
            name, line = tok.token, tok._line + 1
            tok.NextToken()
            tok.TryConsume(":")
            lines.setdefault(loc + (name,), line)
            field = descriptor.fields_by_name.get(name) if descriptor is not None else None
            repeated = field is not None and field.label == FieldDescriptor.LABEL_REPEATED
            kind = field.message_type if field is not None else None
            listed = tok.TryConsume("[")
            while not (listed and tok.TryConsume("]")):
                index = seen.get(name, 0)
                seen[name] = index + 1
                value(loc + (name, str(index)) if repeated else loc + (name,), tok._line + 1, kind)
                if not listed:
                    break
                tok.TryConsume(",")
            if not tok.TryConsume(","):
                tok.TryConsume(";")

    try:
        message((), None, mc.ModelConfig.DESCRIPTOR)
    except Exception:  # only line numbers are lost: the file was parsed already
        pass
    return lines
