"""Fidelity of a variant against its fp32 original: on inputs that look like the model's real ones.

Measures over every output: max and mean absolute error, cosine similarity. Task metrics where
the model has one (zoo models, identified by name and file hash): top-1 agreement (magika,
ppocr_cls), decoded-text agreement (ppocr_rec, CTC greedy), box agreement (yolov8n, F1 of
matched detections), mask IoU (ppocr_det) and speech-decision agreement (silero_vad).

`loss` is the one scalar the allocator bounds with a model's `max_fidelity_loss`: 1 - task
agreement, or 1 - the lowest cosine over the outputs when there is no task metric, or when the
task metric had nothing to judge (no sample where either side detected anything).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort

from ..config import ModelConfig
from ..repository import file_hash
from ..tensors import numpy_dtype
from ..variant_layout import Fidelity

Inputs = dict[str, np.ndarray]
Outputs = dict[str, np.ndarray]
# Seeds of the two input sets: calibration and evaluation never see the same sample.
CALIBRATION_SEED, EVALUATION_SEED = 1_000_000, 0


class FidelityError(ValueError):
    """A variant's outputs cannot be compared with the original's (names, shapes, non-finite values)."""


@dataclass(frozen=True)
class TaskScore:
    """A task metric's result: mean agreement over samples, and on how many it had something to judge."""

    agreement: float
    support: int


TaskFn = Callable[[np.ndarray, np.ndarray], TaskScore]


@dataclass(frozen=True)
class TaskMetric:
    """A model's task metric: its name, the output it reads, the function (reference, variant)."""

    name: str
    output: str
    fn: TaskFn


# --- measures ----------------------------------------------------------------------------------

def cosine(a: np.ndarray, b: np.ndarray) -> float:
    """Cosine similarity of two arrays, flattened; 1 when both are zero, 0 when one is."""
    x, y = a.astype(np.float64).ravel(), b.astype(np.float64).ravel()
    nx, ny = float(np.linalg.norm(x)), float(np.linalg.norm(y))
    if nx == 0.0 or ny == 0.0:
        return 1.0 if nx == ny else 0.0
    return float(np.clip(np.dot(x, y) / (nx * ny), -1.0, 1.0))


def top1_agreement(ref: np.ndarray, var: np.ndarray) -> TaskScore:
    """Fraction of samples (axis 0) whose argmax over the last axis is the same."""
    same = ref.reshape(len(ref), -1).argmax(-1) == var.reshape(len(var), -1).argmax(-1)
    return TaskScore(float(same.mean()), len(ref))


def ctc_greedy_decode(probs: np.ndarray, blank: int = 0) -> list[list[int]]:
    """CTC greedy decoding of [B, T, C]: argmax per step, repeats collapsed, blanks dropped."""
    decoded = []
    for steps in probs.argmax(-1):
        keep = np.ones(len(steps), bool)
        keep[1:] = steps[1:] != steps[:-1]
        decoded.append([int(c) for c in steps[keep] if c != blank])
    return decoded


def text_agreement(ref: np.ndarray, var: np.ndarray) -> TaskScore:
    """Fraction of samples whose CTC-decoded sequences are identical."""
    same = [a == b for a, b in zip(ctc_greedy_decode(ref), ctc_greedy_decode(var))]
    return TaskScore(float(np.mean(same)), len(same))


def _iou(box: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """IoU of one xyxy box with each row of `boxes`."""
    x1, y1 = np.maximum(box[0], boxes[:, 0]), np.maximum(box[1], boxes[:, 1])
    x2, y2 = np.minimum(box[2], boxes[:, 2]), np.minimum(box[3], boxes[:, 3])
    inter = np.clip(x2 - x1, 0, None) * np.clip(y2 - y1, 0, None)
    area = (box[2] - box[0]) * (box[3] - box[1])
    areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    return np.asarray(inter / np.maximum(area + areas - inter, 1e-9))


def detections(output: np.ndarray, score: float = 0.25, nms_iou: float = 0.45) -> tuple[np.ndarray, np.ndarray]:
    """YOLOv8 decoding of one sample [4 + classes, N] (cx, cy, w, h, class scores): xyxy boxes and
    their classes, those scoring above `score`, after class-wise non-maximum suppression (as the
    model's own package post-processes)."""
    scores = output[4:].max(0)
    keep = scores > score
    classes, scores = output[4:, keep].argmax(0), scores[keep]
    cx, cy, w, h = output[:4, keep]
    boxes = np.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], axis=1)
    chosen: list[int] = []
    for i in np.argsort(-scores, kind="stable"):
        same = [j for j in chosen if classes[j] == classes[i]]
        if not same or _iou(boxes[i], boxes[same]).max() <= nms_iou:
            chosen.append(int(i))
    return boxes[chosen], classes[chosen]


