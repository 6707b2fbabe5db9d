"""Variants of a model: INT8 (dynamic, static QDQ), FP16 and magnitude-pruned files, with their fidelity.

Where they are written and how they read back is `variant_layout.py` (the one owner of the layout).

A variant is written only once it has loaded in ONNX Runtime with the original's signature and
its fidelity has been measured (tuning/fidelity.py): both files go to temp files in the same
folder, then are renamed. A method that fails raises VariantError and leaves the repository as it was.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import onnxruntime as ort

from ..config import ModelConfig
from ..errors import EdgeplexError
from ..repository import file_hash
from ..variant_layout import VARIANTS_DIR, VariantInfo, metadata_path, variant_path
from .fidelity import Reference
from .methods import describe, quiet_quantiser, transform_for

log = logging.getLogger(__name__)

DEFAULT_VARIANTS: tuple[str, ...] = ("int8-dynamic", "int8-static", "fp16", "pruned-50")


class VariantError(EdgeplexError):
    """A method failed on a model; the repository is left as it was."""


def pruned_name(sparsity: float) -> str:
    """The variant name of magnitude pruning to `sparsity` (0 < s < 1): 0.5 -> "pruned-50"."""
    if not 0.0 < sparsity < 1.0 or not 1 <= round(100 * sparsity) <= 99:
        raise ValueError(f"sparsity must be within 0.01..0.99, got {sparsity}")
    return f"pruned-{round(100 * sparsity)}"


# --- the entry points ----------------------------------------------------------------------------

def reference(version_dir: Path, config: ModelConfig, samples: int = 32, threads: int = 1) -> Reference:
    """The fp32 reference of a model version; VariantError when its original does not run."""
    original = version_dir / config.default_model_filename
    if samples < 1:
        raise VariantError(f"model '{config.name}': samples must be >= 1, got {samples}")
    try:
        return Reference.measure(original, config, samples, threads)
    except Exception as exc:
        raise VariantError(f"model '{config.name}': its original {original} does not run in ONNX Runtime: "
                           f"{describe(exc)}") from exc


def optimize(version_dir: Path, config: ModelConfig, variant: str, *, samples: int = 32, threads: int = 1,
             ref: Reference | None = None) -> VariantInfo:
    """Write `variant` (int8-dynamic, int8-static, fp16, pruned-NN) of the model in `version_dir` beside
    its original, with its metadata, and return that; VariantError, repository untouched, on failure.
    `ref` (from `reference`) saves measuring the original again for each variant."""
    try:
        kind, transform = transform_for(variant)
    except ValueError as exc:
        raise VariantError(f"model '{config.name}': {exc}") from None
    ref = ref or reference(version_dir, config, samples, threads)
    folder = version_dir / VARIANTS_DIR
    created = not folder.exists()
    temps: list[Path] = []
    try:
        folder.mkdir(exist_ok=True)
        for suffix in (".onnx", ".json"):
            fd, name = tempfile.mkstemp(dir=folder, prefix=f".{variant}.", suffix=f".tmp{suffix}")
            os.close(fd)
            temps.append(Path(name))
        onnx_tmp, json_tmp = temps
        with tempfile.TemporaryDirectory(prefix="edgeplex-optimize-") as work, quiet_quantiser():
            parameters = transform(ref.original, onnx_tmp, Path(work), ref)
        fidelity = ref.evaluate(onnx_tmp)
        info = VariantInfo(variant, kind, parameters, variant_path(version_dir, variant), onnx_tmp.stat().st_size,
                           ref.original.stat().st_size, fidelity, fidelity.loss, time.time(), ort.__version__,
                           file_hash(onnx_tmp), ref.model_hash)
        json_tmp.write_text(json.dumps(info.to_json(), indent=2) + "\n")
        os.replace(onnx_tmp, info.path)
        os.replace(json_tmp, metadata_path(version_dir, variant))
        return info
    except BaseException as exc:
        for tmp in temps:
            tmp.unlink(missing_ok=True)
        if created:
            with contextlib.suppress(OSError):
                folder.rmdir()
        if isinstance(exc, Exception) and not isinstance(exc, VariantError):
            raise VariantError(f"model '{config.name}': {variant} ({kind}) failed: {describe(exc)}") from exc
        raise


def optimize_model(version_dir: Path, config: ModelConfig, variants: Sequence[str] = DEFAULT_VARIANTS, *,
                   samples: int = 32, threads: int = 1,
                   done: Callable[[str, VariantInfo | VariantError], None] | None = None,
                   ) -> dict[str, VariantInfo | VariantError]:
    """Every variant of one model against one reference; a failed method is in the result, not raised
    (VariantError is raised only when the original itself does not run)."""
    ref = reference(version_dir, config, samples, threads)
    results: dict[str, VariantInfo | VariantError] = {}
    for variant in variants:
        try:
            results[variant] = optimize(version_dir, config, variant, ref=ref)
        except VariantError as exc:
            results[variant] = exc
        if done is not None:
            done(variant, results[variant])
    return results


# --- `edgeplex optimize` ---------------------------------------------------------------------------

def add_optimize_parser(commands: Any) -> None:
    parser = commands.add_parser("optimize", help="write INT8, FP16 and pruned variants of a model, with their fidelity")
    parser.add_argument("model", metavar="MODEL")
    parser.add_argument("--repository", type=Path, default=None, help="model repository (default: the zoo)")
    parser.add_argument("--int8", action="append", choices=["dynamic", "static"],
                        help="ONNX Runtime INT8 quantisation: dynamic, or static (QDQ, per-channel, calibrated)")
    parser.add_argument("--fp16", action="store_true", help="FP16 weights and compute, FP32 inputs and outputs")
    parser.add_argument("--prune", action="append", type=_sparsity, metavar="SPARSITY",
                        help="zero this fraction of each Conv/MatMul/Gemm weight by magnitude, e.g. 0.5")
    parser.add_argument("--samples", type=_positive, default=32, help="calibration and evaluation samples (default: 32)")
    parser.add_argument("--threads", type=_positive, default=1, help="ONNX Runtime threads for evaluation (default: 1)")
    parser.set_defaults(func=run_optimize)


def _positive(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return int(text)


def _sparsity(text: str) -> float:
    try:
        value = float(text)
        pruned_name(value)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return value


def requested_variants(int8: Sequence[str] | None = None, fp16: bool = False,
                       prune: Sequence[float] | None = None) -> list[str]:
    """The variant names the flags ask for; all the default methods when none is given."""
    wanted = [f"int8-{kind}" for kind in int8 or ()] + (["fp16"] if fp16 else [])
    wanted += [pruned_name(s) for s in prune or ()]
    return list(dict.fromkeys(wanted)) or list(DEFAULT_VARIANTS)


def variant_table(results: dict[str, VariantInfo | VariantError]) -> str:
    """One row per variant made: size, ratio to the original, errors, cosine, task metric, loss."""
    head = (f"{'variant':<13} {'size MB':>8} {'ratio':>6} {'max abs err':>11} {'mean abs err':>12} {'cosine':>8}  "
            f"{'task metric':<27} {'loss':>6}")
    lines = [head, "-" * len(head)]
    for name, info in results.items():
        if isinstance(info, VariantError):
            lines.append(f"{name:<13} FAILED")
            continue
        f = info.fidelity
        task = f"{f.task_metric} {f.task_agreement:.3f}" if f.task_metric and f.task_agreement is not None else "-"
        if f.task_metric and not f.task_support:
            task += " (no support)"
        lines.append(f"{name:<13} {info.size_bytes / 1e6:>8.2f} {info.size_ratio:>6.2f} {f.max_abs_error:>11.3g} "
                     f"{f.mean_abs_error:>12.3g} {f.cosine:>8.5f}  {task:<27} {info.loss:>6.4f}")
    return "\n".join(lines)


def run_optimize(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from ..errors import ModelNotFound
    from ..repository import Repository
    from ..zoo import ZOO, default_zoo_dir, pull

    quiet = bool(getattr(args, "quiet", False))
    root: Path = args.repository if args.repository is not None else default_zoo_dir()
    if args.repository is None and args.model in ZOO and not (root / args.model / "1" / "model.onnx").is_file():
        print(f"edgeplex: no --repository given; pulling {args.model} into {root}", file=sys.stderr)
        pull(root, [args.model], progress=not quiet)
    repository = Repository(root)
    known = repository.scan()  # a missing repository says so, naming it
    if args.model not in known:
        names = ", ".join(known) or "none"
        raise ModelNotFound(f"model '{args.model}' is not in the repository {root} (its models: {names})")
    source = known[args.model]
    config = repository.load_config(source)
    if not source.versions:
        raise ModelNotFound(f"model '{args.model}' in {root} has no version folder with a model file")
    version_dir = source.versions[source.latest_version]
    variants = requested_variants(args.int8, args.fp16, args.prune)
    plain = not quiet and not sys.stderr.isatty()
    bar = tqdm(total=len(variants), desc=args.model, unit="variant", file=sys.stderr, disable=quiet or plain)
    bar.set_postfix_str(variants[0])
    finished: list[str] = []

    def done(variant: str, result: VariantInfo | VariantError) -> None:
        finished.append(variant)
        if len(finished) < len(variants):
            bar.set_postfix_str(variants[len(finished)], refresh=False)
        bar.update(1)
        if plain:
            what = f"failed: {result.message}" if isinstance(result, VariantError) else f"loss {result.loss:.4f}"
            print(f"edgeplex optimize: {args.model} [{len(finished)}/{len(variants)}] {variant}: {what}", file=sys.stderr,
                  flush=True)

    try:
        results = optimize_model(version_dir, config, variants, samples=args.samples, threads=args.threads, done=done)
    finally:
        bar.close()
    print(f"{args.model} ({version_dir / config.default_model_filename}, "
          f"{(version_dir / config.default_model_filename).stat().st_size / 1e6:.2f} MB): {args.samples} samples")
    print(variant_table(results))
    failed = {name: r for name, r in results.items() if isinstance(r, VariantError)}
    for name, error in failed.items():
        print(f"{name} failed: {error.message}")
    print(f"variants in {version_dir / VARIANTS_DIR}")
    return 1 if failed else 0
