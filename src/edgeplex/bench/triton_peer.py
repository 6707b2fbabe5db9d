"""A real Triton Inference Server, installed from PyPI and run as a subprocess: the peer that the
`peer` benchmark compares edgeplex with.

Where it comes from: the `nvidia-pytriton==0.7.0` wheel carries `tritonserver` 2.51, its python
backend, one backend stub per Python version and the shared libraries they link
(`nvidia_pytriton.libs/`). It needs no GPU. The wheel is downloaded with `pip download --no-deps`
and extracted (never pip-installed: pytriton's own dependencies are not wanted), then laid out as
pytriton's launcher does (`pytriton/triton.py`, `_prepare_triton_inference_server`): a copy of
`pytriton/tritonserver/` without `python_backend_stubs/`, and the stub of this interpreter's
Python in `backends/python/`. The binaries' RPATH points back into the wheel's layout, so the copy
finds its libraries through LD_LIBRARY_PATH; the stub embeds `libpython3.X.so.1.0`, which must be
this interpreter's (its LIBDIR first, or it binds the system's older 3.11), and it imports the
models' packages through the `python3` first on PATH.

That `python3` must not be this virtualenv's: the stub is built against numpy 1.x (pytriton requires
numpy<2), and with numpy 2 `as_numpy()` reads zeros and `pb_utils.Tensor` sends empty outputs, with no
error at all. So the stub gets a virtualenv of its own, made from this interpreter, with numpy<2 and
the same onnxruntime as edgeplex's (onnxruntime supports numpy>=1.21.6).
"""

from __future__ import annotations

import os
import platform
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import tempfile
import threading
import time
import urllib.error
import urllib.request
import uuid
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

from .perf_analyzer_install import install_lock, output_tail
from .process import ServerProcess

PYTRITON_VERSION = "0.7.0"
WHEEL_PLATFORM = "manylinux_2_35_x86_64"  # the only platform the wheel exists for
WHEEL_PREFIX = f"nvidia_pytriton-{PYTRITON_VERSION}-"
SERVER_MEMBER = "pytriton/tritonserver/"
LIBS_MEMBER = "nvidia_pytriton.libs/"
STUBS = "python_backend_stubs"
# The stub's numpy ABI (pytriton 0.7.0: numpy<2); the models' runtime as edgeplex's own.
STUB_NUMPY = "numpy<2"


class TritonUnavailable(Exception):
    """Triton cannot be installed or started here; the message says why."""


def default_install_dir() -> Path:
    """`<edgeplex cache>/triton`: fetched once, then used offline."""
    from ..zoo import default_cache_dir

    return default_cache_dir() / "triton"


def python_version() -> str:
    """"3.11": the stub must embed the same Python as the interpreter whose packages it imports."""
    return f"{sys.version_info.major}.{sys.version_info.minor}"


@dataclass(frozen=True)
class TritonInstall:
    """An installed tritonserver: the laid-out copy and the extracted wheel's libraries."""

    root: Path

    @property
    def site_packages(self) -> Path:
        """Where the wheel is extracted (as pip would put it, but only the parts Triton needs)."""
        return self.root / PYTRITON_VERSION / "site-packages"

    @property
    def libs(self) -> Path:
        return self.site_packages / "nvidia_pytriton.libs"

    @property
    def server_dir(self) -> Path:
        """The laid-out copy, one per Python version (the stub in it is that version's)."""
        return self.root / PYTRITON_VERSION / f"tritonserver-py{python_version()}"

    @property
    def binary(self) -> Path:
        return self.server_dir / "bin" / "tritonserver"

    @property
    def stub_env(self) -> Path:
        """The backend stub's virtualenv: numpy<2 and edgeplex's onnxruntime version."""
        onnxruntime = metadata.version("onnxruntime")
        return self.root / PYTRITON_VERSION / f"stub-env-py{python_version()}-onnxruntime{onnxruntime}"

    def environment(self) -> dict[str, str]:
        """The server's environment: this interpreter's libpython and the wheel's libraries first
        on LD_LIBRARY_PATH, the stub's virtualenv first on PATH (the stub finds `python3` there)."""
        libdir = str(sysconfig.get_config_var("LIBDIR") or "")
        library_path = [p for p in (libdir, str(self.libs), os.environ.get("LD_LIBRARY_PATH", "")) if p]
        path = [str(self.stub_env / "bin"), os.environ.get("PATH", "")]
        return {**os.environ, "LD_LIBRARY_PATH": ":".join(library_path), "PATH": ":".join(p for p in path if p)}

    def stub_versions(self) -> dict[str, str]:
        """numpy's and onnxruntime's versions as the stub imports them."""
        code = "import numpy, onnxruntime; print(numpy.__version__, onnxruntime.__version__)"
        done = subprocess.run([str(self.stub_env / "bin" / "python3"), "-c", code], capture_output=True, text=True,
                              check=False, timeout=120)
        if done.returncode != 0:
            raise TritonUnavailable(f"the stub's virtualenv {self.stub_env} is broken:\n{output_tail(done.stderr)}")
        numpy_version, onnxruntime_version = done.stdout.split()
        return {"numpy": numpy_version, "onnxruntime": onnxruntime_version}

    def unresolved_libraries(self) -> list[str]:
        """ldd's "not found" lines for the server, the python backend and the stub (empty: all resolve)."""
        missing = []
        for binary in (self.binary, self.server_dir / "backends" / "python" / "libtriton_python.so",
                       self.server_dir / "backends" / "python" / "triton_python_backend_stub"):
            try:
                done = subprocess.run(["ldd", str(binary)], capture_output=True, text=True, env=self.environment(),
                                      check=False, timeout=60)
            except (OSError, subprocess.TimeoutExpired) as exc:
                raise TritonUnavailable(f"cannot run ldd on {binary}: {exc}") from exc
            missing += [f"{binary.name}: {line.strip()}" for line in done.stdout.splitlines() if "not found" in line]
        return missing


