"""Variants: each method on a tiny convolutional model, their metadata, failures that leave the
repository as it was, serving a variant through the engine, and the task metrics on hand-made arrays."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from models import add_model, conv_model, int_model, write_config
from onnx import TensorProto, helper, numpy_helper

from edgeplex.backends import ExecutionConfig
from edgeplex.cli import main
from edgeplex.config import ModelConfig
from edgeplex.engine import Engine, InferRequest
from edgeplex.engine.placement import InstanceGroup, ModelPlacement
from edgeplex.repository import Repository
from edgeplex.tuning.fidelity import (
    CALIBRATION_SEED,
    EVALUATION_SEED,
    Fidelity,
    FidelityError,
    box_agreement,
    box_f1,
    compare,
    ctc_greedy_decode,
    decision_agreement,
    detections,
    mask_agreement,
    sample_inputs,
    text_agreement,
    top1_agreement,
)
from edgeplex.tuning.variants import VariantError, optimize, pruned_name, requested_variants
from edgeplex.variant_layout import list_variants, variant_files

SAMPLES = 8
WEIGHTS = ("c1", "c2", "m1", "g1")


def _repo(root: Path, constants: bool = False) -> Path:
    conv_model(root / "conv" / "1" / "model.onnx", constants=constants)
    write_config(root / "conv", max_batch_size=8)
    add_model(root / "add" / "1" / "model.onnx")
    int_model(root / "sub" / "1" / "model.onnx")
    return root


def _model(root: Path, name: str = "conv") -> tuple[Path, ModelConfig]:
    repository = Repository(root)
    source = repository.source(name)
    return source.versions[source.latest_version], repository.load_config(source)


def _snapshot(root: Path) -> dict[str, bytes | None]:
    """Every file's bytes and every folder (None) under `root`."""
    return {str(p.relative_to(root)): (p.read_bytes() if p.is_file() else None) for p in sorted(root.rglob("*"))}


def _run(path: Path, inputs: dict[str, np.ndarray]) -> np.ndarray:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return np.asarray(session.run(None, inputs)[0])


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    return _repo(tmp_path / "repo")


# --- each method ----------------------------------------------------------------------------------

@pytest.mark.parametrize(("variant", "max_ratio", "min_cosine"),
                         [("int8-dynamic", 0.45, 0.999), ("int8-static", 0.5, 0.999), ("fp16", 0.55, 0.999999)])
def test_method_shrinks_the_model_and_stays_close(repo: Path, variant: str, max_ratio: float, min_cosine: float) -> None:
    version_dir, config = _model(repo)
    info = optimize(version_dir, config, variant, samples=SAMPLES)
    assert info.path == version_dir / "variants" / f"{variant}.onnx" and info.path.is_file()
    assert info.size_bytes == info.path.stat().st_size < info.original_size_bytes
    assert info.size_ratio < max_ratio
    f = info.fidelity
    assert f.samples == SAMPLES and f.task_metric is None and f.task_agreement is None
    assert f.cosine >= min_cosine and 0 < f.max_abs_error < 0.2 and 0 < f.mean_abs_error <= f.max_abs_error
    assert info.loss == pytest.approx(1 - f.cosine) and info.loss < 0.001
    assert info.onnxruntime == ort.__version__
    # What the metadata says is what the file does: the evaluation inputs, again, within the recorded error.
    for x in sample_inputs("conv", config, info.source_sha256, SAMPLES, EVALUATION_SEED):
        error = np.abs(_run(info.path, x) - _run(version_dir / "model.onnx", x)).max()
        assert error <= f.max_abs_error + 1e-6
    meta = json.loads((version_dir / "variants" / f"{variant}.json").read_text())
    assert {"variant", "method", "parameters", "file", "size_bytes", "original_size_bytes", "fidelity", "loss",
            "created_at", "onnxruntime"} <= set(meta)
    assert meta["file"] == f"{variant}.onnx" and meta["fidelity"]["samples"] == SAMPLES
    assert list_variants(version_dir) == {variant: info}
    assert not [p for p in (version_dir / "variants").iterdir() if p.name.startswith(".")]  # no temp file left


