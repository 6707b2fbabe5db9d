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


def test_config_naming_an_input_the_model_lacks(tmp_path: Path) -> None:
    add_model(tmp_path / "add" / "1" / "model.onnx")
    write_config(tmp_path / "add", inputs=[{"name": "image", "datatype": "FP32", "dims": [4]}])
    with pytest.raises(ConfigError) as info:
        _config(tmp_path, "add")
    message = info.value.message
    assert str(tmp_path / "add" / "config.yaml") in message
    assert "field 'inputs.0.name'" in message
    assert "'image'" in message and "it has: x" in message


def test_config_naming_an_output_the_model_lacks(tmp_path: Path) -> None:
    add_model(tmp_path / "add" / "1" / "model.onnx")
    write_config(tmp_path / "add", outputs=[{"name": "y", "datatype": "FP32", "dims": [4]},
                                            {"name": "w", "datatype": "FP32", "dims": [4]}])
    with pytest.raises(ConfigError, match=r"field 'outputs\.1\.name': 'w'"):
        _config(tmp_path, "add")


def test_config_with_wrong_rank(tmp_path: Path) -> None:
    add_model(tmp_path / "add" / "1" / "model.onnx")
    # With max_batch_size > 0 the dims exclude the batch: [-1, 4] has one dimension too many.
    write_config(tmp_path / "add", max_batch_size=4, inputs=[{"name": "x", "datatype": "FP32", "dims": [-1, 4]}])
    with pytest.raises(ConfigError, match=r"field 'inputs\.0\.dims': \[-1, 4\] has rank 2"):
        _config(tmp_path, "add")


def test_config_with_conflicting_fixed_dim(tmp_path: Path) -> None:
    add_model(tmp_path / "add" / "1" / "model.onnx")
    write_config(tmp_path / "add", max_batch_size=4, inputs=[{"name": "x", "datatype": "FP32", "dims": [5]}])
    with pytest.raises(ConfigError, match=r"field 'inputs\.0\.dims': \[5\].*\[4\]"):
        _config(tmp_path, "add")


def test_config_with_wrong_datatype(tmp_path: Path) -> None:
    int_model(tmp_path / "sub" / "1" / "model.onnx")
    write_config(tmp_path / "sub", inputs=[{"name": "a", "datatype": "FP32", "dims": [3]},
                                           {"name": "b", "datatype": "INT32", "dims": [3]}])
    with pytest.raises(ConfigError, match=r"field 'inputs\.0\.datatype': FP32 but the model has INT32"):
        _config(tmp_path, "sub")


def test_config_listing_only_some_inputs_is_refused(tmp_path: Path) -> None:
    # Like Triton: a model whose config omits one of its inputs could never be called.
    int_model(tmp_path / "sub" / "1" / "model.onnx")
    write_config(tmp_path / "sub", max_batch_size=2, inputs=[{"name": "a", "datatype": "INT32", "dims": [3]}])
    with pytest.raises(ConfigError, match=r"field 'inputs'.*'b'"):
        _config(tmp_path, "sub")


def test_batching_a_model_that_cannot_batch(tmp_path: Path) -> None:
    fixed_model(tmp_path / "fixed" / "1" / "model.onnx")
    write_config(tmp_path / "fixed", max_batch_size=4)
    with pytest.raises(ConfigError, match=r"field 'max_batch_size': 4 but .* no variable\s+first"):
        _config(tmp_path, "fixed")


def test_name_differs_from_folder(tmp_path: Path) -> None:
    add_model(tmp_path / "add" / "1" / "model.onnx")
    write_config(tmp_path / "add", name="plus")
    with pytest.raises(ConfigError, match=r"config\.yaml: field 'name': 'plus' differs from its folder 'add'"):
        _config(tmp_path, "add")


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
