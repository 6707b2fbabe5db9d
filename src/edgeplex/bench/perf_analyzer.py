"""Triton's own load generator, perf_analyzer, fetched from PyPI and run against edgeplex.

Fetching and building its files is perf_analyzer_install.py; this module runs it.
`ensure_perf_analyzer()` installs it if needed and checks that the binary starts
(`perf_analyzer --version`). `PerfAnalyzer.run()` runs one concurrency level and parses the CSV
report (`-f`, `--verbose-csv`) plus the client/server request counts printed on stdout into a
`PerfResult`.

    python -m edgeplex.bench.perf_analyzer --cores 2 --concurrency 4

runs the zoo's models over gRPC and HTTP against a fresh `edgeplex serve` and prints a table.
"""

from __future__ import annotations

import argparse
import csv
import os
import re
import subprocess
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from .perf_analyzer_install import (
    PerfAnalyzerUnavailable,
    UnsupportedPlatform,
    check_platform,
    default_install_dir,
    install,
    install_lock,
    output_tail,
)

__all__ = ["ZOO_SHAPES", "PerfAnalyzer", "PerfAnalyzerError", "PerfAnalyzerUnavailable", "PerfResult",
           "UnsupportedPlatform", "WireProtocol", "ensure_perf_analyzer", "main", "parse_report"]

WireProtocol = Literal["grpc", "http"]

# Shapes for the zoo's dynamic dimensions (what their own packages feed), used by the CLI below.
ZOO_SHAPES: dict[str, dict[str, list[int]]] = {
    "ppocr_det": {"x": [3, 320, 320]},
    "ppocr_rec": {"x": [3, 48, 320]},
}


class PerfAnalyzerError(Exception):
    """perf_analyzer ran but failed (non-zero exit, timeout, or an unreadable report)."""

    def __init__(self, message: str, returncode: int | None = None, stdout: str = "", stderr: str = "") -> None:
        super().__init__(message)
        self.returncode = returncode
        self.stdout = stdout
        self.stderr = stderr


@dataclass(frozen=True)
class PerfResult:
    """One concurrency level of one perf_analyzer run. Latencies are client-side, in ms."""

    model: str
    protocol: str
    concurrency: int
    throughput: float  # inferences per second
    p50_ms: float
    p90_ms: float
    p95_ms: float
    p99_ms: float
    avg_ms: float | None
    client_requests: int | None  # "Request count" over the windows perf_analyzer kept
    server_requests: int | None  # "Successful request count" the server's statistics gave for them
    command: list[str] = field(repr=False)
    stdout: str = field(repr=False)
    row: dict[str, str] = field(repr=False)  # the raw CSV row (µs values as printed)

    def summary(self) -> str:
        return (f"{self.model:<10} {self.protocol:<4} c={self.concurrency:<3} {self.throughput:8.1f} infer/s  "
                f"p50 {self.p50_ms:7.1f} ms  p90 {self.p90_ms:7.1f} ms  p99 {self.p99_ms:7.1f} ms")


_REQUEST_COUNT = re.compile(r"^\s*Request count:\s*(\d+)", re.MULTILINE)
_SERVER_SUCCESS = re.compile(r"^\s*Successful request count:\s*(\d+)", re.MULTILINE)