def box_f1(ref: tuple[np.ndarray, np.ndarray], var: tuple[np.ndarray, np.ndarray], iou: float = 0.5) -> float:
    """F1 between two detection sets: greedy one-to-one matching, same class, IoU >= `iou`
    (reference boxes in order, each to its best free match). 1 when both are empty."""
    (rb, rc), (vb, vc) = ref, var
    if len(rb) == 0 and len(vb) == 0:
        return 1.0
    free = np.ones(len(vb), bool)
    matched = 0
    for box, cls in zip(rb, rc):
        candidates = np.flatnonzero(free & (vc == cls))
        if len(candidates) == 0:
            continue
        overlaps = _iou(box, vb[candidates])
        best = int(overlaps.argmax())
        if overlaps[best] >= iou:
            free[candidates[best]] = False
            matched += 1
    return 2.0 * matched / (len(rb) + len(vb))


def box_agreement(ref: np.ndarray, var: np.ndarray) -> TaskScore:
    """Mean F1 of the detections of [B, 4 + classes, N]; support: samples where either side detects."""
    scores, support = [], 0
    for a, b in zip(ref, var):
        da, db = detections(a), detections(b)
        support += int(len(da[0]) > 0 or len(db[0]) > 0)
        scores.append(box_f1(da, db))
    return TaskScore(float(np.mean(scores)), support)


def mask_agreement(ref: np.ndarray, var: np.ndarray, threshold: float = 0.3) -> TaskScore:
    """Mean IoU of the probability maps binarised at `threshold` (1 when both are empty)."""
    scores, support = [], 0
    for a, b in zip(ref, var):
        ma, mb = a > threshold, b > threshold
        union = int((ma | mb).sum())
        support += int(union > 0)
        scores.append(float((ma & mb).sum()) / union if union else 1.0)
    return TaskScore(float(np.mean(scores)), support)


def decision_agreement(ref: np.ndarray, var: np.ndarray, threshold: float = 0.5) -> TaskScore:
    """Fraction of the decisions (each value > `threshold`) that agree."""
    same = (ref > threshold) == (var > threshold)
    return TaskScore(float(same.mean()), len(ref))


TASK_METRICS: dict[str, TaskMetric] = {
    "magika": TaskMetric("top1_agreement", "target_label", top1_agreement),
    "ppocr_cls": TaskMetric("top1_agreement", "save_infer_model/scale_0.tmp_1", top1_agreement),
    "ppocr_rec": TaskMetric("text_agreement", "softmax_11.tmp_0", text_agreement),
    "yolov8n": TaskMetric("box_f1", "output0", box_agreement),
    "ppocr_det": TaskMetric("mask_iou", "sigmoid_0.tmp_0", mask_agreement),
    "silero_vad": TaskMetric("speech_agreement", "output", decision_agreement),
}


def _is_zoo(name: str, model_hash: str) -> bool:
    from ..zoo import ZOO

    zoo = ZOO.get(name)
    return zoo is not None and zoo.sha256 == model_hash


def task_metric(name: str, model_hash: str) -> TaskMetric | None:
    """The task metric of a zoo model (checked by name and file hash), else None."""
    return TASK_METRICS.get(name) if _is_zoo(name, model_hash) else None


# --- inputs --------------------------------------------------------------------------------------

def sample_inputs(name: str, config: ModelConfig, model_hash: str, count: int, seed: int) -> list[Inputs]:
    """`count` single samples: realistic ones for a zoo model (`example_inputs`, seeds seed..seed+count-1),
    else from the config: normal floats, small integers, unknown dims 32."""
    if _is_zoo(name, model_hash):
        from ..zoo import example_inputs

        return [example_inputs(name, 1, seed + i) for i in range(count)]
    rng = np.random.default_rng(seed)
    return [_config_sample(config, rng) for _ in range(count)]


def _config_sample(config: ModelConfig, rng: np.random.Generator) -> Inputs:
    sample: Inputs = {}
    for spec in config.inputs:
        dims = [32 if d == -1 else d for d in config.full_dims(spec)]
        if config.max_batch_size > 0:
            dims[0] = 1
        dtype = numpy_dtype(spec.datatype) if spec.datatype != "BYTES" else np.dtype(object)
        if spec.datatype == "BYTES":
            sample[spec.name] = np.full(dims, b"", dtype=object)
        elif spec.datatype == "BOOL":
            sample[spec.name] = rng.random(dims) < 0.5
        elif np.issubdtype(dtype, np.floating):
            sample[spec.name] = rng.standard_normal(dims).astype(dtype)
        else:
            sample[spec.name] = rng.integers(0, 10, dims).astype(dtype)
    return sample


