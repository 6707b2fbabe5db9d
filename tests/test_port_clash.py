"""A port already in use: one clear line and exit status 2 from `edgeplex serve` (no traceback,
no SIGABRT from native threads torn down on the early exit), and in process a StartupError from
`serve()` with nothing it had started left running or listening."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from edgeplex.config import Settings
from edgeplex.engine import Engine
from edgeplex.errors import StartupError
from edgeplex.server.app import serve
from edgeplex.server.ports import bind_http_socket, check_bindable

HOST = "127.0.0.1"


@pytest.fixture
def taken() -> Iterator[int]:
    """A port another process would hold: bound and listening on HOST."""
    with socket.socket() as holder:
        holder.bind((HOST, 0))
        holder.listen()
        yield holder.getsockname()[1]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind((HOST, 0))
        return int(probe.getsockname()[1])


def assert_free(port: int) -> None:
    """Nothing of ours still listens there: it can be bound and listened on again."""
    with socket.socket() as probe:
        probe.bind((HOST, port))
        probe.listen()


def serve_process(tiny_repo: Path, http_port: int, grpc_port: int) -> subprocess.CompletedProcess[str]:
    """`edgeplex serve` with models loaded (so their native threads exist at the early exit)."""
    command = [sys.executable, "-m", "edgeplex.cli", "--log-level", "warning", "serve",
               "--repository", str(tiny_repo), "--model", "add", "--model", "slow", "--policy", "config",
               "--cores", "2", "--host", HOST, "--http-port", str(http_port), "--grpc-port", str(grpc_port)]
    return subprocess.run(command, capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONUNBUFFERED": "1"})


@pytest.mark.parametrize("which", ["HTTP", "gRPC"])
def test_serve_exits_2_with_one_line(tiny_repo: Path, taken: int, which: str) -> None:
    other = free_port()
    http_port, grpc_port = (taken, other) if which == "HTTP" else (other, taken)
    done = serve_process(tiny_repo, http_port, grpc_port)
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 2, (done.returncode, done.stderr)
    assert done.returncode != -signal.SIGABRT and "terminate called" not in done.stderr
    assert 1 <= len(lines) <= 3, done.stderr
    assert f"edgeplex: {which} port {taken} on {HOST} is already in use" in lines, done.stderr
    assert "Traceback" not in done.stderr and "never awaited" not in done.stderr, done.stderr
    assert "ready" not in done.stdout


def run_serve(engine: Engine, http_port: int, grpc_port: int) -> StartupError:
    """`serve()` in this (the main) thread, as the CLI runs it; the StartupError it raised, after
    checking that no task of it is left on the loop."""

    async def attempt() -> StartupError:
        settings = Settings(host=HOST, http_port=http_port, grpc_port=grpc_port)
        with pytest.raises(StartupError) as caught:
            await serve(engine, settings, on_started=lambda h, g: pytest.fail("serve() started"))
        assert asyncio.all_tasks() == {asyncio.current_task()}
        return caught.value

    return asyncio.run(attempt())


def test_grpc_clash_stops_http_again(engine: Engine, taken: int) -> None:
    """The HTTP socket was bound before the gRPC port was found taken: it is closed again."""
    http_port = free_port()
    error = run_serve(engine, http_port, taken)
    assert error.message == f"gRPC port {taken} on {HOST} is already in use"
    assert_free(http_port)


def test_http_clash_starts_nothing(engine: Engine, taken: int) -> None:
    grpc_port = free_port()
    error = run_serve(engine, taken, grpc_port)
    assert error.message == f"HTTP port {taken} on {HOST} is already in use"
    assert_free(grpc_port)
    assert engine.ready()  # the engine is the caller's: serve() leaves it open


def test_ports_name_other_bind_failures() -> None:
    """An address not of this machine (TEST-NET-1): the reason, not 'in use'."""
    with pytest.raises(StartupError, match=r"^HTTP port \d+ on 192\.0\.2\.1 cannot be listened on: "):
        bind_http_socket("192.0.2.1", free_port())
    with pytest.raises(StartupError, match=r"^gRPC port \d+ on 192\.0\.2\.1 cannot be listened on: "):
        check_bindable("gRPC", "192.0.2.1", free_port())
    check_bindable("gRPC", HOST, 0)  # any free port: nothing to check
    with bind_http_socket(HOST, 0) as sock:
        assert sock.getsockname()[0] == HOST


def test_http_connections_are_served_without_nagle_delays() -> None:
    """The HTTP socket edgeplex binds itself must leave asyncio able to set TCP_NODELAY on every
    connection it accepts (asyncio does so only for sockets that say IPPROTO_TCP): without it,
    every request after the first on a keep-alive connection waited ~40 ms for a delayed ACK."""
    from edgeplex.server.ports import bind_http_socket

    async def accepted_nodelay() -> int:
        loop = asyncio.get_running_loop()
        nodelay: asyncio.Future[int] = loop.create_future()

        class Probe(asyncio.Protocol):
            def connection_made(self, transport: asyncio.BaseTransport) -> None:
                sock = transport.get_extra_info("socket")
                nodelay.set_result(sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))
                transport.close()

        listening = bind_http_socket("127.0.0.1", 0)
        server = await loop.create_server(Probe, sock=listening)
        port = listening.getsockname()[1]
        _, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            return await asyncio.wait_for(nodelay, 10)
        finally:
            writer.close()
            server.close()
            await server.wait_closed()

    assert asyncio.run(accepted_nodelay()) != 0
