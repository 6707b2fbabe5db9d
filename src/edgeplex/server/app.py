"""Runs the HTTP and gRPC adapters over one Engine in one event loop, and shuts down cleanly.

SIGINT/SIGTERM: stop accepting, let in-flight requests finish (bounded by `drain_seconds`),
release the models, exit 0. A port that cannot be listened on: a StartupError, nothing left running.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import socket
from collections.abc import Callable, Iterator

import grpc
import uvicorn

from ..config import DEFAULT_DRAIN_SECONDS, ServerConfig
from ..engine import Engine
from ..errors import StartupError
from .dashboard import FrontsSource
from .grpc import start_grpc_server
from .http import build_app
from .ports import bind_http_socket

log = logging.getLogger(__name__)


class _HttpServer(uvicorn.Server):
    """uvicorn without its own signal handling: `serve` below owns the signals for both adapters."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


async def _serve_http(http: _HttpServer, sock: socket.socket, host: str, port: int) -> None:
    """uvicorn on the socket bound for it. Its start-up failures (an OSError, or its own
    `sys.exit`, which would escape the event loop) become one StartupError."""
    try:
        await http.serve(sockets=[sock])
    except (OSError, SystemExit) as exc:
        if http.started:
            raise
        reason = exc.strerror if isinstance(exc, OSError) else "uvicorn could not start"
        raise StartupError(f"HTTP port {port} on {host} cannot be served: {reason}") from None


async def _stop_started(
    grpc_server: grpc.aio.Server | None, http: _HttpServer | None, http_task: asyncio.Task[None] | None,
) -> None:
    """Stop what a failed start-up had already started (no grace: nothing was served yet)."""
    if http is not None and http_task is not None and not http_task.done():
        http.should_exit = True
        with contextlib.suppress(BaseException):
            await asyncio.wait_for(asyncio.shield(http_task), 5)
    if http_task is not None and http_task.done() and not http_task.cancelled():
        http_task.exception()  # retrieved: asyncio logs no "exception was never retrieved"
    if grpc_server is not None:
        await grpc_server.stop(None)


async def _start(
    engine: Engine, config: ServerConfig, drain_seconds: float, fronts: FrontsSource | None,
) -> tuple[grpc.aio.Server, int, _HttpServer, asyncio.Task[None]]:
    """Both adapters listening: the gRPC server, its port, uvicorn and its task. Any failure
    (StartupError naming the port, or a cancellation) first stops what had started."""
    strict = config.strict_readiness
    # Bound here, not by uvicorn: a port in use is then a StartupError, not uvicorn's sys.exit.
    http_socket = bind_http_socket(config.host, config.http_port)
    grpc_server: grpc.aio.Server | None = None
    http: _HttpServer | None = None
    http_task: asyncio.Task[None] | None = None
    try:
        grpc_server, grpc_port = await start_grpc_server(
            engine, config.host, config.grpc_port, config.max_body_bytes, api_key=config.api_key,
            repository_api=config.enable_repository_api, max_tensor_elements=config.max_tensor_elements,
            strict_readiness=strict, open_apis=config.open_apis,
        )
        http = _HttpServer(
            uvicorn.Config(
                build_app(engine, config.max_body_bytes, fronts, api_key=config.api_key,
                          repository_api=config.enable_repository_api,
                          max_tensor_elements=config.max_tensor_elements, strict_readiness=strict,
                          open_apis=config.open_apis),
                host=config.host,
                port=config.http_port,
                log_level="warning",
                access_log=False,
                lifespan="off",
                timeout_graceful_shutdown=int(drain_seconds),
            )
        )
        http_task = asyncio.create_task(_serve_http(http, http_socket, config.host, config.http_port))
        while not http.started:
            if http_task.done():
                http_task.result()  # raises the StartupError
                raise StartupError(f"HTTP port {config.http_port} on {config.host}: the server stopped at start-up")
            await asyncio.sleep(0.02)
    except BaseException:
        await _stop_started(grpc_server, http, http_task)
        http_socket.close()
        raise
    return grpc_server, grpc_port, http, http_task


async def serve(
    engine: Engine,
    config: ServerConfig,
    drain_seconds: float = DEFAULT_DRAIN_SECONDS,
    on_started: Callable[[int, int], None] | None = None,
    on_stopping: Callable[[], None] | None = None,
    fronts: FrontsSource | None = None,
) -> None:
    """Serve until SIGINT/SIGTERM. `on_started(http_port, grpc_port)` is called once both listen;
    `on_stopping()` once they have drained, before the engine closes (stop the control path).
    `fronts`: where the dashboard's Pareto fronts come from (the tuning's profile store).
    `config.strict_readiness`: the HTTP and gRPC server readiness wait for every model asked to
    load. A port that cannot be listened on raises StartupError (one line naming the port) once
    whatever had started is stopped; the engine is then the caller's to close."""
    stop = asyncio.Event()  # a signal during start-up: stop as soon as both listen
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        grpc_server, grpc_port, http, http_task = await _start(engine, config, drain_seconds, fronts)
    except BaseException:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
        raise
    http_port = http.servers[0].sockets[0].getsockname()[1] if http.servers else config.http_port
    log.info("edgeplex serving: HTTP on %s:%d, gRPC on %s:%d, %d cores", config.host, http_port, config.host, grpc_port, engine.cores)
    if on_started is not None:
        on_started(http_port, grpc_port)

    await stop.wait()
    log.info("shutting down: draining for up to %.0f s", drain_seconds)
    http.should_exit = True
    await asyncio.gather(grpc_server.stop(drain_seconds), http_task, return_exceptions=True)
    if on_stopping is not None:
        await asyncio.to_thread(on_stopping)
    await asyncio.to_thread(engine.close)
    log.info("stopped")