def test_static_int8_is_per_channel_qdq_with_calibration(repo: Path) -> None:
    version_dir, config = _model(repo)
    info = optimize(version_dir, config, "int8-static", samples=SAMPLES)
    p = info.parameters
    assert (p["format"], p["per_channel"], p["activation_type"], p["weight_type"]) == ("QDQ", True, "QUInt8", "QInt8")
    assert p["calibration_samples"] == SAMPLES and p["calibration_seed"] == CALIBRATION_SEED
    ops = {node.op_type for node in onnx.load(str(info.path)).graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops


@pytest.mark.parametrize("constants", [False, True])
def test_pruning_reaches_the_sparsity(tmp_path: Path, constants: bool) -> None:
    version_dir, config = _model(_repo(tmp_path, constants=constants))
    info = optimize(version_dir, config, pruned_name(0.5), samples=SAMPLES)
    assert info.variant == "pruned-50" and info.method == "magnitude_pruning"
    assert info.parameters["tensors"] == len(WEIGHTS)
    assert info.parameters["achieved_sparsity"] == pytest.approx(0.5, abs=0.01)
    model = onnx.load(str(info.path))
    tensors = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    tensors.update({n.output[0]: numpy_helper.to_array(n.attribute[0].t) for n in model.graph.node
                    if n.op_type == "Constant"})
    for name in WEIGHTS:
        assert (tensors[name] == 0).mean() == pytest.approx(0.5, abs=0.01)
    assert all((tensors[b] != 0).all() for b in ("b1", "b2", "b3", "b4"))  # biases kept
    assert 0 < info.loss < 1 and info.fidelity.max_abs_error > 0
    assert info.size_ratio == pytest.approx(1.0, abs=0.05)  # dense storage: pruning alone does not shrink the file


def test_pruned_names() -> None:
    assert pruned_name(0.5) == "pruned-50" and pruned_name(0.25) == "pruned-25"
    for bad in (0.0, 1.0, 0.001):
        with pytest.raises(ValueError):
            pruned_name(bad)


# --- metadata --------------------------------------------------------------------------------------

def test_list_variants_skips_corrupt_and_stale_metadata(repo: Path, caplog: pytest.LogCaptureFixture) -> None:
    version_dir, config = _model(repo)
    fp16 = optimize(version_dir, config, "fp16", samples=SAMPLES)
    folder = version_dir / "variants"
    (folder / "broken.json").write_text("{not json")
    (folder / "orphan.json").write_text((folder / "fp16.json").read_text().replace('"fp16', '"orphan'))
    with caplog.at_level(logging.WARNING):
        assert list(list_variants(version_dir)) == ["fp16"]
    assert "broken.json" in caplog.text and "orphan.json" in caplog.text
    assert variant_files(version_dir) == {"fp32": (version_dir / "model.onnx", 0.0), "fp16": (fp16.path, fp16.loss)}
    conv_model(version_dir / "model.onnx", seed=1)  # the original changed: its old variants no longer apply
    assert variant_files(version_dir) == {"fp32": (version_dir / "model.onnx", 0.0)}
    assert list(list_variants(version_dir)) == ["fp16"]  # without the source to check against


# --- failures --------------------------------------------------------------------------------------

def test_a_method_that_cannot_apply_leaves_the_repository_untouched(repo: Path) -> None:
    before = _snapshot(repo)
    version_dir, config = _model(repo, "add")
    with pytest.raises(VariantError, match=r"model 'add': pruned-50 \(magnitude_pruning\) failed: .*no constant Conv"):
        optimize(version_dir, config, "pruned-50", samples=SAMPLES)
    version_dir, config = _model(repo, "sub")  # integer arithmetic: nothing to quantise
    with pytest.raises(VariantError, match=r"model 'sub': int8-static .*quantised no operator"):
        optimize(version_dir, config, "int8-static", samples=SAMPLES)
    with pytest.raises(VariantError, match="unknown variant 'int4'"):
        optimize(version_dir, config, "int4", samples=SAMPLES)
    assert _snapshot(repo) == before


def test_a_variant_that_does_not_load_leaves_the_old_one_in_place(repo: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    version_dir, config = _model(repo)
    optimize(version_dir, config, "fp16", samples=SAMPLES)
    before = _snapshot(repo)
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 10])
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 3, 16, 16])
    broken = helper.make_model(helper.make_graph([helper.make_node("NoSuchOp", ["x"], ["y"])], "broken", [x], [y]))
    monkeypatch.setattr("onnxruntime.transformers.float16.convert_float_to_float16", lambda model, **kw: broken)
    with pytest.raises(VariantError, match=r"model 'conv': fp16 \(float16\) failed: .*NoSuchOp"):
        optimize(version_dir, config, "fp16", samples=SAMPLES)
    assert _snapshot(repo) == before