@dataclass(frozen=True)
class PerfAnalyzer:
    """An installed perf_analyzer binary and the directory of the libraries it needs."""

    binary: Path
    lib_dir: Path

    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        env["LD_LIBRARY_PATH"] = os.pathsep.join(p for p in (str(self.lib_dir), env.get("LD_LIBRARY_PATH", "")) if p)
        return env

    def version(self) -> str:
        """'Perf Analyzer Version 2.41.0 (commit ...)'; PerfAnalyzerUnavailable if the binary will not start."""
        try:
            result = subprocess.run([str(self.binary), "--version"], capture_output=True, text=True, env=self.env(),
                                    timeout=60, check=False)
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise PerfAnalyzerUnavailable(f"{self.binary} does not start: {exc}") from exc
        text = (result.stdout + result.stderr).strip()
        if result.returncode != 0 or "Perf Analyzer Version" not in text:
            raise PerfAnalyzerUnavailable(
                f"{self.binary} --version failed (exit {result.returncode}):\n{output_tail(text)}")
        return next(line for line in text.splitlines() if "Perf Analyzer Version" in line).strip()

    def command(self, model: str, url: str, protocol: WireProtocol, concurrency: int, measurement_ms: int,
                csv_file: Path, shape: Mapping[str, Sequence[int]] | None = None,
                input_data: Path | str | None = None, extra: Sequence[str] = ()) -> list[str]:
        if protocol not in ("grpc", "http"):
            raise ValueError(f"protocol must be 'grpc' or 'http', not {protocol!r}")
        command = [str(self.binary), "-m", model, "-u", url, "-i", protocol,
                   "--concurrency-range", str(int(concurrency)), "--measurement-interval", str(int(measurement_ms)),
                   "-f", str(csv_file), "--verbose-csv"]
        for name, dims in (shape or {}).items():
            command += ["--shape", f"{name}:{','.join(str(int(d)) for d in dims)}"]
        if input_data is not None:
            command += ["--input-data", str(input_data)]
        return command + list(extra)

    def run(self, model: str, url: str, protocol: WireProtocol = "grpc", concurrency: int = 1,
            measurement_ms: int = 5000, shape: Mapping[str, Sequence[int]] | None = None,
            input_data: Path | str | None = None, extra: Sequence[str] = (), *,
            stability_percentage: float | None = None, max_trials: int | None = None,
            timeout: float | None = None) -> PerfResult:
        """One perf_analyzer run at one concurrency; PerfAnalyzerError (with its output) if it fails.

        `shape` gives dynamic dims without the batch dim (ppocr_det: {"x": [3, 320, 320]});
        `input_data` is "zero", "random" (its default), a directory or a JSON file.
        `stability_percentage`/`max_trials` relax perf_analyzer's stability check (defaults 10 %, 10
        windows), which a noisy shared machine may fail ("Failed to obtain stable measurement").
        """
        options = list(extra)
        if stability_percentage is not None:
            options += ["--stability-percentage", str(stability_percentage)]
        if max_trials is not None:
            options += ["--max-trials", str(int(max_trials))]
        if timeout is None:  # every trial is one window; allow slack for slow models and start-up
            timeout = 60.0 + 2.0 * (max_trials or 10) * measurement_ms / 1000.0
        with tempfile.TemporaryDirectory(prefix="edgeplex-pa-") as tmp:
            csv_file = Path(tmp) / "report.csv"
            command = self.command(model, url, protocol, concurrency, measurement_ms, csv_file, shape, input_data,
                                   options)
            try:
                result = subprocess.run(command, capture_output=True, text=True, env=self.env(), timeout=timeout,
                                        check=False, cwd=tmp)
            except subprocess.TimeoutExpired as exc:
                out = exc.stdout.decode(errors="replace") if isinstance(exc.stdout, bytes) else (exc.stdout or "")
                err = exc.stderr.decode(errors="replace") if isinstance(exc.stderr, bytes) else (exc.stderr or "")
                raise PerfAnalyzerError(f"perf_analyzer on {model} ({protocol}) ran past {timeout:.0f} s:\n"
                                        f"{output_tail(err + out)}", None, out, err) from exc
            if result.returncode != 0:
                raise PerfAnalyzerError(
                    f"perf_analyzer on {model} ({protocol}, concurrency {concurrency}) exited {result.returncode}:\n"
                    f"{output_tail(result.stderr) or output_tail(result.stdout)}", result.returncode, result.stdout,
                    result.stderr)
            try:
                report = csv_file.read_text()
            except OSError as exc:
                raise PerfAnalyzerError(f"perf_analyzer wrote no report: {exc}", 0, result.stdout,
                                        result.stderr) from exc
        return parse_report(report, result.stdout, model=model, protocol=protocol, concurrency=concurrency,
                            command=command)


