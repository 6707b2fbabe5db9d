"""Listening ports, bound before anything serves on them, so that a port already in use (or an
address the server may not listen on) is one clear `StartupError` rather than a library's own
error log, traceback or `sys.exit` from inside the event loop."""

from __future__ import annotations

import errno
import socket

from ..errors import StartupError

# uvicorn's default listen backlog: the HTTP socket is handed to uvicorn already listening.
BACKLOG = 2048


def port_error(what: str, host: str, port: int, exc: OSError) -> StartupError:
    """The one line an operator reads: which port of which address, and why it cannot be used."""
    if exc.errno == errno.EADDRINUSE:
        return StartupError(f"{what} port {port} on {host} is already in use")
    if isinstance(exc, socket.gaierror):
        return StartupError(f"{what} port {port}: cannot listen on host '{host}': {exc.strerror or exc}")
    return StartupError(f"{what} port {port} on {host} cannot be listened on: {exc.strerror or exc}")


def bind_http_socket(host: str, port: int) -> socket.socket:
    """A listening TCP socket on host:port, bound as uvicorn binds its own (IPv6 when the host has
    a ':', SO_REUSEADDR), to hand to `uvicorn.Server.serve(sockets=[...])`; StartupError if not."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # IPPROTO_TCP named, not left 0: asyncio sets TCP_NODELAY only on connections whose socket
    # says TCP, and without it every keep-alive request waited ~40 ms (Nagle + delayed ACK).
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(BACKLOG)
    except OSError as exc:
        sock.close()
        raise port_error("HTTP", host, port, exc) from None
    sock.set_inheritable(True)
    return sock


def check_bindable(what: str, host: str, port: int) -> None:
    """Raise StartupError unless host:port can be bound now, as gRPC binds (SO_REUSEADDR, no
    SO_REUSEPORT, any one of the host's addresses will do). Checked first so that gRPC's core
    does not print its own error lines to stderr; port 0 (any free port) always can."""
    if port == 0:
        return
    try:
        addresses = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except OSError as exc:
        raise port_error(what, host, port, exc) from None
    errors: list[OSError] = []
    for family, kind, proto, _, address in addresses:
        with socket.socket(family, kind, proto) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind(address)
                return
            except OSError as exc:
                errors.append(exc)
    if not errors:
        return
    in_use = [exc for exc in errors if exc.errno == errno.EADDRINUSE]
    raise port_error(what, host, port, (in_use or errors)[0])