def test_a_variant_with_overflowing_outputs_is_refused(repo: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    version_dir, config = _model(repo)
    before = _snapshot(repo)
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 3, 16, 16])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 10])
    huge = helper.make_tensor("w", TensorProto.FLOAT, [768, 10], np.full((768, 10), 1e38, np.float32).tobytes(), raw=True)
    nodes = [helper.make_node("Flatten", ["x"], ["f"]), helper.make_node("MatMul", ["f", "w"], ["y"])]
    overflowing = helper.make_model(helper.make_graph(nodes, "inf", [x], [y], initializer=[huge]),
                                    opset_imports=[helper.make_opsetid("", 17)])
    overflowing.ir_version = 9
    monkeypatch.setattr("onnxruntime.transformers.float16.convert_float_to_float16", lambda model, **kw: overflowing)
    with pytest.raises(VariantError, match=r"model 'conv': fp16 \(float16\) failed: output 'y' has non-finite values"):
        optimize(version_dir, config, "fp16", samples=SAMPLES)
    assert _snapshot(repo) == before


def test_compare() -> None:
    same = compare([{"y": np.ones((1, 2), np.float32)}], [{"y": np.ones((1, 2), np.float32)}])
    assert same.max_abs_error == 0 and same.cosine == pytest.approx(1) and same.loss == pytest.approx(0, abs=1e-12)
    with pytest.raises(FidelityError, match="shape"):
        compare([{"y": np.ones((1, 2), np.float32)}], [{"y": np.ones((1, 3), np.float32)}])
    with pytest.raises(FidelityError, match="missing"):
        compare([{"y": np.ones((1, 2), np.float32)}], [{"z": np.ones((1, 2), np.float32)}])


# --- serving -----------------------------------------------------------------------------------------

@pytest.mark.parametrize(("backend", "variant"), [("onnxruntime", "int8-static"), ("openvino", "fp16")])
def test_the_engine_serves_a_variant_within_its_recorded_tolerance(repo: Path, backend: str, variant: str) -> None:
    version_dir, config = _model(repo)
    info = optimize(version_dir, config, variant, samples=SAMPLES)
    engine = Engine(repo, cores=1)
    try:
        engine.load_all(["conv"])
        group = InstanceGroup(ExecutionConfig(backend, "cpu", variant, 1, 8), 1)
        engine.apply(ModelPlacement("conv", [group], reason=f"test: {variant}"))
        (instance,) = engine.manager.runner("conv").instances
        assert (instance.config.backend, instance.config.variant) == (backend, variant)
        for x in sample_inputs("conv", config, info.source_sha256, SAMPLES, EVALUATION_SEED):
            served = engine.infer(InferRequest("conv", x)).outputs["y"]
            assert np.abs(served - _run(version_dir / "model.onnx", x)).max() <= info.fidelity.max_abs_error + 1e-5
    finally:
        engine.close()


