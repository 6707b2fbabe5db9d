"""Executor threads named at the OS level, so `top -H`, `ps -L` and /proc show which model a
busy thread serves (Python names its threads for itself only)."""

from __future__ import annotations

import ctypes
import ctypes.util
import sys

PR_SET_NAME = 15  # prctl(2): the calling thread's name, at most 15 bytes
_libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True) if sys.platform == "linux" else None


def name_current_thread(name: str) -> None:
    """Give the calling thread `name` (cut to 15 bytes) as the OS sees it; a no-op off Linux."""
    if _libc is None:
        return
    _libc.prctl(PR_SET_NAME, name.encode()[:15], 0, 0, 0)
