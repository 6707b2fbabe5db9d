"""Triton's own load generator, perf_analyzer, fetched from PyPI and run against edgeplex.

Where it comes from: the platform wheel of `tritonclient==2.41.0` is the last one that carries the
`perf_analyzer` binary (`tritonclient-2.41.0.data/data/bin/perf_analyzer`); newer wheels do not, and
the separate `perf-analyzer` package needs glibc 2.38. The binary is dynamically linked against

* `libcudart.so.12` — taken from the `nvidia-cuda-runtime-cu12` wheel (no GPU is needed: it is only
  loaded, never used for CPU-side load generation);
* `libb64.so.0d` — the small libb64 base64 library (Debian/Ubuntu package `libb64-0d`). It is not on
  PyPI, so when the system has none, a compatible one is compiled from the source below with the
  system C compiler (perf_analyzer uses five functions of it, only to decode "b64" JSON input data);
* libssl/libcrypto 3, libz, libstdc++ — the usual system libraries.

`ensure_perf_analyzer()` downloads the two wheels with `pip download` (through the ordinary pip client
and its configured indexes), extracts only those two files, builds the libb64 shim if needed and checks
that the binary starts (`perf_analyzer --version`). Everything is cached under
`<edgeplex cache>/perf_analyzer`, so later calls work offline.

`PerfAnalyzer.run()` runs one concurrency level and parses the CSV report (`-f`, `--verbose-csv`)
plus the client/server request counts printed on stdout into a `PerfResult`.

    python -m edgeplex.bench.perf_analyzer --cores 2 --concurrency 4

runs the zoo's models over gRPC and HTTP against a fresh `edgeplex serve` and prints a table.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import ctypes
import fcntl
import os
import platform
import re
import shutil
import stat
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

TRITONCLIENT_VERSION = "2.41.0"
# Matches the CUDA 12.3 that Triton 23.12 (client 2.41) was built with; any 12.x soname works.
CUDA_RUNTIME_VERSION = "12.3.101"
BINARY_MEMBER = f"tritonclient-{TRITONCLIENT_VERSION}.data/data/bin/perf_analyzer"
CUDART_MEMBER = "nvidia/cuda_runtime/lib/libcudart.so.12"
LIBB64_SONAME = "libb64.so.0d"
# Both wheels are tagged manylinux1_x86_64 (py3-none); the other tags only widen what pip accepts.
PLATFORM_TAGS = ("manylinux1_x86_64", "manylinux2014_x86_64", "manylinux_2_17_x86_64")

WireProtocol = Literal["grpc", "http"]

# Shapes for the zoo's dynamic dimensions (what their own packages feed), used by the CLI below.
ZOO_SHAPES: dict[str, dict[str, list[int]]] = {
    "ppocr_det": {"x": [3, 320, 320]},
    "ppocr_rec": {"x": [3, 48, 320]},
}


class PerfAnalyzerUnavailable(Exception):
    """perf_analyzer cannot be installed or started here; the message says why."""


class UnsupportedPlatform(PerfAnalyzerUnavailable):
    """perf_analyzer only exists as an x86_64 Linux binary."""


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


# --- libb64 -----------------------------------------------------------------------------------
# The libb64 1.2 API (public domain), written out again: the same struct layouts and behaviour
# (the encoder breaks lines every 72 characters, the decoder skips characters outside the alphabet).
LIBB64_SOURCE = r"""
typedef enum { step_A, step_B, step_C } base64_encodestep;
typedef struct { base64_encodestep step; char result; int stepcount; } base64_encodestate;
typedef enum { step_a, step_b, step_c, step_d } base64_decodestep;
typedef struct { base64_decodestep step; char plainchar; } base64_decodestate;