# --- task metrics --------------------------------------------------------------------------------------

def _one_hot(steps: list[int], classes: int = 6) -> np.ndarray:
    return np.eye(classes, dtype=np.float32)[steps]


def test_ctc_greedy_decoding_and_text_agreement() -> None:
    assert ctc_greedy_decode(_one_hot([0, 3, 3, 0, 3, 5, 5, 0])[None]) == [[3, 3, 5]]
    ref = np.stack([_one_hot([1, 1, 0, 2]), _one_hot([4, 0, 4, 4])])
    same_text = np.stack([_one_hot([1, 0, 0, 2]), _one_hot([4, 0, 0, 4])])  # other frames, same text
    other = np.stack([_one_hot([1, 1, 0, 2]), _one_hot([4, 4, 4, 4])])  # "44" -> "4"
    assert text_agreement(ref, same_text).agreement == 1.0
    assert text_agreement(ref, other).agreement == 0.5


def test_top1_and_decision_agreement() -> None:
    ref = np.array([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4], [0.3, 0.7]])
    var = np.array([[0.8, 0.2], [0.4, 0.6], [0.4, 0.6], [0.1, 0.9]])
    assert top1_agreement(ref, var).agreement == 0.75
    assert decision_agreement(np.array([[0.9], [0.4], [0.6]]), np.array([[0.7], [0.45], [0.4]])).agreement == pytest.approx(2 / 3)


def _yolo(boxes: list[tuple[float, float, float, float, int, float]], n: int = 8) -> np.ndarray:
    """[22, n] YOLOv8 output with the given (cx, cy, w, h, class, score) and empty anchors elsewhere."""
    out = np.zeros((22, n), np.float32)
    for i, (cx, cy, w, h, cls, score) in enumerate(boxes):
        out[:4, i] = (cx, cy, w, h)
        out[4 + cls, i] = score
    return out


def test_box_agreement_matches_same_class_boxes_by_iou() -> None:
    ref = _yolo([(50, 50, 20, 20, 0, 0.9), (150, 150, 40, 40, 5, 0.8), (300, 300, 10, 10, 2, 0.2)])  # last: < 0.25
    boxes, classes = detections(ref)
    assert len(boxes) == 2 and list(classes) == [0, 5]
    np.testing.assert_allclose(boxes[0], [40, 40, 60, 60])
    shifted = _yolo([(52, 51, 20, 20, 0, 0.7), (150, 150, 40, 40, 6, 0.8)])  # one kept, one of another class
    assert box_f1(detections(ref), detections(shifted)) == pytest.approx(0.5)
    duplicate = _yolo([(50, 50, 20, 20, 0, 0.9), (51, 50, 20, 20, 0, 0.85), (150, 150, 40, 40, 5, 0.8)])
    assert len(detections(duplicate)[0]) == 2  # non-maximum suppression drops the overlapping twin
    score = box_agreement(np.stack([ref, _yolo([])]), np.stack([shifted, _yolo([])]))
    assert score.agreement == pytest.approx((0.5 + 1.0) / 2) and score.support == 1  # empty vs empty: agreement 1
    far = _yolo([(80, 80, 20, 20, 0, 0.9)])  # IoU with the reference box below 0.5
    assert box_f1(detections(_yolo([(50, 50, 20, 20, 0, 0.9)])), detections(far)) == 0.0


def test_mask_agreement_is_the_iou_of_the_binarised_maps() -> None:
    ref = np.zeros((2, 1, 4, 4), np.float32)
    ref[0, 0, :2] = 0.9  # 8 pixels
    var = np.zeros_like(ref)
    var[0, 0, :1] = 0.5  # 4 pixels, inside
    var[0, 0, 3, 0] = 0.2  # below 0.3
    score = mask_agreement(ref, var)
    assert score.agreement == pytest.approx((0.5 + 1.0) / 2) and score.support == 1