# --- comparison ----------------------------------------------------------------------------------

def compare(reference: Sequence[Outputs], candidate: Sequence[Outputs], task: TaskMetric | None = None) -> Fidelity:
    """Fidelity of `candidate` against `reference`: per-sample outputs of the same inputs, stacked on
    axis 0. Raises FidelityError when the outputs differ in names or shapes, or are not finite."""
    if len(reference) != len(candidate) or not reference:
        raise ValueError(f"{len(candidate)} candidate samples for {len(reference)} reference samples")
    per_output: dict[str, dict[str, float]] = {}
    total_abs, total_n, worst = 0.0, 0, 0.0
    stacked: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for name in reference[0]:
        if any(name not in c for c in candidate):
            raise FidelityError(f"output '{name}' is missing")
        ref = np.concatenate([np.asarray(r[name]).reshape(1, -1) if r[name].ndim == 0 else r[name] for r in reference])
        var = np.concatenate([np.asarray(c[name]).reshape(1, -1) if c[name].ndim == 0 else c[name] for c in candidate])
        if ref.shape != var.shape:
            raise FidelityError(f"output '{name}' has shape {list(var.shape)}, the original {list(ref.shape)}")
        if not np.isfinite(var.astype(np.float64)).all() and np.isfinite(ref.astype(np.float64)).all():
            raise FidelityError(f"output '{name}' has non-finite values (overflow?) where the original has none")
        err = np.abs(ref.astype(np.float64) - var.astype(np.float64))
        per_output[name] = {"max_abs_error": float(err.max(initial=0.0)), "mean_abs_error": float(err.mean()),
                            "cosine": cosine(ref, var)}
        total_abs, total_n, worst = total_abs + float(err.sum()), total_n + err.size, max(worst, float(err.max(initial=0.0)))
        stacked[name] = (ref, var)
    score = task.fn(*stacked[task.output]) if task is not None and task.output in stacked else None
    return Fidelity(
        max_abs_error=worst, mean_abs_error=total_abs / max(total_n, 1),
        cosine=min((o["cosine"] for o in per_output.values()), default=1.0),
        task_metric=task.name if score is not None and task is not None else None,
        task_agreement=score.agreement if score is not None else None,
        samples=len(reference), task_support=score.support if score is not None else None, outputs=per_output,
    )


# --- the reference: fp32 outputs on the evaluation inputs ----------------------------------------

def _session(path: Path, threads: int) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.log_severity_level = 3  # no warnings about initializers the quantiser left unused
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def _signature(session: ort.InferenceSession) -> list[tuple[str, str]]:
    return [(v.name, v.type) for v in [*session.get_inputs(), *session.get_outputs()]]


@dataclass
class Reference:
    """A model's original, its fp32 outputs on the evaluation inputs, its task metric: what every
    variant is compared with (made once per model)."""

    name: str
    original: Path
    config: ModelConfig
    model_hash: str
    inputs: list[Inputs]
    outputs: list[Outputs]
    signature: list[tuple[str, str]]
    threads: int = 1

    @classmethod
    def measure(cls, original: Path, config: ModelConfig, samples: int = 32, threads: int = 1) -> Reference:
        if samples < 1:
            raise ValueError(f"samples must be >= 1, got {samples}")
        model_hash = file_hash(original)
        inputs = sample_inputs(config.name, config, model_hash, samples, EVALUATION_SEED)
        session = _session(original, threads)
        outputs = [dict(zip([o.name for o in session.get_outputs()], session.run(None, x))) for x in inputs]
        return cls(config.name, original, config, model_hash, inputs, outputs, _signature(session), threads)

    def calibration(self) -> list[Inputs]:
        """As many calibration samples as evaluation ones, from disjoint seeds."""
        return sample_inputs(self.name, self.config, self.model_hash, len(self.inputs), CALIBRATION_SEED)

    def evaluate(self, path: Path) -> Fidelity:
        """Load `path` in ONNX Runtime, check its signature, run the evaluation inputs, compare."""
        session = _session(path, self.threads)
        if _signature(session) != self.signature:
            raise FidelityError(f"its inputs/outputs {_signature(session)} differ from the original's {self.signature}")
        outputs = [dict(zip([o.name for o in session.get_outputs()], session.run(None, x))) for x in self.inputs]
        return compare(self.outputs, outputs, task_metric(self.name, self.model_hash))
