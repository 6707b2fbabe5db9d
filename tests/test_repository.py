"""The model repository: layout, versions, auto-complete from the ONNX signature, and failures
that stay with their own model."""

from __future__ import annotations

import threading
from pathlib import Path

import onnx
import pytest
from models import add_model, fixed_model, int_model, write_config
from onnx import TensorProto, helper

from edgeplex.engine import Engine
from edgeplex.errors import ConfigError, ModelNotFound, ModelNotReady
from edgeplex.repository import AUTOCOMPLETE_MAX_BATCH, Repository, onnx_signature


def _config(root: Path, name: str):  # type: ignore[no-untyped-def]
    repo = Repository(root)
    return repo.load_config(repo.source(name))


def _specs(specs):  # type: ignore[no-untyped-def]
    return [(s.name, s.datatype, s.dims) for s in specs]


def _unrunnable_model(path: Path) -> Path:
    """A well-formed ONNX file (readable signature) that ONNX Runtime refuses to open."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 4])
    graph = helper.make_graph([helper.make_node("NoSuchOperator", ["x"], ["y"])], "bad", [x], [y])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 9
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))
    return path


# -- auto-complete -----------------------------------------------------------------------------


def test_autocomplete_without_config_batchable(tmp_path: Path) -> None:
    add_model(tmp_path / "add" / "1" / "model.onnx", width=5)
    config = _config(tmp_path, "add")
    assert config.name == "add"
    assert config.max_batch_size == AUTOCOMPLETE_MAX_BATCH == 4
    assert _specs(config.inputs) == [("x", "FP32", [5])]  # batch dimension excluded
    assert _specs(config.outputs) == [("y", "FP32", [5]), ("z", "FP32", [5])]


def test_autocomplete_without_config_fixed_shapes(tmp_path: Path) -> None:
    fixed_model(tmp_path / "fixed" / "1" / "model.onnx")
    config = _config(tmp_path, "fixed")
    assert config.max_batch_size == 0
    assert _specs(config.inputs) == [("x", "FP32", [2, 2]), ("k", "INT64", [])]
    assert _specs(config.outputs) == [("y", "FP32", [2, 2]), ("y2", "INT64", [])]


def test_autocomplete_int_types_and_initializers_skipped(tmp_path: Path) -> None:
    path = int_model(tmp_path / "sub" / "1" / "model.onnx")
    inputs, outputs = onnx_signature(path)
    assert inputs == [("a", "INT32", [-1, 3]), ("b", "INT32", [-1, 3])]
    assert outputs == [("out", "INT32", [-1, 3])]
    # `add` carries an initializer (`three`) that is not an input.
    add = add_model(tmp_path / "add" / "1" / "model.onnx")
    assert [name for name, _, _ in onnx_signature(add)[0]] == ["x"]


def test_partial_config_is_completed(tmp_path: Path) -> None:
    add_model(tmp_path / "add" / "1" / "model.onnx")
    write_config(tmp_path / "add", max_batch_size=16, instance_count=2)
    config = _config(tmp_path, "add")
    assert config.max_batch_size == 16
    assert config.instance_count == 2
    assert _specs(config.inputs) == [("x", "FP32", [4])]
    assert [s.name for s in config.outputs] == ["y", "z"]


def test_explicit_zero_batch_keeps_the_batch_dimension(tmp_path: Path) -> None:
    add_model(tmp_path / "add" / "1" / "model.onnx")
    write_config(tmp_path / "add", max_batch_size=0)
    config = _config(tmp_path, "add")
    assert config.max_batch_size == 0
    assert _specs(config.inputs) == [("x", "FP32", [-1, 4])]


def test_stated_tensors_are_checked_and_kept(tmp_path: Path) -> None:
    add_model(tmp_path / "add" / "1" / "model.onnx")
    write_config(
        tmp_path / "add",
        max_batch_size=2,
        inputs=[{"name": "x", "datatype": "FP32", "dims": [4]}],
        outputs=[{"name": "z", "datatype": "FP32", "dims": [-1]}],
    )
    config = _config(tmp_path, "add")
    assert _specs(config.inputs) == [("x", "FP32", [4])]
    assert _specs(config.outputs) == [("z", "FP32", [-1])]


# Configs that validate but do not fit their model: (model, config.yaml, each line of the message
# as `line: text`). Every problem is listed, at the line of its field.
MISFITS = [
    ("add", "inputs:\n  - name: image\n    datatype: FP32\n    dims: [4]\n",
     ["2: 'inputs[0].name' is 'image', which is not one of the model's inputs (it has: x)"]),
    ("add", "outputs:\n  - {name: y, datatype: FP32, dims: [4]}\n  - {name: w, datatype: FP32, dims: [4]}\n",
     ["3: 'outputs[1].name' is 'w', which is not one of the model's outputs (it has: y, z)"]),
    ("add", "max_batch_size: 4\ninputs:\n  - name: x\n    datatype: FP32\n    dims: [-1, 4]\n",
     ["5: 'inputs[0].dims' is [-1, 4], 2 dimensions, but the model's input 'x' has 1: [4] (the batch dimension "
      "is left out when max_batch_size > 0)"]),
    ("add", "max_batch_size: 4\ninputs:\n  - name: x\n    datatype: FP32\n    dims: [5]\n",
     ["5: 'inputs[0].dims' is [5], which conflicts with the model's input 'x' [4]"]),
    ("sub", "inputs:\n  - {name: a, datatype: FP32, dims: [3]}\n  - {name: b, datatype: INT32, dims: [3]}\n",
     ["2: 'inputs[0].datatype' is FP32 but the model's input 'a' is INT32"]),
    ("sub", "max_batch_size: 2\ninputs:\n  - {name: a, datatype: INT32, dims: [3]}\n",
     ["2: 'inputs' needs every input of the model: input 'b' is not listed (list them all, or none to take "
      "them from the model)"]),
    ("fixed", "name: fixed\nmax_batch_size: 4\n",
     ["2: 'max_batch_size' is 4 but the model's tensors have no variable first (batch) dimension; use 0"]),
    ("fixed", "dynamic_batching: {}\n", ["1: 'dynamic_batching' needs max_batch_size > 0 (the model does not batch)"]),
    ("add", "max_batch_size: 2\ndynamic_batching:\n  preferred_batch_size: [2, 4]\n",
     ["3: 'dynamic_batching.preferred_batch_size' must not exceed max_batch_size 2, got [4]"]),
    ("add", "name: plus\n", ["1: 'name' is 'plus' but the model's folder is 'add' (they must be the same)"]),
    # Several at once, each at its own line.
    ("sub", "inputs:\n  - {name: a, datatype: FP32, dims: [3, 3]}\n  - {name: c, datatype: INT32, dims: [3]}\n"
     "outputs:\n  - {name: out, datatype: INT64, dims: [3]}\n",
     ["2: 'inputs[0].datatype' is FP32 but the model's input 'a' is INT32",
      "2: 'inputs[0].dims' is [3, 3], 2 dimensions, but the model's input 'a' has 1: [3] (the batch dimension "
      "is left out when max_batch_size > 0)",
      "3: 'inputs[1].name' is 'c', which is not one of the model's inputs (it has: a, b)",
      "5: 'outputs[0].datatype' is INT64 but the model's output 'out' is INT32"]),
]
_BUILD = {"add": add_model, "sub": int_model, "fixed": fixed_model}


@pytest.mark.parametrize("model, text, expected", MISFITS, ids=[m[2][0][:40] for m in MISFITS])
def test_a_config_that_does_not_fit_its_model(tmp_path: Path, model: str, text: str, expected: list[str]) -> None:
    _BUILD[model](tmp_path / model / "1" / "model.onnx")
    path = tmp_path / model / "config.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        _config(tmp_path, model)
    lines = info.value.message.splitlines()
    assert sorted(lines) == sorted(f"{path}:{row}" for row in expected)
    assert " a input" not in info.value.message and " a output" not in info.value.message


def test_a_pbtxt_that_does_not_fit_its_model_is_named_as_triton_spells_it(tmp_path: Path) -> None:
    int_model(tmp_path / "sub" / "1" / "model.onnx")
    path = tmp_path / "sub" / "config.pbtxt"
    path.write_text(
        'name: "sub"\nmax_batch_size: 8\ninput [\n  { name: "a" data_type: TYPE_INT32 dims: [ 3 ] },\n'
        '  {\n    name: "b"\n    data_type: TYPE_FP32\n    dims: [ 3 ]\n  }\n]\n'
    )
    with pytest.raises(ConfigError) as info:
        _config(tmp_path, "sub")
    assert info.value.message == f"{path}:7: 'input[1].data_type' is FP32 but the model's input 'b' is INT32"


def test_a_missing_model_file_points_at_default_model_filename(tmp_path: Path) -> None:
    (tmp_path / "m" / "1").mkdir(parents=True)
    (tmp_path / "m" / "config.yaml").write_text("max_batch_size: 0\ndefault_model_filename: net.onnx\n")
    with pytest.raises(ConfigError) as info:
        _config(tmp_path, "m")
    assert info.value.message == f"{tmp_path / 'm' / 'config.yaml'}:2: model file {tmp_path / 'm' / '1' / 'net.onnx'} is missing"


def test_missing_version_folder(tmp_path: Path) -> None:
    write_config(tmp_path / "empty", max_batch_size=0)
    (tmp_path / "empty" / "notes").mkdir()
    with pytest.raises(ConfigError, match=r"empty: no version folder"):
        _config(tmp_path, "empty")


def test_missing_model_file(tmp_path: Path) -> None:
    (tmp_path / "m" / "1").mkdir(parents=True)
    write_config(tmp_path / "m", default_model_filename="net.onnx")
    with pytest.raises(ConfigError, match=r"model file .*net\.onnx is missing"):
        _config(tmp_path, "m")


def test_versions_and_non_numeric_folders(tmp_path: Path) -> None:
    add_model(tmp_path / "add" / "1" / "model.onnx", width=4)
    add_model(tmp_path / "add" / "3" / "model.onnx", width=7)
    for ignored in ("latest", "v2", "0", ".git"):
        (tmp_path / "add" / ignored).mkdir()
    (tmp_path / "add" / "5").write_text("a file, not a version folder")
    repo = Repository(tmp_path)
    source = repo.source("add")
    assert sorted(source.versions) == [1, 3]
    assert source.latest_version == 3
    # The signature comes from the latest version.
    assert _specs(repo.load_config(source).inputs) == [("x", "FP32", [7])]


def test_scan_lists_model_folders_only(tmp_path: Path) -> None:
    add_model(tmp_path / "add" / "1" / "model.onnx")
    int_model(tmp_path / "sub" / "2" / "model.onnx")
    (tmp_path / ".hidden" / "1").mkdir(parents=True)
    (tmp_path / "has space").mkdir()
    (tmp_path / "README.md").write_text("not a model")
    found = Repository(tmp_path).scan()
    assert sorted(found) == ["add", "sub"]
    assert found["sub"].versions == {2: tmp_path / "sub" / "2"}
    assert found["add"].config_file is None


def test_scan_of_a_missing_repository(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="is not a directory"):
        Repository(tmp_path / "nowhere").scan()


def test_pbtxt_in_the_repository(tmp_path: Path) -> None:
    int_model(tmp_path / "sub" / "1" / "model.onnx")
    (tmp_path / "sub" / "config.pbtxt").write_text(
        'name: "sub"\nplatform: "onnxruntime_onnx"\nmax_batch_size: 8\n'
        'instance_group [ { count: 2 kind: KIND_CPU } ]\n'
    )
    config = _config(tmp_path, "sub")
    assert config.max_batch_size == 8
    assert config.instance_count == 2
    assert _specs(config.inputs) == [("a", "INT32", [3]), ("b", "INT32", [3])]


@pytest.mark.parametrize("name", ["..", ".", "a/b", "../add", "add/../add", "", "/etc", "add\\x"])
def test_path_traversal_names_are_not_found(tmp_path: Path, name: str) -> None:
    add_model(tmp_path / "repo" / "add" / "1" / "model.onnx")
    add_model(tmp_path / "outside" / "1" / "model.onnx")
    repo = Repository(tmp_path / "repo")
    with pytest.raises(ModelNotFound):
        repo.source(name)


def test_unknown_model_is_not_found(tmp_path: Path) -> None:
    with pytest.raises(ModelNotFound, match="'ghost'"):
        Repository(tmp_path).source("ghost")


# -- failures stay with their model ------------------------------------------------------------


def test_corrupt_model_fails_only_itself(tmp_path: Path) -> None:
    add_model(tmp_path / "add" / "1" / "model.onnx")
    int_model(tmp_path / "sub" / "1" / "model.onnx")
    (tmp_path / "corrupt" / "1").mkdir(parents=True)
    (tmp_path / "corrupt" / "1" / "model.onnx").write_bytes(b"\x08\x07garbage, not protobuf")
    _unrunnable_model(tmp_path / "badop" / "1" / "model.onnx")
    write_config(tmp_path / "typo", max_batch_sise=2)
    add_model(tmp_path / "typo" / "1" / "model.onnx")

    engine = Engine(tmp_path, cores=2)
    try:
        failures = engine.load_all()
        assert sorted(failures) == ["badop", "corrupt", "typo"]
        assert "not a readable ONNX model" in failures["corrupt"]
        assert "onnxruntime cannot load" in failures["badop"]
        assert "max_batch_sise" in failures["typo"]

        states = {s.name: s for s in engine.models()}
        assert states["add"].state == "READY" and states["sub"].state == "READY"
        for name in failures:
            assert states[name].state == "UNAVAILABLE"
            assert states[name].reason == failures[name]
        assert engine.ready()
        assert engine.is_ready("add") and not engine.is_ready("corrupt")
        with pytest.raises(ModelNotReady, match="not a readable ONNX model"):
            engine.manager.runner("corrupt")
    finally:
        engine.close()


def test_failed_version_does_not_leak_the_versions_opened_before_it(tmp_path: Path) -> None:
    add_model(tmp_path / "m" / "1" / "model.onnx")
    _unrunnable_model(tmp_path / "m" / "2" / "model.onnx")
    engine = Engine(tmp_path, cores=2)
    try:
        assert "onnxruntime cannot load" in engine.load_all()["m"]
        alive = [t.name for t in threading.enumerate() if t.name.startswith("edgeplex-m-")]
        assert alive == []
    finally:
        engine.close()


def test_traversal_through_the_engine(tmp_path: Path) -> None:
    add_model(tmp_path / "add" / "1" / "model.onnx")
    engine = Engine(tmp_path, cores=1)
    try:
        for name in ("..", "a/b", "../add"):
            with pytest.raises(ModelNotFound):
                engine.load(name)
            with pytest.raises(ModelNotFound):
                engine.config(name)
        assert set(engine.load_all(["..", "add"])) == {".."}
    finally:
        engine.close()
