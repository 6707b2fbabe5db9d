"""`edgeplex bench serving`: the /proc readings of a process tree, the summary and targets on
hand-made figures, and (integration) one tiny perf_analyzer case against the real servers."""

from __future__ import annotations

import os
import platform
import subprocess
import sys
from collections.abc import Iterator

import pytest

from edgeplex.bench.cpu import process_cpu_seconds, process_tree, tree_cpu_seconds
from edgeplex.bench.serving import (
    IDENTITY,
    TRITON,
    Case,
    serving,
    summarise,
    targets,
    text,
    tree_memory,
)

BURN_S = 0.4


@pytest.fixture
def busy_child() -> Iterator[subprocess.Popen[str]]:
    """A child that burns BURN_S of CPU, says so, then sleeps until killed."""
    code = (f"import time\nend = time.process_time() + {BURN_S}\nwhile time.process_time() < end: pass\n"
            "print('done', flush=True)\ntime.sleep(60)\n")
    child = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout is not None and child.stdout.readline().strip() == "done"
        yield child
    finally:
        child.kill()
        child.wait()
        if child.stdout is not None:
            child.stdout.close()


def test_tree_holds_the_process_and_its_child(busy_child: subprocess.Popen[str]) -> None:
    tree = process_tree(os.getpid())
    assert tree[0] == os.getpid() and busy_child.pid in tree
    assert process_tree(busy_child.pid) == [busy_child.pid]


def test_tree_cpu_counts_the_child(busy_child: subprocess.Popen[str]) -> None:
    own = process_cpu_seconds(os.getpid())
    tree = tree_cpu_seconds(os.getpid())
    assert tree - own >= BURN_S * 0.8  # the child's burn (and our reaped children's time)
    assert tree_cpu_seconds(busy_child.pid) >= BURN_S * 0.8


def test_tree_cpu_keeps_a_reaped_child() -> None:
    """A child that exits inside the interval still counts (the parent's cutime/cstime)."""
    before = tree_cpu_seconds(os.getpid())
    subprocess.run([sys.executable, "-c", f"import time\nend = time.process_time() + {BURN_S}\n"
                    "while time.process_time() < end: pass"], check=True)
    assert tree_cpu_seconds(os.getpid()) - before >= BURN_S * 0.8


def test_tree_memory_sums_the_processes(busy_child: subprocess.Popen[str]) -> None:
    mine, alone = tree_memory(os.getpid()), tree_memory(busy_child.pid)
    assert mine["processes"] >= 2 and alone["processes"] == 1
    assert 0 < alone["pss_bytes"] <= alone["rss_bytes"]
    assert mine["pss_bytes"] > alone["pss_bytes"] and mine["rss_bytes"] > alone["rss_bytes"]
    assert mine["pss_bytes"] <= mine["rss_bytes"]


def _run(throughput: float, p50: float, cpu: float) -> dict[str, float]:
    return {"throughput": throughput, "p50_ms": p50, "p99_ms": 2 * p50, "cpu_ms_per_request": cpu, "busy_cores": 1.5}


def test_summary_ratios_and_targets() -> None:
    runs = {
        TRITON: {"ppocr_cls-grpc-c4": [_run(100, 10, 4), _run(120, 12, 5)],
                 "identity-grpc-c16": [_run(2000, 5, 1)]},
        "pareto": {"ppocr_cls-grpc-c4": [_run(150, 9, 3), _run(130, 8, 3), _run(float("nan"), 1, 1)],
                   "identity-grpc-c16": [_run(3100, 4, 2)]},
    }
    memory = {TRITON: {"pss_bytes": 1000, "rss_bytes": 2000, "processes": 11},
              "pareto": {"pss_bytes": 500, "rss_bytes": 600, "processes": 1}}
    summary = summarise(runs, memory)
    # median_high: the upper middle of each server's rounds (NaN skipped)
    assert summary["figures"][TRITON]["ppocr_cls-grpc-c4"]["throughput"] == 120
    assert summary["figures"]["pareto"]["ppocr_cls-grpc-c4"]["throughput"] == 150
    assert summary["figures"]["pareto"]["ppocr_cls-grpc-c4"]["p50_ms"] == 8
    ratios = summary["ratios"]["pareto"]
    assert ratios["ppocr_cls-grpc-c4"] == {"throughput": 1.25, "p50_ms": 0.667, "cpu_ms_per_request": 0.6}
    assert ratios["identity-grpc-c16"]["cpu_ms_per_request"] == 2.0 and ratios["pss"] == 0.5
    met = {(t["case"], t["figure"]): t["met"] for t in targets(summary)}
    assert met == {("ppocr_cls-grpc-c4", "throughput"): True, ("ppocr_cls-grpc-c4", "p50_ms"): True,
                   ("identity-grpc-c16", "throughput"): True, ("ppocr_cls-grpc-c4", "cpu_ms_per_request"): True,
                   ("identity-grpc-c16", "cpu_ms_per_request"): False, ("all five zoo models", "pss"): True}


def test_targets_without_triton_are_unmeasured_except_absolute_ones() -> None:
    summary = summarise({"pareto": {"identity-grpc-c16": [_run(2500, 4, 2)]}}, {})
    assert summary["ratios"]["pareto"]["identity-grpc-c16"]["throughput"] != summary["ratios"]["pareto"][
        "identity-grpc-c16"]["throughput"]  # NaN: nothing to compare with
    met = {(t["case"], t["figure"]): t["met"] for t in targets(summary)}
    assert met == {("identity-grpc-c16", "throughput"): False, ("identity-grpc-c16", "cpu_ms_per_request"): None}


# --- one tiny case against the real servers ---------------------------------------------------------

TINY = Case(IDENTITY, "grpc", 1)


def _tiny(triton: bool) -> tuple[dict[str, object], str]:
    from edgeplex.bench.perf_analyzer import UnsupportedPlatform

    try:
        result, report = serving(rounds=1, measurement_ms=800, cases=[TINY], triton=triton, memory=False, warmup_s=1)
    except UnsupportedPlatform as exc:
        pytest.skip(str(exc))
    return result, report


def _check(result: dict[str, object], server: str) -> None:
    runs = result["runs"][server][TINY.name]  # type: ignore[index]
    assert len(runs) == 1 and "error" not in runs[0], runs
    record = runs[0]
    assert record["throughput"] > 0 and 0 < record["p50_ms"] <= record["p99_ms"]
    assert record["server_requests"] >= record["window_requests"] > 0  # the whole run, not only kept windows
    assert 0 < record["cpu_ms_per_request"] < 1000 and record["busy_cores"] > 0


@pytest.mark.integration
def test_tiny_case_against_edgeplex() -> None:
    result, report = _tiny(triton=False)
    _check(result, "pareto")
    assert TINY.name in report and "Triton not run" in report


@pytest.mark.integration
@pytest.mark.skipif(not (sys.platform.startswith("linux") and platform.machine().lower() in ("x86_64", "amd64")),
                    reason="nvidia-pytriton ships tritonserver for x86_64 Linux only")
def test_tiny_case_against_triton_and_edgeplex() -> None:
    from edgeplex.bench.triton_peer import install

    install()  # from the nvidia-pytriton wheel on first use, as bench peer and its test do
    result, report = _tiny(triton=True)
    _check(result, TRITON)
    _check(result, "pareto")
    ratio = result["summary"]["ratios"]["pareto"][TINY.name]["throughput"]  # type: ignore[index]
    assert ratio > 0 and text(result) == report
