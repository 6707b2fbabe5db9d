"""Profiles in SQLite, so measurements survive restarts and are re-taken only when they go stale.

A profile is keyed by (model file hash, execution config, batch, backend version, machine): a
changed model file, a backend upgrade or another machine is simply a miss, and the profiler
measures again. Configs that failed to open or run are kept too (with their reason), so they are
not retried on every run until one of those key parts changes.

A figure can be dropped (`discard`): when what is observed contradicts it, or it was measured
disturbed (`low_confidence`), the next `profile_model` measures it again. How far a figure is
trusted lives in its `extra` JSON, so the table has not changed for it and older stores read as
they are.

One connection per call plus a process-wide write lock: safe from any thread, and from several
processes thanks to SQLite's own locking (busy timeout).
"""

from __future__ import annotations

import functools
import json
import os
import platform
import sqlite3
import threading
from collections.abc import Iterator, Mapping
from contextlib import closing, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..backends.base import ExecutionConfig
from ..errors import EdgeplexError
from ..repository import file_hash as file_hash  # profiles are keyed by it
from .profile import Profile, ProfileKey

# Bump when the table changes. Older stores are dropped and re-measured (profiles are a cache of
# measurements); a newer store is refused rather than clobbered.
SCHEMA_VERSION = 1

_KEY = ("model_hash", "backend", "processor", "variant", "threads", "max_batch", "batch", "backend_version", "machine")
_VALUES = ("model", "p50_ms", "p99_ms", "throughput", "memory_bytes", "fidelity_loss", "measured_at", "extra", "error")
_SCHEMA = f"""
CREATE TABLE IF NOT EXISTS profiles (
    model_hash TEXT NOT NULL, backend TEXT NOT NULL, processor TEXT NOT NULL, variant TEXT NOT NULL,
    threads INTEGER NOT NULL, max_batch INTEGER NOT NULL, batch INTEGER NOT NULL,
    backend_version TEXT NOT NULL, machine TEXT NOT NULL,
    model TEXT NOT NULL, p50_ms REAL, p99_ms REAL, throughput REAL, memory_bytes INTEGER,
    fidelity_loss REAL, measured_at REAL, extra TEXT, error TEXT,
    PRIMARY KEY ({", ".join(_KEY)})
)"""


class StoreError(EdgeplexError):
    """The profile store cannot be opened or was written by a newer edgeplex."""


@dataclass(frozen=True)
class Failure:
    """A config that could not be measured, and why (kept so it is not retried every run)."""

    model: str
    model_hash: str
    config: ExecutionConfig
    batch: int
    backend_version: str
    machine: str
    reason: str
    measured_at: float


def _read_field(path: str, field: str) -> str:
    try:
        with open(path) as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip() == field:
                    return value.strip()
    except OSError:
        pass
    return ""


@functools.lru_cache(maxsize=1)
def machine_id() -> str:
    """What makes timings comparable: CPU model, core count, memory, OS/arch, GPUs (not the hostname,
    which clones share and renames change)."""
    cpu = _read_field("/proc/cpuinfo", "model name") or platform.processor() or "unknown-cpu"
    mem_kb = _read_field("/proc/meminfo", "MemTotal").split()
    mem = f"{round(int(mem_kb[0]) / 2**20)}GiB" if mem_kb else "unknown-mem"
    gpus = sorted(_read_field(str(p / "information"), "Model") for p in Path("/proc/driver/nvidia/gpus").glob("*"))
    parts = [cpu, f"{os.cpu_count() or 0}cpu", mem, f"{platform.system()}-{platform.machine()}"]
    return " | ".join(parts + [g for g in gpus if g])


def default_store_path() -> Path:
    from ..zoo import default_cache_dir

    return default_cache_dir() / "profiles.sqlite"