def _download_wheel(wheel_dir: Path) -> Path:
    wheel_dir.mkdir(parents=True, exist_ok=True)
    command = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--platform",
               WHEEL_PLATFORM, "--python-version", python_version(), "--dest", str(wheel_dir),
               "--disable-pip-version-check", "--no-input", f"nvidia-pytriton=={PYTRITON_VERSION}"]
    _run(command, "pip download of nvidia-pytriton failed")
    found = sorted(wheel_dir.glob(f"{WHEEL_PREFIX}*.whl"))
    if not found:
        raise TritonUnavailable(f"pip download left no {WHEEL_PREFIX}*.whl in {wheel_dir}")
    return found[0]


def _extract(wheel: Path, target: Path) -> None:
    """The server tree and its libraries out of the wheel into `target`, file modes kept; written
    beside it first and renamed, so a half-extracted tree is never taken for a complete one."""
    scratch = Path(tempfile.mkdtemp(dir=target.parent, prefix=".extract-"))
    try:
        with zipfile.ZipFile(wheel) as wheel_zip:
            for info in wheel_zip.infolist():
                if info.is_dir() or not info.filename.startswith((SERVER_MEMBER, LIBS_MEMBER)):
                    continue
                path = Path(wheel_zip.extract(info, scratch))
                path.chmod(((info.external_attr >> 16) & 0o755) or 0o644)
        scratch.chmod(0o755)
        shutil.rmtree(target, ignore_errors=True)
        os.replace(scratch, target)
    except (OSError, zipfile.BadZipFile) as exc:
        raise TritonUnavailable(f"cannot extract {wheel}: {exc}") from exc
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def _lay_out(install: TritonInstall) -> None:
    """pytriton's layout: the server tree without the stubs, this Python's stub in backends/python."""
    source = install.site_packages / SERVER_MEMBER
    stub = source / STUBS / python_version() / "triton_python_backend_stub"
    if not stub.is_file():
        raise TritonUnavailable(f"nvidia-pytriton {PYTRITON_VERSION} has no python backend stub for Python "
                                f"{python_version()} (it has: {', '.join(sorted(p.name for p in (source / STUBS).iterdir()))})")
    scratch = install.server_dir.with_name(f".{install.server_dir.name}.partial")
    shutil.rmtree(scratch, ignore_errors=True)
    shutil.copytree(source, scratch, ignore=shutil.ignore_patterns(STUBS))
    shutil.copy2(stub, scratch / "backends" / "python" / "triton_python_backend_stub")
    shutil.rmtree(install.server_dir, ignore_errors=True)
    os.replace(scratch, install.server_dir)


def _make_stub_env(env: Path) -> None:
    """A virtualenv of this interpreter with numpy<2 and edgeplex's onnxruntime (pip, its usual
    indexes), made beside its place and renamed there once complete."""
    scratch = env.with_name(f".{env.name}.partial")
    shutil.rmtree(scratch, ignore_errors=True)
    requirements = [STUB_NUMPY, f"onnxruntime=={metadata.version('onnxruntime')}"]
    for command in ([sys.executable, "-m", "venv", str(scratch)],
                    [str(scratch / "bin" / "python3"), "-m", "pip", "install", "--disable-pip-version-check",
                     "--no-input", "--quiet", *requirements]):
        _run(command, f"making the stub's virtualenv failed ({' '.join(command[-3:])})")
    shutil.rmtree(env, ignore_errors=True)
    os.replace(scratch, env)


