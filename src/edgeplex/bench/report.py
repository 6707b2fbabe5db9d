"""Recorded benchmark results: JSON with the machine, versions and date, plus a printed table."""

from __future__ import annotations

import datetime as dt
import json
import os
import platform
from collections.abc import Sequence
from importlib import metadata
from pathlib import Path
from typing import Any

# The vector extensions that decide which config wins on these machines (AVX512-BF16 parts and
# AVX2-only parts come under the same name, 3-6x apart; INT8 pays only with VNNI).
VECTOR_FLAGS = ("avx2", "fma", "avx512f", "avx512_bf16", "avx512_vnni", "avx_vnni", "amx_tile")


def machine() -> dict[str, Any]:
    """Where and with what a figure was measured (part of every recorded result)."""
    cpu = "unknown"
    flags: set[str] = set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name") and cpu == "unknown":
                cpu = line.split(":", 1)[1].strip()
            elif line.startswith("flags") and not flags:
                flags = set(line.split(":", 1)[1].split())
    except OSError:
        pass
    versions = {}
    for package in ("edgeplex", "onnxruntime", "numpy", "grpcio", "tritonclient", "uvicorn", "starlette"):
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = "missing"
    return {
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "cpu": cpu,
        "vector_flags": [f for f in VECTOR_FLAGS if f in flags],
        "cores": len(os.sched_getaffinity(0)),
        "memory_gib": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "versions": versions,
    }


def table(rows: Sequence[dict[str, Any]], columns: Sequence[str]) -> str:
    """A plain aligned text table (also valid Markdown)."""
    cells = [[str(row.get(col, "")) for col in columns] for row in rows]
    widths = [max(len(col), *(len(r[i]) for r in cells)) if cells else len(col) for i, col in enumerate(columns)]
    lines = ["| " + " | ".join(col.ljust(w) for col, w in zip(columns, widths)) + " |"]
    lines.append("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    lines += ["| " + " | ".join(c.ljust(w) for c, w in zip(r, widths)) + " |" for r in cells]
    return "\n".join(lines)


def draw(out_dir: Path, name: str, result: dict[str, Any]) -> list[str]:
    """Save the scenario's PNG charts under `out_dir`; their Markdown image links."""
    from .charts import charts_for, save

    images = []
    for chart in charts_for(name, result):
        save(chart, out_dir / f"{chart.stem}.png")
        images.append(f"![{chart.title}]({chart.stem}.png)")
    return images


def write(out_dir: Path, name: str, result: dict[str, Any], markdown: str) -> Path:
    """Write `<name>.json`, the scenario's PNG charts and `<name>.md` (the text, the machine, and
    the charts) under `out_dir`; returns the JSON path."""
    out_dir.mkdir(parents=True, exist_ok=True)
    recorded = {"machine": machine(), **result}
    path = out_dir / f"{name}.json"
    path.write_text(json.dumps(recorded, indent=2) + "\n")
    images = draw(out_dir, name, result)
    m = recorded["machine"]
    flags = ", ".join(m.get("vector_flags") or []) or "none of " + ", ".join(VECTOR_FLAGS)
    footer = (f"\n\nMeasured {m['date']} on {m['cpu']} (vector flags: {flags}; {m['cores']} cores, "
              f"{m['memory_gib']} GiB), Python "
              f"{m['python']}, " + ", ".join(f"{k} {v}" for k, v in m["versions"].items()) + f". Data: `{name}.json`.")
    body = markdown.rstrip() + ("\n\n" + "\n\n".join(images) if images else "") + footer
    (out_dir / f"{name}.md").write_text(body + "\n")
    return path
