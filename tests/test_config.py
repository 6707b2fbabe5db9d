"""Model configuration: YAML and Triton's config.pbtxt, with errors that name the file and field."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from edgeplex.config import (
    ModelConfig,
    ServerConfig,
    default_cores,
    read_config_file,
    validate_config,
)
from edgeplex.errors import ConfigError


def _yaml(tmp_path: Path, fields: object, name: str = "config.yaml") -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(fields, sort_keys=False))
    return path


def _load(path: Path) -> ModelConfig:
    return validate_config(read_config_file(path, path.parent.name), path)


def test_yaml_config_validates(tmp_path: Path) -> None:
    path = _yaml(
        tmp_path,
        {
            "name": "det",
            "max_batch_size": 8,
            "inputs": [{"name": "images", "datatype": "FP32", "dims": [3, -1, -1]}],
            "outputs": [{"name": "scores", "datatype": "fp16", "dims": [10]}],
            "instance_count": 2,
            "threads": 2,
            "priority": 3,
            "slo_ms": 25.5,
            "pinned": True,
            "parameters": {"max_queue_size": "16"},
        },
    )
    config = _load(path)
    assert config.name == "det"
    assert config.backend == "onnxruntime"
    assert config.max_batch_size == 8
    assert config.inputs[0].dims == [3, -1, -1]
    assert config.outputs[0].datatype == "FP16"  # case-insensitive
    assert (config.instance_count, config.threads, config.priority) == (2, 2, 3)
    assert config.slo_ms == 25.5 and config.pinned
    assert config.parameters == {"max_queue_size": "16"}
    assert config.full_dims(config.inputs[0]) == [-1, 3, -1, -1]
    assert config.input("images") is config.inputs[0]
    assert config.input("nope") is None


def test_defaults_and_empty_yaml(tmp_path: Path) -> None:
    path = tmp_path / "config.yaml"
    path.write_text("")
    assert read_config_file(path, "m") == {}
    config = validate_config({"name": "m"}, path)
    assert (config.max_batch_size, config.instance_count, config.threads, config.priority) == (0, 1, 1, 1)
    assert config.default_model_filename == "model.onnx"
    unbatched = validate_config({"name": "m", "inputs": [{"name": "x", "datatype": "INT8", "dims": [2, 3]}]}, path)
    assert unbatched.full_dims(unbatched.inputs[0]) == [2, 3]  # no batch dimension when max_batch_size is 0


def test_unknown_field_is_refused_naming_file_and_field(tmp_path: Path) -> None:
    path = _yaml(tmp_path, {"name": "m", "max_batch_sise": 4})
    with pytest.raises(ConfigError) as info:
        _load(path)
    assert str(path) in info.value.message
    assert "field 'max_batch_sise'" in info.value.message
    assert info.value.http_status == 400


def test_unknown_field_inside_a_tensor(tmp_path: Path) -> None:
    path = _yaml(tmp_path, {"name": "m", "inputs": [{"name": "x", "datatype": "FP32", "dims": [1], "shape": [1]}]})
    with pytest.raises(ConfigError, match=r"field 'inputs\.0\.shape'"):
        _load(path)


def test_bad_datatype_is_named(tmp_path: Path) -> None:
    path = _yaml(tmp_path, {"name": "m", "outputs": [{"name": "y", "datatype": "FLOAT", "dims": [2]}]})
    with pytest.raises(ConfigError) as info:
        _load(path)
    assert str(path) in info.value.message
    assert "field 'outputs.0.datatype'" in info.value.message
    assert "unknown datatype 'FLOAT'" in info.value.message


@pytest.mark.parametrize("dims", [[0], [3, -2]])
def test_bad_dims_are_named(tmp_path: Path, dims: list[int]) -> None:
    path = _yaml(tmp_path, {"name": "m", "inputs": [{"name": "x", "datatype": "FP32", "dims": dims}]})
    with pytest.raises(ConfigError, match=r"field 'inputs\.0\.dims'.*must be positive or -1"):
        _load(path)


def test_bad_backend_is_named(tmp_path: Path) -> None:
    path = _yaml(tmp_path, {"name": "m", "backend": "tensorflow"})
    with pytest.raises(ConfigError, match=r"field 'backend'.*unknown backend 'tensorflow'"):
        _load(path)


def test_several_problems_are_all_reported(tmp_path: Path) -> None:
    path = _yaml(tmp_path, {"name": "m", "max_batch_size": -1, "instance_count": 0})
    with pytest.raises(ConfigError) as info:
        _load(path)
    assert "field 'max_batch_size'" in info.value.message
    assert "field 'instance_count'" in info.value.message


def test_invalid_yaml_and_non_mapping(tmp_path: Path) -> None:
    bad = tmp_path / "config.yaml"
    bad.write_text("name: [unclosed\n")
    with pytest.raises(ConfigError, match="invalid YAML"):
        read_config_file(bad, "m")
    bad.write_text("- a\n- b\n")
    with pytest.raises(ConfigError, match="expected a mapping of fields, got list"):
        read_config_file(bad, "m")
    with pytest.raises(ConfigError, match="cannot read"):
        read_config_file(tmp_path / "absent.yaml", "m")


def test_bad_model_name(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="field 'name'"):
        validate_config({"name": "a/b"}, tmp_path / "config.yaml")


PBTXT = """
name: "resnet"
platform: "onnxruntime_onnx"
max_batch_size: 16
input [
  {
    name: "data"
    data_type: TYPE_FP32
    dims: [ 3, 224, 224 ]
  },
  {
    name: "tag"
    data_type: TYPE_STRING
    dims: [ 1 ]
  }
]
output [
  {
    name: "logits"
    data_type: TYPE_FP16
    dims: [ 1000 ]
  },
  {
    name: "index"
    data_type: TYPE_INT64
    dims: [ -1 ]
  }
]
instance_group [
  { count: 2 kind: KIND_CPU },
  { count: 3 kind: KIND_CPU }
]
dynamic_batching {
  priority_levels: 4
  default_priority_level: 2
}
default_model_filename: "net.onnx"
parameters { key: "max_queue_size" value: { string_value: "32" } }
"""


def test_triton_pbtxt_is_read(tmp_path: Path) -> None:
    path = tmp_path / "config.pbtxt"
    path.write_text(PBTXT)
    config = _load(path)
    assert config.name == "resnet"
    assert config.backend == "onnxruntime"  # platform onnxruntime_onnx
    assert config.max_batch_size == 16
    assert [(s.name, s.datatype, s.dims) for s in config.inputs] == [
        ("data", "FP32", [3, 224, 224]),
        ("tag", "BYTES", [1]),
    ]
    assert [(s.name, s.datatype, s.dims) for s in config.outputs] == [
        ("logits", "FP16", [1000]),
        ("index", "INT64", [-1]),
    ]
    assert config.instance_count == 5  # summed over the instance groups
    assert config.priority == 2
    assert config.default_model_filename == "net.onnx"
    assert config.parameters == {"max_queue_size": "32"}


def test_pbtxt_backend_field_and_defaults(tmp_path: Path) -> None:
    path = tmp_path / "config.pbtxt"
    path.write_text('backend: "onnxruntime"\ninstance_group [ { kind: KIND_CPU } ]\n')
    fields = read_config_file(path, "m")
    assert fields == {"backend": "onnxruntime", "instance_count": 1}
    config = validate_config({**fields, "name": "m"}, path)
    assert config.max_batch_size == 0


def test_pbtxt_gpu_instances_run_on_that_cuda_device(tmp_path: Path) -> None:
    path = tmp_path / "config.pbtxt"
    path.write_text('backend: "onnxruntime"\ninstance_group [ { count: 2, kind: KIND_GPU, gpus: [ 1 ] } ]\n')
    config = validate_config({**read_config_file(path, "m"), "name": "m"}, path)
    assert (config.processor, config.instance_count) == ("cuda:1", 2)
    with pytest.raises(ConfigError, match="processor"):
        validate_config({"name": "m", "processor": "CUDA 0"}, path)


def test_pbtxt_unknown_platform_is_named(tmp_path: Path) -> None:
    path = tmp_path / "config.pbtxt"
    path.write_text('name: "m"\nplatform: "tensorflow_savedmodel"\n')
    with pytest.raises(ConfigError, match=r"config\.pbtxt: field 'backend'.*tensorflow_savedmodel"):
        _load(path)


def test_pbtxt_syntax_error_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "config.pbtxt"
    path.write_text('name: "m"\nmax_batch_sise: 4\n')
    with pytest.raises(ConfigError) as info:
        read_config_file(path, "m")
    assert str(path) in info.value.message
    assert "max_batch_sise" in info.value.message


def test_server_config_defaults() -> None:
    assert default_cores() >= 1
    config = ServerConfig()
    assert config.cores == default_cores()
    assert (config.http_port, config.grpc_port) == (8000, 8001)


@pytest.mark.parametrize("text, expected", [("1GiB", 2**30), ("512MB", 512 * 10**6), ("2e9", 2 * 10**9), ("100", 100), ("1.5G", 1_500_000_000)])
def test_parse_bytes(text: str, expected: int) -> None:
    from edgeplex.config import parse_bytes

    assert parse_bytes(text) == expected


@pytest.mark.parametrize("text", ["abc", "1XB", "0", "-1GB", ""])
def test_parse_bytes_refuses_what_is_not_a_size(text: str) -> None:
    from edgeplex.config import parse_bytes

    with pytest.raises(ValueError, match="size"):
        parse_bytes(text)
