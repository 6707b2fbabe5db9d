"""The codec thread: where transports decode and encode large JSON (or typed gRPC) tensors.

One thread: coding holds the GIL, so more would not run at once. What it frees is the event
loop, which the interpreter switches back to every switch interval instead of after the whole
body, so binary and gRPC traffic keeps flowing beside one large JSON request.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

# Past these sizes a transport codes tensors here. Below them the hop to the thread and back
# (two wake-ups) costs more than coding a small body on the loop.
OFFLOAD_JSON_BYTES = 64 * 1024  # JSON in (HTTP), or typed contents in (gRPC), or a gzip body
OFFLOAD_JSON_ELEMENTS = 16 * 1024  # elements going out as JSON lists (HTTP)

_CODER = ThreadPoolExecutor(max_workers=1, thread_name_prefix="edgeplex-codec")
Result = TypeVar("Result")


async def off_loop(function: Callable[..., Result], *args: Any) -> Result:
    """`function(*args)` on the codec thread, awaited without blocking the event loop."""
    return await asyncio.get_running_loop().run_in_executor(_CODER, function, *args)
