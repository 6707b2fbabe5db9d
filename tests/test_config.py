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


def _load_named(path: Path) -> ModelConfig:
    """As the repository reads a config: the name defaults to the model's folder."""
    fields = read_config_file(path, path.parent.name)
    fields.setdefault("name", path.parent.name)
    return validate_config(fields, path)


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


# Realistic mistakes in a config.yaml: (the file, the line of the mistake, what the message says).
YAML_MISTAKES = [
    ("name: m\nmax_batch: 8\n", 2, "unknown field 'max_batch' (did you mean 'max_batch_size'?)"),
    ("name: m\nmax_batch_size: eight\n", 2, "'max_batch_size' must be an integer greater than or equal to 0, got 'eight'"),
    ("input:\n  - name: x\n    datatype: FP32\n    dims: [1]\n", 1, "unknown field 'input' (did you mean 'inputs'?)"),
    ("output: []\n", 1, "unknown field 'output' (did you mean 'outputs'?)"),
    ("inputs:\n  - name: x\n    datatype: FP32\n    dims: [1]\n    data_tipe: FP32\n", 5,
     "unknown field 'inputs[0].data_tipe' (did you mean 'datatype'?)"),
    ("inputs:\n  - name: x\n    datatype: FP32\n    shape: [1]\n", 2, "'inputs[0].dims' is required"),
    ("instance_group:\n  - count: 2\n", 1,
     "unknown field 'instance_group' (did you mean 'instance_count' and 'processor'?)"),
    ("platform: onnxruntime_onnx\n", 1, "unknown field 'platform' (did you mean 'backend'?)"),
    ("max_batch_size: 4\ndynamic_batching:\n  max_queue_delay_microseconds: 100\n  default_priority_level: 2\n", 4,
     "unknown field 'dynamic_batching.default_priority_level' (did you mean 'priority', at the top level?)"),
    ("dynamic_batching:\n  max_queue_delay_ms: 100\n", 2,
     "unknown field 'dynamic_batching.max_queue_delay_ms' (did you mean 'max_queue_delay_microseconds'?)"),
    ("version_policy: {latest: {num_versions: 1}}\n", 1,
     "unknown field 'version_policy' (a Triton field edgeplex does not read: remove it)"),
    ("outputs:\n  - name: y\n    datatype: FLOAT\n    dims: [2]\n", 3,
     "'outputs[0].datatype' must be a KServe V2 datatype (BOOL, UINT8, UINT16, UINT32, UINT64, INT8, INT16, INT32, "
     "INT64, FP16, FP32, FP64, BYTES; Triton's TYPE_ names are read too), got 'FLOAT' (did you mean 'FP32'?)"),
    ("inputs:\n  - name: x\n    datatype: FP32\n    dims: [3, x]\n", 4, "'inputs[0].dims[1]' must be an integer, got 'x'"),
    ("inputs:\n  - x\n", 2, "'inputs[0]' must be a mapping with the fields name, datatype, dims, got 'x'"),
    ("inputs: x\n", 1, "'inputs' must be a list of mappings with the fields name, datatype, dims, got 'x'"),
    ("threads: two\n", 1, "'threads' must be an integer from 0 to 256, got 'two'"),
    ("instance_count: 0\n", 1, "'instance_count' must be greater than or equal to 1, got 0"),
    ("slo_ms: 0\n", 1, "'slo_ms' must be greater than 0, got 0"),
    ("pinned: maybe\n", 1, "'pinned' must be a boolean (true or false), got 'maybe'"),
    ("timeout_action: runn\n", 1, "'timeout_action' must be 'reject' or 'run', got 'runn' (did you mean 'run'?)"),
    ("backend: onnxruntim\n", 1, "'backend' must be 'onnxruntime' or 'openvino' (Triton's 'onnxruntime_onnx' is "
     "read as 'onnxruntime'), got 'onnxruntim' (did you mean 'onnxruntime'?)"),
    ("parameters:\n  max_queue_size: 16\n", 2, "'parameters.max_queue_size' must be a string (quote it: \"16\"), got 16"),
    ("processor: CUDA 0\n", 1, "'processor' must be 'cpu' or a processor such as 'cuda:0' or 'gpu:0' "
     "(see GET /v2/edgeplex/processors), got 'CUDA 0'"),
    ("max_batch_size: 4\ndynamic_batching:\n  preferred_batch_size: [0, 2]\n", 3,
     "'dynamic_batching.preferred_batch_size' must all be 1 or more, got [0, 2]"),
]


@pytest.mark.parametrize("text, line, expected", YAML_MISTAKES, ids=[m[2][:40] for m in YAML_MISTAKES])
def test_yaml_mistakes_are_worded_for_people(tmp_path: Path, text: str, line: int, expected: str) -> None:
    path = tmp_path / "m" / "config.yaml"
    path.parent.mkdir()
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        _load_named(path)
    assert f"{path}:{line}: {expected}" in info.value.message.splitlines()
    assert info.value.http_status == 400
    assert " a input" not in info.value.message and "Input should" not in info.value.message


