"""Logging set-up: levels, and a plain or a structured (JSON lines) format.

Structured records carry their `extra` fields (e.g. a placement decision's model, placement and
reason), so a log shipper can index them without parsing the message."""

from __future__ import annotations

import logging
import sys
from typing import Any

import orjson

# LogRecord's own attributes: everything else on a record came in through `extra=`.
_STANDARD = set(vars(logging.makeLogRecord({}))) | {"message", "asctime", "taskName"}


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, the extra fields, any exception."""

    def format(self, record: logging.LogRecord) -> str:
        document: dict[str, Any] = {
            "time": self.formatTime(record, "%Y-%m-%dT%H:%M:%S") + f".{int(record.msecs):03d}",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        document.update({k: v for k, v in vars(record).items() if k not in _STANDARD and not k.startswith("_")})
        if record.exc_info:
            document["exception"] = self.formatException(record.exc_info)
        return orjson.dumps(document, default=str).decode()


class TextFormatter(logging.Formatter):
    """`time LEVEL logger: message`, one line per record: a message that spans lines (a native
    runtime's error text, say) is folded with ' | ', so grep and log shippers see each record
    whole. An exception's traceback, which only a real failure carries, stays as Python prints it."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")

    def formatMessage(self, record: logging.LogRecord) -> str:  # noqa: N802 - logging's name
        if "\n" in record.message:
            record.message = " | ".join(line.strip() for line in record.message.splitlines() if line.strip())
        return super().formatMessage(record)


def configure(level: str = "info", fmt: str = "text") -> None:
    """Root logging to stderr at `level`, as plain text or JSON lines."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
