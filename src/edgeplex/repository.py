"""The model repository: Triton's layout, read and completed.

    <repo>/<model>/config.yaml | config.pbtxt      (optional, may be partial)
    <repo>/<model>/<version>/model.onnx            (versions are positive integers)

A missing or partial config is completed from the ONNX file's own signature, like Triton's
auto-complete. Every problem is a ConfigError naming the file and the field, and it stays with
its model: one bad model never prevents the others from loading.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import onnx

from .config import ModelConfig, config_message, read_config_file, validate_config
from .config_errors import Problem
from .config_files import ConfigFields
from .errors import ConfigError, ModelNotFound
from .tensors import ONNX_TO_V2

MAX_NAME_LENGTH = 200  # file systems refuse names past 255 bytes
MODEL_NAME = re.compile(r"^[A-Za-z0-9_.\-]+$")
# Triton's ONNX Runtime backend completes max_batch_size to 4 when the model can batch.
AUTOCOMPLETE_MAX_BATCH = 4


@dataclass
class ModelSource:
    """A model's folder: its versions (number -> model file) and its config file, if any."""

    name: str
    path: Path
    versions: dict[int, Path] = field(default_factory=dict)
    config_file: Path | None = None

    @property
    def latest_version(self) -> int:
        return max(self.versions)


class Repository:
    """Reads a model repository folder. Cheap to re-scan; holds no loaded state."""

    def __init__(self, root: Path) -> None:
        self.root = root.resolve()

    def scan(self) -> dict[str, ModelSource]:
        """All model folders under the root, by name (folders that are not models are skipped)."""
        if not self.root.is_dir():
            raise ConfigError(f"model repository {self.root} is not a directory")
        found: dict[str, ModelSource] = {}
        for child in sorted(self.root.iterdir()):
            if child.is_dir() and MODEL_NAME.match(child.name) and not child.name.startswith("."):
                found[child.name] = self._source(child)
        return found

    def source(self, name: str) -> ModelSource:
        """One model's folder; ModelNotFound for names that are not (safely) in the repository."""
        if not MODEL_NAME.match(name) or name in (".", "..") or len(name) > MAX_NAME_LENGTH:
            raise ModelNotFound(f"model '{name[:MAX_NAME_LENGTH]}' is not in the repository")
        path = self.root / name
        try:
            found = path.is_dir()
        except OSError:  # a name the file system refuses is no model of ours
            found = False
        if not found:
            raise ModelNotFound(f"model '{name}' is not in the repository")
        return self._source(path)

    def _source(self, path: Path) -> ModelSource:
        source = ModelSource(name=path.name, path=path)
        for candidate in ("config.yaml", "config.yml", "config.pbtxt"):
            if (path / candidate).is_file():
                source.config_file = path / candidate
                break
        for child in path.iterdir():
            if child.is_dir() and child.name.isdigit() and int(child.name) > 0:
                source.versions[int(child.name)] = child
        return source

    def load_config(self, source: ModelSource) -> ModelConfig:
        """The model's complete config: its file's fields, completed from the ONNX signature."""
        fields: dict[str, Any] = {}
        origin: Path | str = source.path
        if source.config_file is not None:
            fields = read_config_file(source.config_file, source.name)
            origin = source.config_file
        fields.setdefault("name", source.name)
        if fields["name"] != source.name:
            raise ConfigError(config_message(fields, origin, [Problem(
                ("name",), f"is '{fields['name']}' but the model's folder is '{source.name}' (they must be the same)"
            )]))
        config = validate_config(fields, origin)
        if not source.versions:
            raise ConfigError(f"{source.path}: no version folder (expected {source.path}/1/{config.default_model_filename})")
        model_file = source.versions[source.latest_version] / config.default_model_filename
        if not model_file.is_file():
            where = fields.where(("default_model_filename",)) if isinstance(fields, ConfigFields) else origin
            raise ConfigError(f"{where}: model file {model_file} is missing")
        return autocomplete(config, fields, model_file, origin)


def onnx_signature(model_file: Path) -> tuple[list[tuple[str, str, list[int]]], list[tuple[str, str, list[int]]]]:
    """(inputs, outputs) of an ONNX file as (name, V2 datatype, dims with -1 for unknown)."""
    try:
        model = onnx.load(str(model_file), load_external_data=False)
    except Exception as exc:
        raise ConfigError(f"{model_file}: not a readable ONNX model: {exc}") from None
    initializers = {init.name for init in model.graph.initializer}

    def describe(values: Any) -> list[tuple[str, str, list[int]]]:
        out = []
        for value in values:
            if value.name in initializers:
                continue
            tensor = value.type.tensor_type
            dims = [d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else -1 for d in tensor.shape.dim]
            datatype = ONNX_TO_V2.get(tensor.elem_type)
            if datatype is None:
                kind = onnx.TensorProto.DataType.Name(tensor.elem_type)
                raise ConfigError(f"{model_file}: tensor '{value.name}' has type {kind}, which KServe V2 cannot carry")
            out.append((value.name, datatype, dims))
        return out

    return describe(model.graph.input), describe(model.graph.output)


