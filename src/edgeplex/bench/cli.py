"""`edgeplex bench <scenario>`: run a benchmark, print its table, record JSON + Markdown."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from . import report, scenarios

DEFAULT_OUT = Path("benchmarks/results")


def add_bench_parser(commands: Any) -> None:
    bench = commands.add_parser("bench", help="run a benchmark scenario and record its results")
    scenario = bench.add_subparsers(dest="scenario", required=True)
    multi = scenario.add_parser("multitenancy", help="four models concurrently vs one after another")
    multi.add_argument("--requests", type=int, default=240, help="requests per model, over all rounds")
    multi.add_argument("--rounds", type=int, default=3, help="alternations of the runs")
    multi.add_argument("--cores", type=int, default=None)
    multi.add_argument("--out", type=Path, default=DEFAULT_OUT)
    over = scenario.add_parser("overhead", help="gRPC server throughput vs the in-process engine")
    over.add_argument("--duration", type=float, default=18.0, help="seconds per model and client, over all rounds")
    over.add_argument("--concurrency", type=int, default=4)
    over.add_argument("--instances", type=int, default=2)
    over.add_argument("--rounds", type=int, default=3, help="alternations of the runs")
    over.add_argument("--models", nargs="*", default=list(scenarios.MIX))
    over.add_argument("--out", type=Path, default=DEFAULT_OUT)
    alloc = scenario.add_parser("allocation", help="the four-model mix under static, balance and pareto")
    alloc.add_argument("--duration", type=float, default=30.0, help="measured seconds per policy")
    alloc.add_argument("--clients", type=int, default=2, help="closed-loop clients per model")
    alloc.add_argument("--cores", type=int, default=2)
    alloc.add_argument("--no-shift", action="store_true", help="skip the load-shift scenario")
    alloc.add_argument("--variants", action="store_true",
                       help="also pareto with the models' variants made and profiled (pareto+variants)")
    alloc.add_argument("--out", type=Path, default=DEFAULT_OUT)
    sched = scenario.add_parser("scheduling", help="priority isolation, deadlines (EDF vs FIFO), dynamic batching")
    sched.add_argument("--duration", type=float, default=8.0,
                       help="seconds per measured window (deadlines: 3/4 of it, batching: half)")
    sched.add_argument("--rounds", type=int, default=3, help="alternations of the compared runs")
    sched.add_argument("--rate", type=float, default=15.0, help="req/s of the priority-1 stream")
    sched.add_argument("--overload", type=float, nargs="+", default=[0.8, 1.1],
                       help="deadline mix: load levels, nominal compute demand / cores")
    sched.add_argument("--concurrency", type=int, default=8, help="batching: closed-loop clients")
    sched.add_argument("--cores", type=int, default=None)
    sched.add_argument("--out", type=Path, default=DEFAULT_OUT)
    var = scenario.add_parser("variants", help="variants of every zoo model; the mix under a tight memory budget")
    var.add_argument("--duration", type=float, default=15.0, help="seconds per measured window of the mix")
    var.add_argument("--rounds", type=int, default=3, help="alternating windows per server (with / without variants)")
    var.add_argument("--samples", type=int, default=16, help="calibration and evaluation inputs per variant")
    var.add_argument("--budget-fraction", type=float, default=0.65,
                     help="tight budget: this share of the four fp32 models together (the smaller of the "
                     "profiles' figure and the server's)")
    var.add_argument("--no-mix", action="store_true", help="variants table only, skip the memory-tight mix")
    var.add_argument("--out", type=Path, default=DEFAULT_OUT)
    peer = scenario.add_parser("peer", help="the same fixed job against Triton configured by hand and edgeplex")
    peer.add_argument("--requests", type=int, default=200, help="measured requests per model")
    peer.add_argument("--warmup", type=int, default=60, help="warm-up requests per model, under the same load")
    peer.add_argument("--clients", type=int, default=2, help="closed-loop clients per model")
    peer.add_argument("--policies", nargs="+", default=["static", "balance", "pareto"],
                      choices=["static", "balance", "pareto"], help="edgeplex policies to run")
    peer.add_argument("--rounds", type=int, default=1, help="alternations of the servers")
    peer.add_argument("--settle", type=float, default=0.0,
                      help="seconds of load after the warm-up, before the measured phase (pareto re-plans)")
    peer.add_argument("--cores", type=int, default=None, help="cores for the bound and edgeplex (default: all)")
    peer.add_argument("--start", choices=["profiled", "empty", "poisoned"], default="profiled",
                      help="pareto's profile store: the solo profiles, an empty one (a cold start), or profiles "
                           "measured while two CPU hogs ran")
    peer.add_argument("--out", type=Path, default=DEFAULT_OUT)
    serve = scenario.add_parser("serving", help="perf_analyzer against Triton configured by hand and edgeplex serve")
    serve.add_argument("--rounds", type=int, default=2, help="alternations of the servers")
    serve.add_argument("--measurement-ms", type=int, default=3000, help="perf_analyzer's measurement window")
    serve.add_argument("--cases", nargs="+", default=None, metavar="CASE",
                       help="a subset of the cases: ppocr_cls-grpc-c4 ppocr_cls-grpc-c16 ppocr_cls-http-c4 "
                            "yolov8n-grpc-c4 identity-grpc-c16 (default: all)")
    serve.add_argument("--cores", type=int, default=None, help="cores for edgeplex (default: all)")
    serve.add_argument("--edgeplex-policies", nargs="+", default=["pareto"], choices=["pareto", "config"],
                       help="edgeplex policies to run (config: instance_count 2, 1 thread, as Triton's hand config)")
    serve.add_argument("--out", type=Path, default=DEFAULT_OUT)
    bench.set_defaults(func=run_bench)


def run_bench(args: argparse.Namespace) -> int:
    from . import progress

    progress.ENABLED = not getattr(args, "quiet", False)
    if args.scenario == "allocation":
        from .allocation import allocation

        result, text = allocation(args.duration, args.clients, cores=args.cores, shift=not args.no_shift,
                                  variants=args.variants)
    elif args.scenario == "scheduling":
        from .scheduling import scheduling

        result, text = scheduling(args.duration, args.rounds, args.rate, tuple(args.overload), args.concurrency,
                                  args.cores)
    elif args.scenario == "variants":
        from .variants import variants

        result, text = variants(args.out, args.duration, args.rounds, args.samples, args.budget_fraction,
                                mix=not args.no_mix)
    elif args.scenario == "peer":
        from .peer import peer
        from .triton_peer import TritonUnavailable

        try:
            result, text = peer(args.requests, args.warmup, args.clients, tuple(args.policies), args.rounds,
                                args.settle, args.cores, start=args.start)
        except TritonUnavailable as exc:
            print(f"edgeplex bench peer: Triton is not available here: {exc}", file=sys.stderr)
            return 1
    elif args.scenario == "serving":
        from .serving import CASE_NAMES, CASES, serving
        from .triton_peer import TritonUnavailable

        unknown = sorted(set(args.cases or ()) - set(CASE_NAMES))
        if unknown:
            print(f"edgeplex bench serving: unknown case(s) {', '.join(unknown)} (known: {', '.join(CASE_NAMES)})",
                  file=sys.stderr)
            return 2
        try:
            result, text = serving(args.rounds, args.measurement_ms,
                                   [c for c in CASES if args.cases is None or c.name in args.cases], args.cores,
                                   tuple(args.edgeplex_policies))
        except TritonUnavailable as exc:
            print(f"edgeplex bench serving: Triton is not available here: {exc}", file=sys.stderr)
            return 1
    elif args.scenario == "multitenancy":
        result, text = scenarios.multitenancy(args.requests, args.rounds, args.cores)
    else:
        result, text = scenarios.overhead(tuple(args.models), args.concurrency, args.duration, args.instances, args.rounds)
    name = args.scenario
    if args.scenario == "peer" and args.start != "profiled":
        name = f"peer-{args.start}"  # a cold or poisoned start is recorded beside the profiled one
    path = report.write(args.out, name, result, text)
    print(text)
    print(f"\nrecorded: {path}")
    return 0