def test_loss_is_one_minus_task_agreement_or_cosine() -> None:
    base = {"max_abs_error": 0.1, "mean_abs_error": 0.01, "cosine": 0.98, "samples": 4}
    assert Fidelity(**base, task_metric="top1_agreement", task_agreement=0.75, task_support=4).loss == 0.25
    assert Fidelity(**base, task_metric=None, task_agreement=None).loss == pytest.approx(0.02)
    # A task metric with nothing to judge (no detections on either side) falls back to the cosine.
    assert Fidelity(**base, task_metric="box_f1", task_agreement=1.0, task_support=0).loss == pytest.approx(0.02)
    assert Fidelity(**{**base, "cosine": -0.5}, task_metric=None, task_agreement=None).loss == 1.0


def test_calibration_and_evaluation_inputs_differ(repo: Path) -> None:
    _, config = _model(repo)
    calibration = sample_inputs("conv", config, "no-zoo-hash", 2, CALIBRATION_SEED)
    evaluation = sample_inputs("conv", config, "no-zoo-hash", 2, EVALUATION_SEED)
    assert calibration[0]["x"].shape == (1, 3, 16, 16) and calibration[0]["x"].dtype == np.float32
    assert not np.array_equal(calibration[0]["x"], evaluation[0]["x"])
    _, sub = _model(repo, "sub")
    (ints,) = sample_inputs("sub", sub, "no-zoo-hash", 1, 0)
    assert ints["a"].dtype == np.int32 and 0 <= ints["a"].min() and ints["a"].max() < 10


# --- command line ----------------------------------------------------------------------------------------

def test_requested_variants() -> None:
    assert requested_variants() == ["int8-dynamic", "int8-static", "fp16", "pruned-50"]
    assert requested_variants(["static"], True, [0.3, 0.3]) == ["int8-static", "fp16", "pruned-30"]


def test_optimize_command(repo: Path, capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["--quiet", "optimize", "conv", "--repository", str(repo), "--samples", str(SAMPLES)]
    assert main([*argv, "--fp16", "--prune", "0.25"]) == 0
    out = capsys.readouterr().out
    assert "fp16" in out and "pruned-25" in out and "cosine" in out
    assert set(list_variants(repo / "conv" / "1")) == {"fp16", "pruned-25"}
    assert main(["models", "--repository", str(repo)]) == 0
    listed = [line.split() for line in capsys.readouterr().out.splitlines() if "variant" in line]
    assert [(words[1], words[5]) for words in listed] == [("fp16", "loss"), ("pruned-25", "loss")]
    before = _snapshot(repo)
    assert main(["--quiet", "optimize", "sub", "--repository", str(repo), "--int8", "static", "--samples", "2"]) == 1
    out = capsys.readouterr().out
    assert "int8-static failed: model 'sub'" in out and "quantised no operator" in out
    assert _snapshot(repo) == before
    with pytest.raises(SystemExit):
        main(["--quiet", "optimize", "conv", "--repository", str(repo), "--prune", "1.5"])
    assert "sparsity must be within" in capsys.readouterr().err


# --- the real zoo ------------------------------------------------------------------------------------------

@pytest.mark.integration
def test_static_int8_of_magika_keeps_its_predictions(zoo_repo: Path, tmp_path: Path) -> None:
    shutil.copytree(zoo_repo / "magika", tmp_path / "magika", ignore=shutil.ignore_patterns("variants"))
    version_dir, config = _model(tmp_path, "magika")
    info = optimize(version_dir, config, "int8-static", samples=16)
    f = info.fidelity
    assert f.task_metric == "top1_agreement" and f.task_support == 16
    assert f.task_agreement is not None and f.task_agreement >= 0.9
    assert info.loss == pytest.approx(1 - f.task_agreement) and info.size_ratio < 0.35
    assert list(list_variants(version_dir, version_dir / "model.onnx")) == ["int8-static"]
