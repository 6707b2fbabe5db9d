"""Installing Triton's perf_analyzer from PyPI wheels (running it is perf_analyzer.py).

Where it comes from: the platform wheel of `tritonclient==2.41.0` is the last one that carries the
`perf_analyzer` binary (`tritonclient-2.41.0.data/data/bin/perf_analyzer`); newer wheels do not, and
the separate `perf-analyzer` package needs glibc 2.38. The binary is dynamically linked against

* `libcudart.so.12` — taken from the `nvidia-cuda-runtime-cu12` wheel (no GPU is needed: it is only
  loaded, never used for CPU-side load generation);
* `libb64.so.0d` — the small libb64 base64 library (Debian/Ubuntu package `libb64-0d`). It is not on
  PyPI, so when the system has none, a compatible one is compiled from the source below with the
  system C compiler (perf_analyzer uses five functions of it, only to decode "b64" JSON input data);
* libssl/libcrypto 3, libz, libstdc++ — the usual system libraries.

`install()` downloads the two wheels with `pip download` (through the ordinary pip client and its
configured indexes), extracts only those two files and builds the libb64 shim if needed. Everything
is cached under `<edgeplex cache>/perf_analyzer`, so later calls work offline.
"""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import os
import platform
import shutil
import stat
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Iterator
from pathlib import Path

TRITONCLIENT_VERSION = "2.41.0"
# Matches the CUDA 12.3 that Triton 23.12 (client 2.41) was built with; any 12.x soname works.
CUDA_RUNTIME_VERSION = "12.3.101"
BINARY_MEMBER = f"tritonclient-{TRITONCLIENT_VERSION}.data/data/bin/perf_analyzer"
CUDART_MEMBER = "nvidia/cuda_runtime/lib/libcudart.so.12"
LIBB64_SONAME = "libb64.so.0d"
# Both wheels are tagged manylinux1_x86_64 (py3-none); the other tags only widen what pip accepts.
PLATFORM_TAGS = ("manylinux1_x86_64", "manylinux2014_x86_64", "manylinux_2_17_x86_64")


class PerfAnalyzerUnavailable(Exception):
    """perf_analyzer cannot be installed or started here; the message says why."""


class UnsupportedPlatform(PerfAnalyzerUnavailable):
    """perf_analyzer only exists as an x86_64 Linux binary."""


def output_tail(text: str, lines: int = 20) -> str:
    """The last `lines` lines of a tool's output: enough to say why it failed."""
    return "\n".join(text.strip().splitlines()[-lines:])


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
            raise PerfAnalyzerUnavailable(
                f"building {LIBB64_SONAME} with {compiler} failed:\n{output_tail(result.stderr)}")
        _install_file(built.read_bytes(), lib_dir / LIBB64_SONAME, executable=False)


# --- installation ------------------------------------------------------------------------------

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
            f"{output_tail(result.stderr or result.stdout)}")


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
def install_lock(directory: Path) -> Iterator[None]:
    """Serialise installs between processes (pytest workers, parallel benchmarks)."""
    directory.mkdir(parents=True, exist_ok=True)
    with open(directory / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def default_install_dir() -> Path:
    """`<edgeplex cache>/perf_analyzer`: fetched once, then used offline."""
    from ..zoo import default_cache_dir

    return default_cache_dir() / "perf_analyzer"


def check_platform() -> None:
    """UnsupportedPlatform off x86_64 Linux, before anything is fetched."""
    machine = platform.machine().lower()
    if not sys.platform.startswith("linux") or machine not in ("x86_64", "amd64"):
        raise UnsupportedPlatform(
            f"perf_analyzer is only shipped for x86_64 Linux (this is {sys.platform}/{platform.machine()})")


def install(root: Path) -> tuple[Path, Path]:
    """perf_analyzer's binary and the directory of its libraries under `root`, fetched, extracted
    or built there if missing (hold `install_lock(root)` around it). PerfAnalyzerUnavailable when
    a piece cannot be had; whether the binary starts is the caller's check."""
    binary, lib_dir = root / "bin" / "perf_analyzer", root / "lib"
    if not (binary.is_file() and (lib_dir / "libcudart.so.12").is_file()):
        wheel_dir = root / "wheels"
        triton = _find_wheel(wheel_dir, f"tritonclient-{TRITONCLIENT_VERSION}-")
        cudart = _find_wheel(wheel_dir, f"nvidia_cuda_runtime_cu12-{CUDA_RUNTIME_VERSION}-")
        if triton is None or cudart is None:
            _download_wheels(wheel_dir)
            triton = _find_wheel(wheel_dir, f"tritonclient-{TRITONCLIENT_VERSION}-")
            cudart = _find_wheel(wheel_dir, f"nvidia_cuda_runtime_cu12-{CUDA_RUNTIME_VERSION}-")
            if triton is None or cudart is None:
                raise PerfAnalyzerUnavailable(f"pip download left no tritonclient/cuda-runtime wheel in {wheel_dir}")
        _extract(cudart, CUDART_MEMBER, lib_dir / "libcudart.so.12", executable=False)
        _extract(triton, BINARY_MEMBER, binary, executable=True)
    if not (lib_dir / LIBB64_SONAME).is_file() and not _system_has(LIBB64_SONAME):
        _build_libb64(lib_dir)
    if not os.access(binary, os.X_OK):
        binary.chmod(binary.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    return binary, lib_dir