def install(root: Path | None = None) -> TritonInstall:
    """tritonserver under `root` (default: the cache), downloaded and laid out if missing, with the
    stub's virtualenv; its libraries checked with ldd. Safe to call from several processes at once
    (a file lock)."""
    if not sys.platform.startswith("linux") or platform.machine().lower() not in ("x86_64", "amd64"):
        raise TritonUnavailable(f"nvidia-pytriton ships tritonserver for x86_64 Linux only "
                                f"(this is {sys.platform}/{platform.machine()})")
    installed = TritonInstall(root or default_install_dir())
    with install_lock(installed.root):
        if not installed.binary.is_file():
            if not (installed.libs.is_dir() and (installed.site_packages / SERVER_MEMBER / "bin").is_dir()):
                wheels = installed.root / "wheels"
                found = sorted(wheels.glob(f"{WHEEL_PREFIX}*.whl")) if wheels.is_dir() else []
                wheel = found[0] if found else _download_wheel(wheels)
                installed.site_packages.parent.mkdir(parents=True, exist_ok=True)
                _extract(wheel, installed.site_packages)
            _lay_out(installed)
        if not (installed.stub_env / "bin" / "python3").exists():
            _make_stub_env(installed.stub_env)
    libdir = Path(str(sysconfig.get_config_var("LIBDIR")))
    soname = str(sysconfig.get_config_var("INSTSONAME") or f"libpython{python_version()}.so.1.0")
    if not (libdir / soname).is_file():
        raise TritonUnavailable(f"the python backend stub needs {soname} of this interpreter, which {libdir} lacks "
                                "(a Python built without --enable-shared)")
    missing = installed.unresolved_libraries()
    if missing:
        raise TritonUnavailable("tritonserver's libraries do not resolve:\n" + "\n".join(missing))
    return installed


def free_port() -> int:
    """A TCP port nothing listens on now (Triton takes fixed ports, not 0)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _ready(http_port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{http_port}/v2/health/ready", timeout=2) as response:
            return bool(response.status == 200)
    except (urllib.error.URLError, OSError):
        return False


@contextmanager
def running_triton(repository: Path, installed: TritonInstall | None = None, start_timeout: float = 120.0,
                   stop_timeout: float = 30.0) -> Iterator[ServerProcess]:
    """tritonserver on `repository`, every model loaded, on free ports and a shared-memory prefix of
    its own; stopped with SIGTERM and a bounded wait on exit (SIGKILL only if it hangs)."""
    installed = installed or install()
    http_port, grpc_port, metrics_port = free_port(), free_port(), free_port()
    shm_prefix = f"edgeplex_{os.getpid()}_{uuid.uuid4().hex[:8]}_"
    command = [str(installed.binary), f"--model-repository={repository}",
               f"--backend-directory={installed.server_dir / 'backends'}",
               f"--cache-directory={installed.server_dir / 'caches'}", "--model-control-mode=explicit",
               "--load-model=*", f"--backend-config=python,shm-region-prefix-name={shm_prefix}",
               f"--http-port={http_port}", f"--grpc-port={grpc_port}", f"--metrics-port={metrics_port}",
               "--http-address=127.0.0.1", "--grpc-address=127.0.0.1", "--metrics-address=127.0.0.1",
               "--exit-timeout-secs=10"]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                               env=installed.environment(), start_new_session=True)
    output: list[str] = []

    def pump() -> None:
        assert process.stdout is not None
        for line in process.stdout:
            output.append(line.rstrip())
        process.stdout.close()

    threading.Thread(target=pump, daemon=True).start()
    server = ServerProcess(process, http_port, grpc_port, output)
    try:
        deadline = time.monotonic() + start_timeout
        while not _ready(http_port):
            if process.poll() is not None:
                raise TritonUnavailable(f"tritonserver exited ({process.returncode}):\n{_why(output)}")
            if time.monotonic() > deadline:
                raise TritonUnavailable(f"tritonserver not ready after {start_timeout:.0f} s:\n{_why(output)}")
            time.sleep(0.2)
        yield server
    finally:
        _stop(server, stop_timeout)
        for leftover in Path("/dev/shm").glob(f"{shm_prefix}*"):  # only after a kill
            leftover.unlink(missing_ok=True)


def _why(output: list[str]) -> str:
    """Triton's error lines and failed models' rows (its log is long: they are lost in a tail),
    then its last lines."""
    errors = [line for line in output if line.startswith("E") or "UNAVAILABLE" in line]
    return "\n".join([*errors[:20], "...", *output[-8:]])


def _stop(server: ServerProcess, timeout: float) -> None:
    """SIGTERM, a bounded wait, then SIGKILL to the server's whole session (its backend stubs too)."""
    if server.stop(timeout) == -signal.SIGKILL:
        try:
            os.killpg(server.process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def _run(command: list[str], failure: str) -> None:
    """Run a set-up command (pip, venv); TritonUnavailable with `failure`, the exit status and the
    output's tail when it does not succeed."""
    try:
        done = subprocess.run(command, capture_output=True, text=True, check=False, timeout=900)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise TritonUnavailable(f"{failure}: {exc}") from exc
    if done.returncode != 0:
        raise TritonUnavailable(f"{failure} (exit {done.returncode}):\n{output_tail(done.stderr or done.stdout)}")
