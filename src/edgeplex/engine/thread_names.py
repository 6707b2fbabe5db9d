"""Executor threads named at the OS level, so `top -H`, `ps -L` and /proc show which model a
busy thread serves (Python names its threads for itself only)."""

from __future__ import annotations

import ctypes
import sys

PR_SET_NAME = 15  # prctl(2): the calling thread's name
OS_NAME_BYTES = 15  # the kernel keeps 15 bytes and a NUL
_libc = ctypes.CDLL(None, use_errno=True) if sys.platform == "linux" else None  # the C library already loaded


def os_thread_name(name: str) -> str:
    """`name` ("model-version-instance") cut to what the kernel keeps, from the model's end:
    `yolov8n-1-2` stays whole, `pose_landmark_full-1-2` becomes `pose_landma-1-2`."""
    if len(name.encode()) <= OS_NAME_BYTES:
        return name
    parts = name.rsplit("-", 2)
    suffix = "-" + "-".join(parts[1:]) if len(parts) == 3 else ""
    room = max(OS_NAME_BYTES - len(suffix.encode()), 1)
    return (name.encode()[:room].decode(errors="ignore") + suffix).encode()[:OS_NAME_BYTES].decode(errors="ignore")


def name_current_thread(name: str) -> None:
    """Give the calling thread `name` as the OS sees it (see `os_thread_name`); a no-op off Linux."""
    if _libc is None:
        return
    _libc.prctl(PR_SET_NAME, os_thread_name(name).encode()[:OS_NAME_BYTES], 0, 0, 0)
