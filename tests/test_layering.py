"""The package's layering, read from its source: dependencies point down (server -> engine ->
backends), the transports and the tuning talk to `Engine` and never to its insides, and the
modules stay small."""

from __future__ import annotations

import ast
import statistics
import subprocess
import sys
from pathlib import Path

import pytest

import edgeplex

PACKAGE = Path(edgeplex.__file__).parent
# The engine's insides: only the engine package itself imports them.
ENGINE_INTERNALS = ("manager", "pools", "registry", "loader", "memory", "swap", "runner")
MAX_LINES = 500
REASON_MARK = "Over 500 lines because"


def _modules() -> dict[str, Path]:
    found = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        found[".".join(parts)] = path
    return found


def _imports(module: str, path: Path) -> set[str]:
    """Every module `module` imports (absolute names; `from x import y` counts x and x.y)."""
    tree = ast.parse(path.read_text(), str(path))
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join(anchor + ([base] if base else []))
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)
    return found


MODULES = _modules()
IMPORTS = {name: _imports(name, path) for name, path in MODULES.items()}


def test_the_walker_sees_the_imports_it_must_judge() -> None:
    """The checks below would pass vacuously if the walker missed relative imports."""
    assert "edgeplex.engine.manager" in IMPORTS["edgeplex.engine.engine"]
    assert "edgeplex.engine" in IMPORTS["edgeplex.server.http"]
    assert "edgeplex.tuning.store" in IMPORTS["edgeplex.tuning.allocator"]


def test_the_server_does_not_import_the_tuning() -> None:
    offenders = {m: sorted(i for i in imports if i.startswith("edgeplex.tuning"))
                 for m, imports in IMPORTS.items() if m.startswith("edgeplex.server")}
    assert {m: i for m, i in offenders.items() if i} == {}


def test_only_the_engine_imports_its_insides() -> None:
    internal = tuple(f"edgeplex.engine.{name}" for name in ENGINE_INTERNALS)
    offenders = {m: sorted(i for i in imports if i.startswith(internal))
                 for m, imports in IMPORTS.items() if not m.startswith("edgeplex.engine")}
    assert {m: i for m, i in offenders.items() if i} == {}


def test_the_engine_never_imports_the_server_or_the_tuning() -> None:
    offenders = {m: sorted(i for i in imports if i.startswith(("edgeplex.server", "edgeplex.tuning", "edgeplex.bench")))
                 for m, imports in IMPORTS.items() if m.startswith(("edgeplex.engine", "edgeplex.backends"))}
    assert {m: i for m, i in offenders.items() if i} == {}


@pytest.mark.parametrize("layer", ["server", "tuning"])
def test_transports_and_tuning_do_not_reach_around_the_engine(layer: str) -> None:
    """No `engine.manager` / `engine.pools` attribute either (the engine keeps them for its tests)."""
    offenders = []
    for module, path in MODULES.items():
        if not module.startswith(f"edgeplex.{layer}"):
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Attribute) and node.attr in ("manager", "pools"):
                offenders.append(f"{module}:{node.lineno} .{node.attr}")
    assert offenders == []


def test_importing_the_http_server_loads_no_quantiser_and_no_tuning() -> None:
    code = ("import sys, edgeplex.server.http, edgeplex.server.grpc; "
            "print(sorted(m for m in sys.modules if m.startswith(('onnxruntime.quantization', 'edgeplex.tuning'))))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert out.stdout.strip() == "[]"


def test_modules_stay_small() -> None:
    lengths = {m: len(p.read_text().splitlines()) for m, p in MODULES.items()}
    long = {m: n for m, n in lengths.items() if n > MAX_LINES and REASON_MARK not in MODULES[m].read_text()[:2000]}
    assert long == {}, f"over {MAX_LINES} lines without '{REASON_MARK} ...' at the top"
    assert statistics.median(lengths.values()) <= 250
