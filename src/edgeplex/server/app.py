"""Runs the HTTP and gRPC adapters over one Engine in one event loop, and shuts down cleanly.

SIGINT/SIGTERM: stop accepting, let in-flight requests finish (bounded by `drain_seconds`),
release the models, exit 0.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import Callable, Iterator

import uvicorn

from ..config import DEFAULT_DRAIN_SECONDS, ServerConfig
from ..engine import Engine
from .dashboard import FrontsSource
from .grpc import start_grpc_server
from .http import build_app

log = logging.getLogger(__name__)


class _HttpServer(uvicorn.Server):
    """uvicorn without its own signal handling: `serve` below owns the signals for both adapters."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


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
    `fronts`: where the dashboard's Pareto fronts come from (the tuning's profile store)."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)

    grpc_server, grpc_port = await start_grpc_server(
        engine, config.host, config.grpc_port, config.max_body_bytes, api_key=config.api_key,
        repository_api=config.enable_repository_api, max_tensor_elements=config.max_tensor_elements,
    )
    http = _HttpServer(
        uvicorn.Config(
            build_app(engine, config.max_body_bytes, fronts, api_key=config.api_key,
                      repository_api=config.enable_repository_api, max_tensor_elements=config.max_tensor_elements),
            host=config.host,
            port=config.http_port,
            log_level="warning",
            access_log=False,
            lifespan="off",
            timeout_graceful_shutdown=int(drain_seconds),
        )
    )
    http_task = asyncio.create_task(http.serve())
    while not http.started:
        if http_task.done():
            await grpc_server.stop(None)
            http_task.result()  # raises the bind error
            raise SystemExit(f"HTTP server on {config.host}:{config.http_port} stopped at start-up")
        await asyncio.sleep(0.02)
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
