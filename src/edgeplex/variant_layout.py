"""The variants layout on disk, owned here alone: where a model version's variants live and how
their metadata reads back. Making variants (quantising, measuring fidelity) is `tuning/variants.py`;
serving them needs only this module, which imports no runtime.

    <repo>/<model>/<version>/<model file>               the original ("fp32")
    <repo>/<model>/<version>/variants/<variant>.onnx    the variant (the engine serves it by name)
    <repo>/<model>/<version>/variants/<variant>.json    method, parameters, sizes, fidelity, loss
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from .errors import BackendError
from .repository import file_hash

log = logging.getLogger(__name__)

VARIANTS_DIR = "variants"
ORIGINAL = "fp32"  # the original file's variant name


def variant_path(version_dir: Path, variant: str, model_filename: str = "model.onnx") -> Path:
    """The file that runs `variant` of a model version: the original for fp32."""
    if variant == ORIGINAL:
        return version_dir / model_filename
    return version_dir / VARIANTS_DIR / f"{variant}.onnx"


def metadata_path(version_dir: Path, variant: str) -> Path:
    """Where a variant's metadata (method, sizes, fidelity, loss) is written."""
    return version_dir / VARIANTS_DIR / f"{variant}.json"


def existing_variant_path(version_dir: Path, variant: str, model_filename: str, model: str) -> Path:
    """`variant_path`, checked: BackendError naming the model and the file when it is missing."""
    path = variant_path(version_dir, variant, model_filename)
    if not path.is_file():
        raise BackendError(f"model '{model}': {path} is missing")
    return path


@dataclass(frozen=True)
class Fidelity:
    """How close a variant's outputs are to fp32's, on `samples` evaluation inputs."""

    max_abs_error: float
    mean_abs_error: float
    cosine: float  # the lowest over the outputs
    task_metric: str | None
    task_agreement: float | None
    samples: int
    task_support: int | None = None  # samples where the task metric had something to judge
    outputs: dict[str, dict[str, float]] = field(default_factory=dict)  # per output: the three measures

    @property
    def loss(self) -> float:
        if self.task_agreement is not None and self.task_support:
            return float(min(max(1.0 - self.task_agreement, 0.0), 1.0))
        return float(min(max(1.0 - self.cosine, 0.0), 1.0))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Fidelity:
        names = {"max_abs_error", "mean_abs_error", "cosine", "task_metric", "task_agreement", "samples",
                 "task_support", "outputs"}
        return cls(**{k: v for k, v in data.items() if k in names})



@dataclass(frozen=True)
class VariantInfo:
    """A variant's metadata file, read back (`path` is the variant's ONNX file)."""

    variant: str
    method: str
    parameters: dict[str, Any]
    path: Path
    size_bytes: int
    original_size_bytes: int
    fidelity: Fidelity
    loss: float
    created_at: float
    onnxruntime: str
    sha256: str
    source_sha256: str

    @property
    def size_ratio(self) -> float:
        return self.size_bytes / max(self.original_size_bytes, 1)

    def to_json(self) -> dict[str, Any]:
        return {"variant": self.variant, "method": self.method, "parameters": self.parameters, "file": self.path.name,
                "size_bytes": self.size_bytes, "original_size_bytes": self.original_size_bytes,
                "fidelity": self.fidelity.to_dict(), "loss": self.loss, "created_at": self.created_at,
                "onnxruntime": self.onnxruntime, "sha256": self.sha256, "source_sha256": self.source_sha256}

    @classmethod
    def from_json(cls, data: dict[str, Any], folder: Path) -> VariantInfo:
        return cls(str(data["variant"]), str(data["method"]), dict(data["parameters"]), folder / str(data["file"]),
                   int(data["size_bytes"]), int(data["original_size_bytes"]), Fidelity.from_dict(data["fidelity"]),
                   float(data["loss"]), float(data["created_at"]), str(data["onnxruntime"]), str(data["sha256"]),
                   str(data["source_sha256"]))


def list_variants(version_dir: Path, source: Path | None = None) -> dict[str, VariantInfo]:
    """The variants of a model version, by name, from their metadata files. Unreadable or
    inconsistent ones are skipped with a warning, and so are variants made from another
    original than `source` (when given: the current model file)."""
    folder = version_dir / VARIANTS_DIR
    metas = sorted(folder.glob("*.json")) if folder.is_dir() else []
    # Hashing the original is the expensive part: only when there are variants to check it against.
    source_hash = file_hash(source) if metas and source is not None and source.is_file() else None
    found: dict[str, VariantInfo] = {}
    for meta in metas:
        if meta.name.startswith("."):
            continue
        try:
            info = VariantInfo.from_json(json.loads(meta.read_text()), folder)
            if info.variant != meta.stem or info.path.name != f"{meta.stem}.onnx":
                raise ValueError(f"names variant '{info.variant}' / file '{info.path.name}'")
            if not info.path.is_file() or info.path.stat().st_size != info.size_bytes:
                raise ValueError(f"{info.path.name} is missing or not {info.size_bytes} bytes")
        except (OSError, ValueError, KeyError, TypeError) as exc:
            log.warning("variant metadata %s skipped: %s", meta, exc)
            continue
        if source_hash is not None and info.source_sha256 != source_hash:
            log.warning("variant %s skipped: made from another version of %s", meta, source)
            continue
        found[info.variant] = info
    return found


def variant_summary(info: VariantInfo, in_use: bool = False) -> dict[str, Any]:
    """What `edgeplex models` and the model metadata show of a variant."""
    fidelity = info.fidelity
    return {"name": info.variant, "method": info.method, "size_bytes": info.size_bytes,
            "size_ratio": round(info.size_ratio, 4), "loss": round(info.loss, 6),
            "cosine": round(fidelity.cosine, 6), "task_metric": fidelity.task_metric,
            "task_agreement": fidelity.task_agreement, "in_use": in_use}


def variant_files(version_dir: Path, model_filename: str = "model.onnx") -> dict[str, tuple[Path, float]]:
    """variant -> (file, fidelity loss), the original as "fp32" with loss 0: what the profiler takes."""
    original = version_dir / model_filename
    files = {"fp32": (original, 0.0)}
    files.update({name: (info.path, info.loss) for name, info in list_variants(version_dir, original).items()})
    return files
