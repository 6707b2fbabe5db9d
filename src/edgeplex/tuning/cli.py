"""`edgeplex profile [MODEL ...]`: measure every execution config of each model, print its front.

Profiles go to the store (measured once per model file, backend version and machine); the front
of each model is printed as a table and drawn as a PNG.
"""

from __future__ import annotations

import argparse
import sys
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tqdm import tqdm

from ..config import default_cores
from ..errors import EdgeplexError
from ..variant_layout import variant_files
from .pareto import pareto_front
from .profile import Profile
from .profiler import Step, candidate_batches, candidate_configs, profile_model
from .store import ProfileStore, default_store_path

if TYPE_CHECKING:
    from ..repository import Repository


def default_plots_dir() -> Path:
    """Where `profile` draws its fronts unless --plots says: <cache>/fronts, beside the store."""
    from ..zoo import default_cache_dir

    return default_cache_dir() / "fronts"


def _positive(text: str) -> int:
    """An argparse type: a whole number of at least 1 (0 cores or 0 timed calls measure nothing)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number of at least 1, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def add_profile_parser(commands: Any) -> None:
    profile = commands.add_parser("profile", help="measure each model under every execution config; print its front")
    profile.add_argument("models", nargs="*", metavar="MODEL", help="models to profile (default: all)")
    profile.add_argument("--repository", type=Path, default=None, help="model repository (default: the zoo)")
    profile.add_argument("--store", type=Path, default=None, help="profile database (default: <cache>/profiles.sqlite)")
    profile.add_argument("--cores", type=_positive, default=default_cores(),
                         help=f"try threads 1..N (default: {default_cores()}, the cores this process may use)")
    profile.add_argument("--iterations", type=_positive, default=50, help="timed calls per config, at most (default: 50)")
    profile.add_argument("--warmup", type=int, default=5, help="untimed calls per config before timing (default: 5)")
    profile.add_argument("--max-seconds", type=float, default=3.0,
                         help="time limit of the timed calls per config (default: 3.0)")
    profile.add_argument("--backend", action="append", dest="backends",
                         help="only this backend (repeatable; default: every backend available)")
    profile.add_argument("--retry-failed", action="store_true",
                         help="measure configs that failed before again (default: off)")
    profile.add_argument("--plots", type=Path, default=None,
                         help="folder for the fronts' PNG plots (default: <cache>/fronts, i.e. "
                              "$EDGEPLEX_CACHE/fronts or ~/.cache/edgeplex/fronts)")
    profile.set_defaults(func=run_profile)


def front_table(front: list[Profile]) -> str:
    """The front as an aligned text table, fastest per row first."""
    head = (f"{'backend':<12} {'processor':<9} {'variant':<7} {'threads':>7} {'batch':>5} {'p50 ms':>8} "
            f"{'p99 ms':>8} {'rows/s':>9} {'memory MB':>9}")
    lines = [head, "-" * len(head)]
    for p in sorted(front, key=lambda p: (p.p50_ms / p.batch, p.memory_bytes)):
        c = p.config
        lines.append(f"{c.backend:<12} {c.processor:<9} {c.variant:<7} {c.threads:>7} {p.batch:>5} {p.p50_ms:>8.2f} "
                     f"{p.p99_ms:>8.2f} {p.throughput:>9.1f} {p.memory_bytes / 1e6:>9.1f}")
    return "\n".join(lines)


def _progress(total: int, model: str, quiet: bool) -> tuple[Callable[[Step], None], Callable[[], None]]:
    """A tqdm bar on a terminal, plain lines on stderr otherwise, nothing when quiet."""
    plain = not quiet and not sys.stderr.isatty()
    bar = tqdm(total=total, desc=model, unit="config", file=sys.stderr, disable=quiet or plain)

    def step(s: Step) -> None:
        what = s.outcome if s.profile is None else f"{s.outcome}, p50 {s.profile.p50_ms:.2f} ms"
        if s.reason:
            what += f": {s.reason}"
        bar.set_postfix_str(f"{s.config.label()} @{s.batch}", refresh=False)
        bar.update(1)
        if plain:
            print(f"edgeplex profile: {model} [{s.index + 1}/{s.total}] {s.config.label()} batch {s.batch}: {what}",
                  file=sys.stderr, flush=True)

    return step, bar.close


def run_profile(args: argparse.Namespace) -> int:
    from ..repository import Repository
    from ..zoo import ZOO, default_zoo_dir, pull

    quiet = bool(getattr(args, "quiet", False))
    root: Path = args.repository if args.repository is not None else default_zoo_dir()
    if args.repository is None:
        missing = [n for n in (args.models or ZOO) if n in ZOO and not (root / n / "1" / "model.onnx").is_file()]
        if missing:
            print(f"edgeplex: no --repository given; pulling the zoo into {root}", file=sys.stderr)
            pull(root, missing, progress=not quiet)
    repository = Repository(root)
    store = ProfileStore(args.store if args.store is not None else default_store_path())
    problems = 0
    for name in args.models or list(repository.scan()):
        try:
            _profile_one(args, repository, store, name, quiet)
        except EdgeplexError as exc:  # one bad model never stops the others
            print(f"\n{name}: not profiled: {exc.message}")
            problems += 1
    return 1 if problems else 0


def _profile_one(args: argparse.Namespace, repository: Repository, store: ProfileStore, name: str, quiet: bool) -> None:
    source = repository.source(name)
    config = repository.load_config(source)
    model_file = source.versions[source.latest_version] / config.default_model_filename
    files = variant_files(model_file.parent, config.default_model_filename)  # fp32 and its variants
    total = len(candidate_configs(config, args.cores, args.backends, tuple(files))) * len(candidate_batches(config))
    show, close = _progress(total, name, quiet)
    tally: Counter[str] = Counter()

    def step(s: Step) -> None:
        tally[s.outcome] += 1
        show(s)

    try:
        profiles = profile_model(name, model_file, config, store, args.cores, None, args.iterations, args.warmup, step,
                                 backends=args.backends, max_seconds=args.max_seconds, retry_failed=args.retry_failed,
                                 variants=files)
    finally:
        close()
    front = pareto_front(profiles)
    print(f"\n{name} ({model_file}): {len(profiles)} profiles, {len(front)} on the Pareto front "
          "(p50 per row, memory, fidelity loss)")
    print(front_table(front))
    failed = tally["failed"] + tally["failed before"]
    earlier = f" ({tally['failed before']} in earlier runs)" if tally["failed before"] else ""
    print(f"{total} configs: {tally['measured']} measured, {tally['stored']} from the store {store.path}, "
          f"{failed} failed{earlier}")
    if profiles:
        from .plot import plot_front  # matplotlib: imported only when drawing

        plots: Path = args.plots if args.plots is not None else default_plots_dir()
        print(f"plot: {plot_front(name, profiles, front, path=plots / f'{name}.png')}")
