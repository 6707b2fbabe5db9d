"""Reading a server's log (the lines `running_server` collects): what the manager installed, and
the errors it logged, grouped so that a report can say "3x model X failed to load" instead of
pasting pages of output."""

from __future__ import annotations

import re
from collections.abc import Sequence

_READY = re.compile(r"model (?P<model>\S+) ready: versions [^,]+, (?P<groups>.+?), (?P<mb>[0-9.]+) MB \(")


def installed(lines: Sequence[str]) -> dict[str, str]:
    """What each model last had installed, from the manager's "model M ready: ..." log lines."""
    found: dict[str, str] = {}
    for line in lines:
        match = _READY.search(line)
        if match:
            found[match["model"]] = match["groups"]
    return found


def error_kinds(lines: Sequence[str]) -> dict[str, int]:
    """The server's ERROR records by kind (logger and message, numbers masked), with their counts;
    a traceback's last line stands for an "allocator step failed"."""
    kinds: dict[str, int] = {}
    pending = ""
    for line in [*lines, "0000-00-00 end"]:
        if re.match(r"\d{4}-\d\d-\d\d ", line):
            if pending:
                kinds[pending] = kinds.get(pending, 0) + 1
            _, _, message = line.partition(" ERROR ")
            pending = re.sub(r"-?\d+(?:\.\d+)?", "#", message)[:110] if " ERROR " in line else ""
        elif pending.endswith("step failed") and re.match(r"\w+Error: ", line):
            pending += ": " + re.sub(r"-?\d+(?:\.\d+)?", "#", line)[:60]
    return kinds


def problems(lines: Sequence[str], limit: int = 40) -> list[str]:
    """The server's ERROR lines with their tracebacks (the lines up to the next log record)."""
    kept: list[str] = []
    inside = False
    for line in lines:
        record = bool(re.match(r"\d{4}-\d\d-\d\d ", line))
        inside = ("ERROR" in line) if record else inside
        if inside:
            kept.append(line[:400])
    return kept[-limit:]
