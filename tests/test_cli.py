"""The command line: `models` against a real running server, one clear line (exit 2) for what an
operator got wrong, `serve --exit-on-error`, a clean exit with models loaded (never SIGABRT from
native threads torn down at interpreter exit), and help that states every default."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from edgeplex.bench.process import running_server
from edgeplex.cli import _variants_in_use, build_parser, main, settings_from_args

HOST = "127.0.0.1"


@pytest.fixture(autouse=True)
def isolated() -> Iterator[None]:
    """main() sets up logging and native libraries' variables for its process: undo it here."""
    root = logging.getLogger()
    handlers, level, environ = root.handlers[:], root.level, dict(os.environ)
    yield
    root.handlers[:] = handlers
    root.setLevel(level)
    os.environ.clear()
    os.environ.update(environ)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind((HOST, 0))
        return int(probe.getsockname()[1])


def serve(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """`edgeplex serve` in a process of its own, on free ports, to completion."""
    command = [sys.executable, "-m", "edgeplex", "--quiet", "serve", "--host", HOST, "--cores", "2",
               "--http-port", str(free_port()), "--grpc-port", str(free_port()), *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "PYTHONUNBUFFERED": "1"})


def assert_one_line_error(done: subprocess.CompletedProcess[str], *words: str) -> None:
    assert done.returncode == 2, (done.returncode, done.stderr)
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("edgeplex: "), done.stderr
    assert all(word in lines[0] for word in words), done.stderr
    assert "ready" not in done.stdout


# -- models ------------------------------------------------------------------------------------