def _batching(config: ModelConfig, given: dict[str, Any], max_batch: int, found: list[Problem]) -> Any:
    """Like Triton's auto-complete: a model that batches gets the dynamic batcher unless its config
    says `dynamic_batching: null`; one that does not batch cannot have it."""
    if "dynamic_batching" not in given:
        return {} if max_batch > 0 else None
    if config.dynamic_batching is None:
        return None
    if max_batch == 0:
        found.append(Problem(("dynamic_batching",), "needs max_batch_size > 0 (the model does not batch)"))
        return None
    too_big = [size for size in config.dynamic_batching.preferred_batch_size if size > max_batch]
    if too_big:
        found.append(Problem(
            ("dynamic_batching", "preferred_batch_size"), f"must not exceed max_batch_size {max_batch}, got {too_big}"
        ))
    return config.dynamic_batching.model_dump()


def _plural(count: int, word: str) -> str:
    return word if count == 1 else word + "s"


def _check_tensors(
    kind: str, stated: list[Any], actual: dict[str, tuple[str, list[int]]], found: list[Problem]
) -> None:
    """Each tensor the config states must be the model's, with its datatype and a compatible shape."""
    noun = kind[:-1]
    for index, spec in enumerate(stated):
        if spec.name not in actual:
            found.append(Problem(
                (kind, index, "name"),
                f"is '{spec.name}', which is not one of the model's {kind} (it has: {', '.join(actual)})",
            ))
            continue
        dtype, dims = actual[spec.name]
        if spec.datatype != dtype:
            found.append(Problem((kind, index, "datatype"), f"is {spec.datatype} but the model's {noun} "
                                 f"'{spec.name}' is {dtype}"))
        if len(spec.dims) != len(dims):
            found.append(Problem(
                (kind, index, "dims"),
                f"is {spec.dims}, {len(spec.dims)} {_plural(len(spec.dims), 'dimension')}, but the model's "
                f"{noun} '{spec.name}' has {len(dims)}: {dims} (the batch dimension is left out when "
                "max_batch_size > 0)",
            ))
        elif any(c != m and c > 0 and m > 0 for c, m in zip(spec.dims, dims)):
            found.append(Problem(
                (kind, index, "dims"), f"is {spec.dims}, which conflicts with the model's {noun} '{spec.name}' {dims}"
            ))
    listed = {spec.name for spec in stated}
    misnamed = not listed <= set(actual)  # then "it has: ..." already says what to list
    unlisted = [n for n in actual if n not in listed] if kind == "inputs" and not misnamed else []
    if unlisted:  # like Triton: a model whose config omits an input could never be called
        names = ", ".join(repr(n) for n in unlisted)
        verb = "is" if len(unlisted) == 1 else "are"
        found.append(Problem(
            (kind,), f"needs every input of the model: {_plural(len(unlisted), 'input')} {names} {verb} not listed "
            "(list them all, or none to take them from the model)",
        ))


def autocomplete(config: ModelConfig, given: dict[str, Any], model_file: Path, origin: Path | str) -> ModelConfig:
    """Fill what the config leaves out from the ONNX signature; check what it states (every
    problem found, one per line, each at the line of its field when the config came from a file)."""
    inputs, outputs = onnx_signature(model_file)
    batchable = all(dims and dims[0] == -1 for _, _, dims in inputs + outputs)
    max_batch = config.max_batch_size
    found: list[Problem] = []
    if "max_batch_size" not in given:
        max_batch = AUTOCOMPLETE_MAX_BATCH if batchable else 0
    elif max_batch > 0 and not batchable:
        found.append(Problem(
            ("max_batch_size",), f"is {max_batch} but the model's tensors have no variable first (batch) "
            "dimension; use 0",
        ))
    skip = 1 if max_batch > 0 else 0

    def complete(kind: str, stated: list[Any], actual: list[tuple[str, str, list[int]]]) -> list[dict[str, Any]]:
        by_name = {name: (dtype, dims[skip:]) for name, dtype, dims in actual}
        if not stated:
            return [{"name": n, "datatype": t, "dims": d} for n, (t, d) in by_name.items()]
        _check_tensors(kind, stated, by_name, found)
        return [spec.model_dump() for spec in stated]

    fields = config.model_dump()
    fields["max_batch_size"] = max_batch
    fields["dynamic_batching"] = _batching(config, given, max_batch, found)
    fields["inputs"] = complete("inputs", config.inputs, inputs)
    fields["outputs"] = complete("outputs", config.outputs, outputs)
    if found:
        raise ConfigError(config_message(given, origin, found))
    return validate_config(fields, origin)


def file_hash(path: Path) -> str:
    """sha256 of a model file: the profile key's notion of "the same model"."""
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()