def ensure_perf_analyzer(cache_dir: Path | None = None) -> PerfAnalyzer:
    """perf_analyzer, installed into `cache_dir` (default `<edgeplex cache>/perf_analyzer`) if needed.

    Raises UnsupportedPlatform off x86_64 Linux, PerfAnalyzerUnavailable when it cannot be fetched,
    extracted or started (the message has the reason: pip's error, a missing system library...).
    """
    check_platform()
    root = Path(cache_dir) if cache_dir is not None else default_install_dir()
    with install_lock(root):
        binary, lib_dir = install(root)
        analyzer = PerfAnalyzer(binary=binary, lib_dir=lib_dir)
        analyzer.version()  # raises PerfAnalyzerUnavailable if it does not start
    return analyzer


def parse_report(report: str, stdout: str, *, model: str, protocol: str, concurrency: int,
                 command: Sequence[str] = ()) -> PerfResult:
    """A PerfResult from perf_analyzer's CSV report (-f) and its stdout."""
    rows = list(csv.DictReader(report.splitlines()))
    row = next((r for r in rows if r.get("Concurrency", "").strip() == str(concurrency)), rows[0] if rows else None)
    if row is None:
        raise PerfAnalyzerError(f"perf_analyzer's report has no rows:\n{report}", 0, stdout)

    def number(column: str) -> float:
        try:
            return float(row[column])
        except (KeyError, TypeError, ValueError) as exc:
            raise PerfAnalyzerError(f"perf_analyzer's report has no usable {column!r}: {row}", 0, stdout) from exc

    counts = [int(m) for m in _REQUEST_COUNT.findall(stdout)]
    server = [int(m) for m in _SERVER_SUCCESS.findall(stdout)]
    return PerfResult(
        model=model, protocol=protocol, concurrency=concurrency,
        throughput=number("Inferences/Second"),
        p50_ms=number("p50 latency") / 1000.0, p90_ms=number("p90 latency") / 1000.0,
        p95_ms=number("p95 latency") / 1000.0, p99_ms=number("p99 latency") / 1000.0,
        avg_ms=number("Avg latency") / 1000.0 if row.get("Avg latency") not in (None, "") else None,
        client_requests=counts[-1] if counts else None, server_requests=server[-1] if server else None,
        command=list(command), stdout=stdout, row=dict(row))


# --- CLI: the zoo over both protocols --------------------------------------------------------------

def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m edgeplex.bench.perf_analyzer", description=__doc__.split("\n")[0])
    parser.add_argument("--repository", type=Path, default=None, help="model repository (default: the zoo)")
    parser.add_argument("--models", nargs="+", default=["yolov8n", "ppocr_det", "ppocr_rec", "magika"])
    parser.add_argument("--protocols", nargs="+", choices=["grpc", "http"], default=["grpc", "http"])
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--measurement-ms", type=int, default=5000)
    parser.add_argument("--stability-percentage", type=float, default=None)
    parser.add_argument("--cores", type=int, default=None, help="--cores for edgeplex serve")
    parser.add_argument("--url-http", default=None, help="use a running server instead of starting one")
    parser.add_argument("--url-grpc", default=None)
    args = parser.parse_args(argv)

    analyzer = ensure_perf_analyzer()
    print(analyzer.version(), flush=True)

    def sweep(http_url: str, grpc_url: str) -> int:
        failures = 0
        for model in args.models:
            for protocol in args.protocols:
                try:
                    result = analyzer.run(model, grpc_url if protocol == "grpc" else http_url, protocol,
                                          args.concurrency, args.measurement_ms, shape=ZOO_SHAPES.get(model),
                                          stability_percentage=args.stability_percentage)
                except PerfAnalyzerError as exc:
                    failures += 1
                    print(f"{model:<10} {protocol:<4} FAILED: {exc}", flush=True)
                else:
                    print(result.summary(), flush=True)
        return 1 if failures else 0

    if args.url_http or args.url_grpc:
        return sweep(args.url_http or "localhost:8000", args.url_grpc or "localhost:8001")
    from ..zoo import default_zoo_dir, pull
    from .process import running_server

    repository = args.repository or pull(default_zoo_dir(), progress=False)
    model_args = [a for m in args.models for a in ("--model", m)]
    with running_server(repository, *model_args, cores=args.cores) as server:
        return sweep(server.http_url, server.grpc_url)


if __name__ == "__main__":
    raise SystemExit(main())
