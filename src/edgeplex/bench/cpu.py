"""CPU accounting from /proc (Linux): what a process has used, and what other processes used
while a benchmark ran.

The benchmarks run on shared machines; a figure measured while something else held a core is
not comparable, so the runs record the disturbance next to the figures it may have moved.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any


def process_cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process (all its threads), from /proc."""
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _stat_fields(pid: int) -> list[str]:
    """/proc/<pid>/stat after the command name (which may hold spaces): state is [0], ppid [1]."""
    with open(f"/proc/{pid}/stat") as stat:
        return stat.read().rpartition(")")[2].split()


def process_tree(root: int) -> list[int]:
    """`root` and all its descendants alive now (from every process's ppid in /proc)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                children.setdefault(int(_stat_fields(int(entry.name))[1]), []).append(int(entry.name))
            except (OSError, IndexError, ValueError):  # exited meanwhile
                continue
    tree, frontier = [], [root]
    while frontier:
        pid = frontier.pop()
        tree.append(pid)
        frontier += children.get(pid, [])
    return tree


def tree_cpu_seconds(root: int) -> float:
    """CPU seconds of a process and all its descendants, the exited ones included: Triton's python
    backend runs each model instance in a stub process of its own and restarts a stub it finds
    unhealthy. Each live member counts its own time (utime + stime) plus its reaped children's
    (cutime + cstime), so a stub that dies mid-run still counts, in its parent's figure."""
    ticks = 0
    for pid in process_tree(root):
        try:
            fields = _stat_fields(pid)
        except OSError:  # exited meanwhile
            continue
        ticks += sum(int(fields[index]) for index in (11, 12, 13, 14))
    return ticks / os.sysconf("SC_CLK_TCK")


def cpu_snapshot() -> tuple[float, float, float, float]:
    """(wall seconds, CPU seconds the whole box has used, CPU seconds of this process and its
    descendants: the bench, its helper and its servers, CPU seconds the hypervisor stole), from
    /proc."""
    tick = os.sysconf("SC_CLK_TCK")
    with open("/proc/stat") as stat:
        user, nice, system, _idle, _iowait, irq, softirq, steal = (int(v) for v in stat.readline().split()[1:9])
    parent: dict[int, int] = {}
    used: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rpartition(")")[2].split()
        except OSError:  # exited meanwhile
            continue
        parent[int(entry.name)], used[int(entry.name)] = int(fields[1]), int(fields[11]) + int(fields[12])
    ours, frontier = set(), [os.getpid()]
    while frontier:
        pid = frontier.pop()
        ours.add(pid)
        frontier += [child for child, ppid in parent.items() if ppid == pid and child not in ours]
    return (time.monotonic(), (user + nice + system + irq + softirq) / tick, sum(used.get(p, 0) for p in ours) / tick,
            steal / tick)


@contextmanager
def foreign_cpu(into: dict[str, Any]) -> Iterator[None]:
    """Cores used on average by processes that are not this benchmark's, while the block runs:
    the shared machine's disturbance, recorded with the figures it may have moved (with the time
    the hypervisor gave this machine's cores to others). Sets `foreign_cores` and `stolen_cores`
    in `into`."""
    wall0, box0, ours0, steal0 = cpu_snapshot()
    yield
    wall1, box1, ours1, steal1 = cpu_snapshot()
    into["foreign_cores"] = round(max(0.0, (box1 - box0) - (ours1 - ours0)) / (wall1 - wall0), 2)
    into["stolen_cores"] = round((steal1 - steal0) / (wall1 - wall0), 2)