def test_models_reads_a_running_servers_placement(tiny_repo: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with running_server(tiny_repo, "--policy", "config", "--model", "add", "--model", "slow", cores=2) as server:
        url = f"http://{server.http_url}"
        assert _variants_in_use(url) == {"add": {"fp32"}, "slow": {"fp32"}}
        assert main(["models", "--repository", str(tiny_repo), "--url", url]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].split()[:2] == ["model", "backend"]
    assert {line.split()[0] for line in out[1:]} >= {"add", "slow", "fixed", "sub"}


def test_placement_of_a_running_server_fits_100_columns(tiny_repo: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import json

    with running_server(tiny_repo, "--policy", "config", cores=2) as server:
        url = f"http://{server.http_url}"
        assert main(["placement", "--url", url]) == 0
        table = capsys.readouterr().out.splitlines()
        assert main(["placement", "--url", url, "--wide"]) == 0
        wide = capsys.readouterr().out
        assert main(["placement", "--url", url, "--json"]) == 0
        report = json.loads(capsys.readouterr().out)
    assert max(len(line) for line in table) <= 100, max(table, key=len)
    assert {m["model"] for m in report["models"]} == {"add", "sub", "fixed", "slow", "broken"}
    for model in report["models"]:  # every model in the table, and its explanation in --wide
        assert any(line.startswith(model["model"]) for line in table), model["model"]
        assert model["explanation"]["summary"].split(":")[0] in wide
    assert "not a readable ONNX model" in " ".join(wide.split())  # the broken model says why (wrapped)


def test_models_with_no_server_there_says_so(tiny_repo: Path, capsys: pytest.CaptureFixture[str]) -> None:
    url = f"http://{HOST}:{free_port()}"
    assert main(["models", "--repository", str(tiny_repo), "--url", url]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"edgeplex: cannot reach the server at {url}"), captured.err


def test_models_of_a_missing_repository_is_the_error_alone(tmp_path: Path,
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["models", "--repository", str(tmp_path / "missing")]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.strip() == f"edgeplex: model repository {tmp_path / 'missing'} is not a directory"


def test_optimize_an_unknown_model_names_the_repository_and_its_models(
        tiny_repo: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--quiet", "optimize", "nosuchmodel", "--repository", str(tiny_repo)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("edgeplex: model 'nosuchmodel' is not in the repository " + str(tiny_repo)), err
    assert all(name in err for name in ("add", "sub", "fixed", "slow")), err


# -- serve: what an operator got wrong ---------------------------------------------------------

def test_serve_a_missing_repository_is_one_line(tmp_path: Path) -> None:
    assert_one_line_error(serve("--repository", str(tmp_path / "missing")), str(tmp_path / "missing"),
                          "not a directory")


def test_serve_an_unreadable_profile_store_is_one_line(tiny_repo: Path, tmp_path: Path) -> None:
    store = tmp_path / "profiles.sqlite"
    store.write_text("not a database, just text that SQLite will refuse to read " * 40)
    done = serve("--repository", str(tiny_repo), "--policy", "pareto", "--profile-store", str(store))
    assert_one_line_error(done, "cannot open the profile store", str(store))


def test_serve_refuses_zero_cores(tiny_repo: Path) -> None:
    done = subprocess.run([sys.executable, "-m", "edgeplex", "serve", "--repository", str(tiny_repo), "--cores", "0"],
                          capture_output=True, text=True, timeout=60)
    assert_one_line_error(done, "--cores", "0")


def test_exit_on_error_stops_before_serving(tiny_repo: Path) -> None:
    """`broken` (not an ONNX file) fails to load: one log line for it, one line saying why the
    process stops, exit 2, no traceback, and the models already loaded closed cleanly."""
    done = serve("--repository", str(tiny_repo), "--policy", "config", "--exit-on-error")
    assert done.returncode == 2, (done.returncode, done.stderr)
    assert "ready" not in done.stdout
    lines = [line for line in done.stderr.strip().splitlines() if " INFO " not in line]
    assert len(lines) == 2, done.stderr  # the failure once, then the reason to stop
    assert " ERROR " in lines[0] and "model broken failed to load" in lines[0], done.stderr
    assert lines[1] == "edgeplex: exiting (--exit-on-error): 1 model(s) failed to load: broken", done.stderr
    assert done.stderr.strip().splitlines()[-1] == lines[1]  # the last word
    assert "Traceback" not in done.stderr and "terminate called" not in done.stderr


def test_without_exit_on_error_the_others_are_served(tiny_repo: Path) -> None:
    with running_server(tiny_repo, "--policy", "config", "--no-exit-on-error", cores=2) as server:
        assert server.get_json("/v2/models/add")["name"] == "add"
        failures = [line for line in server.output if "broken" in line]
        assert len(failures) == 1 and " ERROR " in failures[0], failures  # logged once, not twice
        code = server.stop()
    assert code == 0, "\n".join(server.output[-20:])


def test_a_clean_exit_while_the_allocator_profiles(tiny_repo: Path, tmp_path: Path) -> None:
    """pareto with nothing stored profiles in the background at once; SIGTERM then must still end
    in exit 0, never SIGABRT ('terminate called without an active exception')."""
    with running_server(tiny_repo, "--model", "add", "--model", "slow", "--profile-store",
                        str(tmp_path / "profiles.sqlite"), cores=2) as server:
        server.get_json("/v2/health/live")
        code = server.stop(timeout=90)
    output = "\n".join(server.output)
    assert code == 0, (code, output[-2000:])
    assert code != -signal.SIGABRT and "terminate called" not in output


# -- flags and help ----------------------------------------------------------------------------

def test_readiness_and_exit_flags_reach_the_settings() -> None:
    parse = build_parser().parse_args
    default = settings_from_args(parse(["serve"]))
    assert default.strict_readiness is True and default.exit_on_error is False
    given = settings_from_args(parse(["serve", "--no-strict-readiness", "--exit-on-error"]))
    assert given.strict_readiness is False and given.exit_on_error is True


def _subparser(name: str) -> argparse.ArgumentParser:
    commands = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    parser: argparse.ArgumentParser = commands.choices[name]
    return parser


@pytest.mark.parametrize("command", ["serve", "profile"])
def test_every_option_states_its_default(command: str) -> None:
    for action in _subparser(command)._actions:
        if action.option_strings and action.dest != "help":
            assert "default" in (action.help or ""), f"{command} {action.option_strings[0]}: {action.help!r}"


def test_profile_draws_under_the_cache_not_the_source_tree(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from edgeplex.tuning.cli import default_plots_dir

    monkeypatch.setenv("EDGEPLEX_CACHE", str(tmp_path))
    assert default_plots_dir() == tmp_path / "fronts"
    assert _subparser("profile").parse_args([]).plots is None  # resolved when drawing, from the cache
    assert "<cache>/fronts" in " ".join((_subparser("profile").format_help()).split())


def test_profile_refuses_zero_cores(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        build_parser().parse_args(["profile", "--cores", "0"])
    assert exited.value.code == 2
    assert "argument --cores: must be at least 1, got 0" in capsys.readouterr().err