def test_several_problems_are_all_reported_one_per_line_in_file_order(tmp_path: Path) -> None:
    path = tmp_path / "config.yaml"
    path.write_text(
        "name: m\n"
        "instance_count: 0\n"
        "max_batch: 4\n"
        "inputs:\n"
        "  - name: x\n"
        "    datatype: FP32\n"
        "    dims: [0]\n"
        "max_batch_size: -1\n"
    )
    with pytest.raises(ConfigError) as info:
        _load(path)
    assert info.value.message.splitlines() == [
        f"{path}:2: 'instance_count' must be greater than or equal to 1, got 0",
        f"{path}:3: unknown field 'max_batch' (did you mean 'max_batch_size'?)",
        f"{path}:7: 'inputs[0].dims' must be positive or -1 (any size), got [0]",
        f"{path}:8: 'max_batch_size' must be greater than or equal to 0, got -1",
    ]


def test_fields_not_from_a_file_are_named_without_a_line(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        validate_config({"name": "m", "max_batch": 1, "inputs": [{"name": "x", "datatype": "FP32", "dims": [0]}]},
                        "zoo:m")
    assert info.value.message.splitlines() == [  # in the order of ModelConfig's fields
        "zoo:m: 'inputs[0].dims' must be positive or -1 (any size), got [0]",
        "zoo:m: unknown field 'max_batch' (did you mean 'max_batch_size'?)",
    ]


def test_invalid_yaml_and_non_mapping(tmp_path: Path) -> None:
    bad = tmp_path / "config.yaml"
    bad.write_text("name: m\ninputs: [unclosed\n")
    with pytest.raises(ConfigError, match=rf"^{bad}:3: invalid YAML: "):
        read_config_file(bad, "m")
    bad.write_text("- a\n- b\n")
    with pytest.raises(ConfigError, match=r"config\.yaml:1: expected a mapping of fields \(name: value\), got a list"):
        read_config_file(bad, "m")
    with pytest.raises(ConfigError, match="cannot read"):
        read_config_file(tmp_path / "absent.yaml", "m")


def test_bad_model_name(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"'name' may contain only letters, digits, '_', '\.' and '-', got 'a/b'"):
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


PBTXT_MISTAKES = [
    ('name: "m"\nmax_batch_sise: 4\n', 2, "unknown field 'max_batch_sise' (did you mean 'max_batch_size'?)"),
    ('name: "m"\ninput [\n  {\n    name: "x"\n    dim: [ 1 ]\n  }\n]\n', 5,
     "unknown field 'dim' in an input (did you mean 'dims'?)"),
    ('input [ { name: "x"\n  data_type: TYPE_FLOAT dims: [ 1 ] } ]\n', 2,
     "unknown value TYPE_FLOAT (expected one of TYPE_BOOL, TYPE_UINT8, TYPE_UINT16, TYPE_UINT32, TYPE_UINT64, "
     "TYPE_INT8, TYPE_INT16, TYPE_INT32, TYPE_INT64, TYPE_FP16, TYPE_FP32, TYPE_FP64, TYPE_STRING, TYPE_BF16) "
     "(did you mean 'TYPE_FP32'?)"),
    ('name: "m"\nmax_batch_size: "eight"\n', 2, 'expected an integer, got "eight"'),
    ('name: "m"\nplatform: "tensorflow_savedmodel"\n', 2, "'platform' must be 'onnxruntime' or 'openvino' "
     "(Triton's 'onnxruntime_onnx' is read as 'onnxruntime'), got 'tensorflow_savedmodel'"),
    # Fields valid for Triton's schema but not for edgeplex: named as the pbtxt spells them.
    ('input [\n  { name: "a" data_type: TYPE_FP32 dims: [ 3 ] },\n  { name: "b" data_type: TYPE_FP32 dims: [ 0 ] }\n]\n',
     3, "'input[1].dims' must be positive or -1 (any size), got [0]"),
    ('name: "m"\nmax_batch_size: 8\ndynamic_batching {\n  default_priority_level: 20\n}\n', 4,
     "'dynamic_batching.default_priority_level' must be less than or equal to 16, got 20"),
    ('name: "m"\ninstance_group [\n  { count: 40 },\n  { count: 40 }\n]\n', 2,
     "'instance_group' must be less than or equal to 64, got 80"),
]


@pytest.mark.parametrize("text, line, expected", PBTXT_MISTAKES, ids=[m[2][:40] for m in PBTXT_MISTAKES])
def test_pbtxt_mistakes_are_worded_for_people(tmp_path: Path, text: str, line: int, expected: str) -> None:
    path = tmp_path / "m" / "config.pbtxt"
    path.parent.mkdir()
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        _load_named(path)
    assert info.value.message == f"{path}:{line}: {expected}"


def test_pbtxt_syntax_error_names_the_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "config.pbtxt"
    path.write_text('name: "m"\ninput [ { name: "x"\n')
    with pytest.raises(ConfigError) as info:
        read_config_file(path, "m")
    assert info.value.message == f'{path}:2: invalid config.pbtxt: Expected "}}"'


def test_pbtxt_lines_follow_comments_and_repeated_blocks(tmp_path: Path) -> None:
    """`input { } input { }` and `input [ { }, { } ]` number the same way; comments take lines."""
    path = tmp_path / "config.pbtxt"
    path.write_text(
        '# a comment\nname: "m"\ninput { name: "a" data_type: TYPE_FP32 dims: [ 1 ] }\n'
        '# another\ninput {\n  name: "b"\n  data_type: TYPE_FP32\n  dims: [ -2 ]\n}\n'
    )
    with pytest.raises(ConfigError) as info:
        _load(path)
    assert info.value.message == f"{path}:8: 'input[1].dims' must be positive or -1 (any size), got [-2]"


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


# -- settings: each problem names the setting, its flag, or the variable it came from --------------


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    import os

    for name in list(os.environ):
        if name.upper().startswith("EDGEPLEX_"):
            monkeypatch.delenv(name)
    return monkeypatch


SETTINGS_MISTAKES = [
    ({"http_prot": 9000}, "invalid setting: unknown setting 'http_prot' (did you mean 'http_port'?)"),
    ({"cores": 0}, "invalid setting: setting 'cores' = 0 (--cores): must be greater than or equal to 1"),
    ({"models": "a"}, None),  # a comma-separated string is fine
    ({"policy": "paretto"}, "invalid setting: setting 'policy' = 'paretto' (--policy): must be 'config', 'static', "
                            "'balance' or 'pareto' (did you mean 'pareto'?)"),
    ({"http_port": "eighty"}, "invalid setting: setting 'http_port' = 'eighty' (--http-port): must be an integer "
                              "from 0 to 65535"),
    ({"memory_budget": "lots"}, "invalid setting: setting 'memory_budget' (--memory-budget): 'lots' is not "
                                "a size (examples: 1GiB, 512MB, 800000000)"),
]


@pytest.mark.parametrize("given, expected", SETTINGS_MISTAKES)
def test_a_bad_setting_names_it_and_its_flag(clean_env: pytest.MonkeyPatch, given: dict[str, object],
                                             expected: str | None) -> None:
    if expected is None:
        ServerConfig(**given)
        return
    with pytest.raises(ConfigError) as info:
        ServerConfig(**given)
    assert info.value.message == expected


def test_a_bad_variable_names_it(clean_env: pytest.MonkeyPatch) -> None:
    clean_env.setenv("EDGEPLEX_SCHEDULING", "lifo")
    with pytest.raises(ConfigError) as info:
        ServerConfig()
    assert info.value.message == (
        "invalid setting: environment variable EDGEPLEX_SCHEDULING='lifo' (setting 'scheduling'): "
        "must be 'priority' or 'fifo' (did you mean 'fifo'?)"
    )


def test_several_bad_settings_are_listed_one_per_line(clean_env: pytest.MonkeyPatch) -> None:
    clean_env.setenv("EDGEPLEX_GRPC_PORT", "70000")
    with pytest.raises(ConfigError) as info:
        ServerConfig(drain_seconds=-1, tls_cert="c.pem")
    assert info.value.message.splitlines() == [
        "invalid settings:",
        "  environment variable EDGEPLEX_GRPC_PORT='70000' (setting 'grpc_port'): must be less than or equal to 65535",
        "  setting 'drain_seconds' = -1 (--drain-seconds): must be greater than or equal to 0",
        "  unknown setting 'tls_cert'",
    ]


@pytest.mark.parametrize("variable, meant", [("EDGEPLEX_HTTP_PROT", "EDGEPLEX_HTTP_PORT"),
                                              ("EDGEPLEX_MODEL", "EDGEPLEX_MODELS"),
                                              ("edgeplex_memory_budjet", "EDGEPLEX_MEMORY_BUDGET")])
def test_a_mistyped_variable_is_refused_not_ignored(clean_env: pytest.MonkeyPatch, variable: str, meant: str) -> None:
    clean_env.setenv(variable, "1")
    with pytest.raises(ConfigError) as info:
        ServerConfig()
    assert info.value.message == (
        f"invalid setting: environment variable {variable} is not a setting (did you mean {meant}?)"
    )


def test_variables_unlike_any_setting_are_left_alone(clean_env: pytest.MonkeyPatch) -> None:
    """edgeplex has variables that are not serve's settings (the cache, the zoo, test switches)."""
    from edgeplex.config import LogSettings

    for name in ("EDGEPLEX_CACHE", "EDGEPLEX_ZOO", "EDGEPLEX_REQUIRE_BROWSER", "EDGEPLEX_FUZZ_EXAMPLES"):
        clean_env.setenv(name, "1")
    assert ServerConfig().http_port == 8000
    clean_env.setenv("EDGEPLEX_HTTP_PROT", "1")
    assert LogSettings().log_level == "info"  # other commands read only their logging options
