"""Start `edgeplex serve` as a real subprocess on free ports (benchmarks and integration tests)."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .cpu import process_cpu_seconds

READY_LINE = re.compile(r"ready: HTTP http://(?P<host>[^:]+):(?P<http>\d+) gRPC [^:]+:(?P<grpc>\d+)")


@dataclass
class ServerProcess:
    process: subprocess.Popen[str]
    http_port: int
    grpc_port: int
    output: list[str] = field(default_factory=list)

    @property
    def http_url(self) -> str:
        return f"127.0.0.1:{self.http_port}"

    @property
    def grpc_url(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    def cpu_seconds(self) -> float:
        """CPU time (user + system, all threads) the server process has used so far."""
        return process_cpu_seconds(self.process.pid)

    def successes(self, model: str) -> int:
        """Successful requests the server has answered for `model` (its statistics)."""
        import tritonclient.http as httpclient

        client = httpclient.InferenceServerClient(self.http_url)
        try:
            stats = client.get_inference_statistics(model)["model_stats"]
        finally:
            client.close()
        return sum(int(entry["inference_stats"]["success"]["count"]) for entry in stats)

    def get_json(self, path: str) -> dict[str, Any]:
        """A JSON object from the server's HTTP endpoint `path` ("/v2/edgeplex/placement")."""
        with urllib.request.urlopen(f"http://{self.http_url}{path}", timeout=10) as response:
            return dict(json.load(response))

    def get_text(self, path: str) -> str:
        """A text page from the server's HTTP endpoint `path` ("/metrics")."""
        with urllib.request.urlopen(f"http://{self.http_url}{path}", timeout=10) as response:
            return str(response.read().decode())

    def stop(self, timeout: float = 30.0) -> int:
        """SIGTERM, then wait; returns the exit code (SIGKILL only if it hangs)."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return self.process.returncode


@contextmanager
def running_server(repository: Path, *extra: str, cores: int | None = None, start_timeout: float = 120.0) -> Iterator[ServerProcess]:
    """`edgeplex serve` on `repository` with free ports; stopped (SIGTERM) on exit."""
    command = [sys.executable, "-m", "edgeplex.cli", "--quiet", "serve", "--repository", str(repository),
               "--http-port", "0", "--grpc-port", "0", *extra]
    if cores is not None:
        command += ["--cores", str(cores)]
    process = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"}
    )
    output: list[str] = []
    found: dict[str, int] = {}
    ready = threading.Event()

    def pump() -> None:
        assert process.stdout is not None
        for line in process.stdout:
            output.append(line.rstrip())
            match = READY_LINE.search(line)
            if match and not ready.is_set():
                found.update(http=int(match["http"]), grpc=int(match["grpc"]))
                ready.set()
        process.stdout.close()
        ready.set()

    threading.Thread(target=pump, daemon=True).start()
    deadline = time.monotonic() + start_timeout
    while not ready.wait(0.1):
        if time.monotonic() > deadline:
            process.kill()
            raise RuntimeError("edgeplex serve did not become ready:\n" + "\n".join(output[-30:]))
    if not found:
        process.wait(5)
        raise RuntimeError(f"edgeplex serve exited ({process.returncode}):\n" + "\n".join(output[-30:]))
    server = ServerProcess(process, found["http"], found["grpc"], output)
    try:
        yield server
    finally:
        server.stop()