static const int CHARS_PER_LINE = 72;
static const char ENCODING[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

void base64_init_encodestate(base64_encodestate* s) { s->step = step_A; s->result = 0; s->stepcount = 0; }

char base64_encode_value(char v) { return (v < 0 || v > 63) ? '=' : ENCODING[(int)v]; }

int base64_encode_block(const char* in, int length, char* out, base64_encodestate* s) {
    const unsigned char* p = (const unsigned char*)in;
    const unsigned char* end = p + length;
    char* o = out;
    char result = s->result;
    unsigned char c;
    switch (s->step) {
        while (1) {
        case step_A:
            if (p == end) { s->result = result; s->step = step_A; return (int)(o - out); }
            c = *p++;
            result = (char)((c & 0xfc) >> 2);
            *o++ = base64_encode_value(result);
            result = (char)((c & 0x03) << 4);
            /* fall through */
        case step_B:
            if (p == end) { s->result = result; s->step = step_B; return (int)(o - out); }
            c = *p++;
            result |= (char)((c & 0xf0) >> 4);
            *o++ = base64_encode_value(result);
            result = (char)((c & 0x0f) << 2);
            /* fall through */
        case step_C:
            if (p == end) { s->result = result; s->step = step_C; return (int)(o - out); }
            c = *p++;
            result |= (char)((c & 0xc0) >> 6);
            *o++ = base64_encode_value(result);
            result = (char)(c & 0x3f);
            *o++ = base64_encode_value(result);
            if (++s->stepcount == CHARS_PER_LINE / 4) { *o++ = '\n'; s->stepcount = 0; }
        }
    }
    return (int)(o - out);
}

int base64_encode_blockend(char* out, base64_encodestate* s) {
    char* o = out;
    switch (s->step) {
    case step_B: *o++ = base64_encode_value(s->result); *o++ = '='; *o++ = '='; break;
    case step_C: *o++ = base64_encode_value(s->result); *o++ = '='; break;
    case step_A: break;
    }
    *o++ = '\n';
    return (int)(o - out);
}

int base64_decode_value(char v) {
    unsigned char c = (unsigned char)v;
    if (c >= 'A' && c <= 'Z') return c - 'A';
    if (c >= 'a' && c <= 'z') return c - 'a' + 26;
    if (c >= '0' && c <= '9') return c - '0' + 52;
    if (c == '+') return 62;
    if (c == '/') return 63;
    if (c == '=') return -2;
    return -1;
}

void base64_init_decodestate(base64_decodestate* s) { s->step = step_a; s->plainchar = 0; }

#define NEXT(state) do { if (p == end) { s->step = state; s->plainchar = *o; return (int)(o - out); } \
                         f = base64_decode_value(*p++); } while (f < 0)