class ProfileStore:
    """Profiles and failures of execution configs, in one SQLite file."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self._lock, self._connect() as conn:
            version = conn.execute("PRAGMA user_version").fetchone()[0]
            if version > SCHEMA_VERSION:
                raise StoreError(f"{self.path}: profile store schema {version} is newer than this edgeplex's "
                                 f"({SCHEMA_VERSION}); use another --store or upgrade")
            if version < SCHEMA_VERSION:
                conn.execute("DROP TABLE IF EXISTS profiles")
            conn.execute(_SCHEMA)
            conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")

    @contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        """A fresh connection in one transaction (committed on success, rolled back on error)."""
        try:
            conn = sqlite3.connect(self.path, timeout=30.0)
        except sqlite3.Error as exc:
            raise StoreError(f"cannot open profile store {self.path}: {exc}") from None
        with closing(conn), conn:
            yield conn

    def _write(self, key: tuple[Any, ...], values: tuple[Any, ...]) -> None:
        columns = _KEY + _VALUES
        sql = f"INSERT OR REPLACE INTO profiles ({', '.join(columns)}) VALUES ({', '.join('?' * len(columns))})"
        with self._lock, self._connect() as conn:
            conn.execute(sql, key + values)

    @staticmethod
    def _key(model_hash: str, config: ExecutionConfig, batch: int, backend_version: str, machine: str) -> tuple[Any, ...]:
        return (model_hash, config.backend, config.processor, config.variant, config.threads, config.max_batch, batch,
                backend_version, machine)

    def put(self, profile: Profile) -> None:
        """Store (or replace) a measured profile."""
        p = profile
        self._write(self._key(p.model_hash, p.config, p.batch, p.backend_version, p.machine),
                    (p.model, p.p50_ms, p.p99_ms, p.throughput, p.memory_bytes, p.fidelity_loss, p.measured_at,
                     json.dumps(p.extra, default=str), None))

    def put_failure(self, failure: Failure) -> None:
        """Record that a config failed, replacing any profile under the same key."""
        f = failure
        self._write(self._key(f.model_hash, f.config, f.batch, f.backend_version, f.machine),
                    (f.model, None, None, None, None, None, f.measured_at, None, f.reason))

    def _select(self, where: str, args: tuple[Any, ...]) -> list[sqlite3.Row]:
        with self._connect() as conn:
            conn.row_factory = sqlite3.Row
            order = "backend, processor, variant, threads, max_batch, batch, backend_version"
            return list(conn.execute(f"SELECT * FROM profiles WHERE {where} ORDER BY {order}", args))

    def _one(self, model_hash: str, config: ExecutionConfig, batch: int, backend_version: str,
             machine: str) -> sqlite3.Row | None:
        where = " AND ".join(f"{k} = ?" for k in _KEY)
        rows = self._select(where, self._key(model_hash, config, batch, backend_version, machine))
        return rows[0] if rows else None

    def get(self, model_hash: str, config: ExecutionConfig, batch: int, backend_version: str,
            machine: str) -> Profile | None:
        """The stored profile, or None (never measured, or it failed: see `failure`)."""
        row = self._one(model_hash, config, batch, backend_version, machine)
        return _profile(row) if row is not None and row["error"] is None else None

    def failure(self, model_hash: str, config: ExecutionConfig, batch: int, backend_version: str,
                machine: str) -> Failure | None:
        """The recorded failure of this key, or None."""
        row = self._one(model_hash, config, batch, backend_version, machine)
        return _failure(row) if row is not None and row["error"] is not None else None

    def for_model(self, model_hash: str, machine: str | None = None,
                  backend_versions: Mapping[str, str] | None = None) -> list[Profile]:
        """Measured profiles of a model file on `machine` (default: this one). With `backend_versions`
        (backend -> version), only those measured with the versions installed now."""
        rows = self._select("model_hash = ? AND machine = ? AND error IS NULL", (model_hash, machine or machine_id()))
        return [_profile(r) for r in rows if backend_versions is None
                or backend_versions.get(r["backend"]) == r["backend_version"]]

    def low_confidence(self, model_hash: str, machine: str | None = None,
                       backend_versions: Mapping[str, str] | None = None) -> list[Profile]:
        """The profiles of a model file (as `for_model` selects them) measured disturbed on every
        attempt: what a background profiler re-measures when the machine is quiet
        (`profile_model(..., remeasure_low_confidence=True)`)."""
        return [p for p in self.for_model(model_hash, machine, backend_versions) if not p.confident]

    def discard(self, profile_or_key: Profile | ProfileKey) -> bool:
        """Delete a stored figure so that the next `profile_model` measures it again; True if one was.

        Given a `Profile`, only that measurement goes (same key and `measured_at`): a figure
        re-measured since it was read stays. Given a key (model hash, config, batch, backend
        version, machine), whatever is stored under it goes, a recorded failure included.
        """
        extra_args: tuple[Any, ...] = ()
        extra_where = ""
        if isinstance(profile_or_key, Profile):
            key = profile_or_key.key
            extra_where, extra_args = " AND error IS NULL AND measured_at = ?", (profile_or_key.measured_at,)
        else:
            key = profile_or_key
        where = " AND ".join(f"{k} = ?" for k in _KEY) + extra_where
        with self._lock, self._connect() as conn:
            deleted = conn.execute(f"DELETE FROM profiles WHERE {where}", self._key(*key) + extra_args).rowcount
        return deleted > 0

    def failures(self, model_hash: str, machine: str | None = None) -> list[Failure]:
        rows = self._select("model_hash = ? AND machine = ? AND error IS NOT NULL", (model_hash, machine or machine_id()))
        return [_failure(r) for r in rows]


def _config(row: sqlite3.Row) -> ExecutionConfig:
    return ExecutionConfig(backend=row["backend"], processor=row["processor"], variant=row["variant"],
                           threads=row["threads"], max_batch=row["max_batch"])


def _profile(row: sqlite3.Row) -> Profile:
    return Profile(model=row["model"], model_hash=row["model_hash"], config=_config(row), batch=row["batch"],
                   p50_ms=row["p50_ms"], p99_ms=row["p99_ms"], throughput=row["throughput"],
                   memory_bytes=row["memory_bytes"], backend_version=row["backend_version"], machine=row["machine"],
                   fidelity_loss=row["fidelity_loss"], measured_at=row["measured_at"],
                   extra=json.loads(row["extra"]) if row["extra"] else {})


def _failure(row: sqlite3.Row) -> Failure:
    return Failure(model=row["model"], model_hash=row["model_hash"], config=_config(row), batch=row["batch"],
                   backend_version=row["backend_version"], machine=row["machine"], reason=row["error"],
                   measured_at=row["measured_at"] or 0.0)
