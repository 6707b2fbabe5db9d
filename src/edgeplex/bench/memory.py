"""A process's resident memory, from /proc (Linux): what the soak watches for leaks and what the
variants benchmark sets beside the server's own memory accounting."""

from __future__ import annotations


def rss_bytes(pid: int) -> int:
    """The resident set of a process in bytes (VmRSS); 0 when it has none (a zombie)."""
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0