int base64_decode_block(const char* in, const int length, char* out, base64_decodestate* s) {
    const char* p = in;
    const char* end = in + length;
    char* o = out;
    int f;
    *o = s->plainchar;
    switch (s->step) {
        while (1) {
        case step_a:
            NEXT(step_a);
            *o = (char)((f & 0x3f) << 2);
            /* fall through */
        case step_b:
            NEXT(step_b);
            *o++ |= (char)((f & 0x30) >> 4);
            *o = (char)((f & 0x0f) << 4);
            /* fall through */
        case step_c:
            NEXT(step_c);
            *o++ |= (char)((f & 0x3c) >> 2);
            *o = (char)((f & 0x03) << 6);
            /* fall through */
        case step_d:
            NEXT(step_d);
            *o++ |= (char)(f & 0x3f);
        }
    }
    return (int)(o - out);
}
"""


def _system_has(soname: str) -> bool:
    try:
        ctypes.CDLL(soname)
    except OSError:
        return False
    return True


def _build_libb64(lib_dir: Path) -> None:
    compiler = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc") or shutil.which("clang")
    if not compiler:
        raise PerfAnalyzerUnavailable(
            f"perf_analyzer needs {LIBB64_SONAME}, which this system lacks, and there is no C compiler to build a "
            "compatible one: install it (Debian/Ubuntu: apt-get install libb64-0d) or a C compiler (cc/gcc)")
    with tempfile.TemporaryDirectory() as tmp:
        source = Path(tmp) / "b64.c"
        source.write_text(LIBB64_SOURCE)
        built = Path(tmp) / LIBB64_SONAME
        result = subprocess.run(
            [compiler, "-shared", "-fPIC", "-O2", f"-Wl,-soname,{LIBB64_SONAME}", "-o", str(built), str(source)],
            capture_output=True, text=True, check=False)
        if result.returncode != 0:
            raise PerfAnalyzerUnavailable(f"building {LIBB64_SONAME} with {compiler} failed:\n{_tail(result.stderr)}")
        _install_file(built.read_bytes(), lib_dir / LIBB64_SONAME, executable=False)


# --- installation ------------------------------------------------------------------------------

def _tail(text: str, lines: int = 20) -> str:
    return "\n".join(text.strip().splitlines()[-lines:])


def _install_file(data: bytes, target: Path, executable: bool) -> None:
    """Write atomically (temp file + rename), so a half-written file is never taken for a cached one."""
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        mode = 0o755 if executable else 0o644
        os.chmod(tmp, mode)
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def _find_wheel(wheel_dir: Path, prefix: str) -> Path | None:
    found = sorted(wheel_dir.glob(f"{prefix}*.whl")) if wheel_dir.is_dir() else []
    return found[0] if found else None


def _download_wheels(wheel_dir: Path) -> None:
    wheel_dir.mkdir(parents=True, exist_ok=True)
    command = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
               *(arg for tag in PLATFORM_TAGS for arg in ("--platform", tag)), "--python-version", "3.11",
               "--dest", str(wheel_dir), "--disable-pip-version-check", "--no-input",
               f"tritonclient=={TRITONCLIENT_VERSION}", f"nvidia-cuda-runtime-cu12=={CUDA_RUNTIME_VERSION}"]
    try:
        result = subprocess.run(command, capture_output=True, text=True, check=False, timeout=900)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise PerfAnalyzerUnavailable(f"pip download of the perf_analyzer wheels failed: {exc}") from exc
    if result.returncode != 0:
        raise PerfAnalyzerUnavailable(
            f"pip download of the perf_analyzer wheels failed (exit {result.returncode}):\n"
            f"{_tail(result.stderr or result.stdout)}")


def _extract(wheel: Path, member: str, target: Path, executable: bool) -> None:
    try:
        with zipfile.ZipFile(wheel) as zf:
            data = zf.read(member)
    except KeyError as exc:
        raise PerfAnalyzerUnavailable(f"{wheel.name} has no {member}") from exc
    except (OSError, zipfile.BadZipFile) as exc:
        raise PerfAnalyzerUnavailable(f"cannot read {wheel}: {exc}") from exc
    _install_file(data, target, executable)


@contextlib.contextmanager
def _locked(directory: Path) -> Iterator[None]:
    """Serialise installs between processes (pytest workers, parallel benchmarks)."""
    directory.mkdir(parents=True, exist_ok=True)
    with open(directory / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def default_install_dir() -> Path:
    from ..zoo import default_cache_dir

    return default_cache_dir() / "perf_analyzer"


def ensure_perf_analyzer(cache_dir: Path | None = None) -> PerfAnalyzer:
    """perf_analyzer, installed into `cache_dir` (default `<edgeplex cache>/perf_analyzer`) if needed.

    Raises UnsupportedPlatform off x86_64 Linux, PerfAnalyzerUnavailable when it cannot be fetched,
    extracted or started (the message has the reason: pip's error, a missing system library...).
    """
    machine = platform.machine().lower()
    if not sys.platform.startswith("linux") or machine not in ("x86_64", "amd64"):
        raise UnsupportedPlatform(
            f"perf_analyzer is only shipped for x86_64 Linux (this is {sys.platform}/{platform.machine()})")
    root = Path(cache_dir) if cache_dir is not None else default_install_dir()
    analyzer = PerfAnalyzer(binary=root / "bin" / "perf_analyzer", lib_dir=root / "lib")
    with _locked(root):
        if not (analyzer.binary.is_file() and (analyzer.lib_dir / "libcudart.so.12").is_file()):
            wheel_dir = root / "wheels"
            triton = _find_wheel(wheel_dir, f"tritonclient-{TRITONCLIENT_VERSION}-")
            cudart = _find_wheel(wheel_dir, f"nvidia_cuda_runtime_cu12-{CUDA_RUNTIME_VERSION}-")
            if triton is None or cudart is None:
                _download_wheels(wheel_dir)
                triton = _find_wheel(wheel_dir, f"tritonclient-{TRITONCLIENT_VERSION}-")
                cudart = _find_wheel(wheel_dir, f"nvidia_cuda_runtime_cu12-{CUDA_RUNTIME_VERSION}-")
                if triton is None or cudart is None:
                    raise PerfAnalyzerUnavailable(
                        f"pip download left no tritonclient/cuda-runtime wheel in {wheel_dir}")
            _extract(cudart, CUDART_MEMBER, analyzer.lib_dir / "libcudart.so.12", executable=False)
            _extract(triton, BINARY_MEMBER, analyzer.binary, executable=True)
        if not (analyzer.lib_dir / LIBB64_SONAME).is_file() and not _system_has(LIBB64_SONAME):
            _build_libb64(analyzer.lib_dir)
        if not os.access(analyzer.binary, os.X_OK):
            analyzer.binary.chmod(analyzer.binary.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
        analyzer.version()  # raises PerfAnalyzerUnavailable if it does not start
    return analyzer


# --- running -----------------------------------------------------------------------------------

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
            raise PerfAnalyzerUnavailable(f"{self.binary} --version failed (exit {result.returncode}):\n{_tail(text)}")
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
                                        f"{_tail(err + out)}", None, out, err) from exc
            if result.returncode != 0:
                raise PerfAnalyzerError(
                    f"perf_analyzer on {model} ({protocol}, concurrency {concurrency}) exited {result.returncode}:\n"
                    f"{_tail(result.stderr) or _tail(result.stdout)}", result.returncode, result.stdout, result.stderr)
            try:
                report = csv_file.read_text()
            except OSError as exc:
                raise PerfAnalyzerError(f"perf_analyzer wrote no report: {exc}", 0, result.stdout,
                                        result.stderr) from exc
        return parse_report(report, result.stdout, model=model, protocol=protocol, concurrency=concurrency,
                            command=command)


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
