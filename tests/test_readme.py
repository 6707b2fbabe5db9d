"""The README is what a newcomer runs first: its examples must run as written, its test command
must be the one CI runs, and its lists of flags, settings and commands must be complete.

Code blocks the tests run are marked in README.md by an HTML comment on the line before the
fence, `<!-- readme-test: NAME -->` (invisible when rendered). The examples read the server's
address from a constant (`URL = "127.0.0.1:8000"`), which is the one thing rewritten here: the
test server listens on free ports.
"""

from __future__ import annotations

import argparse
import json
import re
import shlex
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from edgeplex.bench.process import ServerProcess, running_server
from edgeplex.cli import build_parser
from edgeplex.config import Settings, env_name

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
CI_RUN = ROOT / ".ci" / "run"
MARKED = re.compile(r"<!-- readme-test: (?P<name>[\w-]+) -->\n```(?P<lang>\w*)\n(?P<code>.*?)\n```", re.DOTALL)
URL_LINE = re.compile(r'^URL = "127\.0\.0\.1:(8000|8001)"', re.MULTILINE)
EXPECTED = re.compile(r"^print\(.*\)\s+# (?P<expected>.+)$", re.MULTILINE)


def readme() -> str:
    return README.read_text(encoding="utf-8")


def blocks() -> dict[str, str]:
    """The README's marked code blocks by name (a name used twice is a mistake in the README)."""
    found: dict[str, str] = {}
    for match in MARKED.finditer(readme()):
        assert match["name"] not in found, f"README.md marks two blocks '{match['name']}'"
        found[match["name"]] = match["code"]
    return found


def block(name: str) -> str:
    code = blocks().get(name)
    assert code is not None, f"README.md has no block marked <!-- readme-test: {name} -->"
    return code


def with_url(code: str, address: str) -> str:
    """The example with its URL constant pointing at `address` (it must have exactly one)."""
    assert len(URL_LINE.findall(code)) == 1, "the example must set URL = \"127.0.0.1:PORT\" once, at the top"
    return URL_LINE.sub(f'URL = "{address}"', code)


def run_python(code: str, cwd: Path) -> str:
    done = subprocess.run([sys.executable, "-c", code], cwd=cwd, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, f"the README example failed (exit {done.returncode}):\n{done.stderr[-3000:]}"
    return done.stdout


def assert_prints_what_it_says(code: str, stdout: str) -> None:
    """Each `print(...)  # shown` line's comment appears in the output, in the same order."""
    expected = [m["expected"].strip() for m in EXPECTED.finditer(code)]
    assert expected, "the example shows no expected output"
    at = 0
    for text in expected:
        found = stdout.find(text, at)
        assert found >= 0, f"the README says the example prints {text!r}; it printed:\n{stdout}"
        at = found + len(text)


def _steps(command: str) -> list[str]:
    return [step.strip() for step in command.split("&&")]


def _without_assignments(line: str) -> str:
    """A shell line without leading `NAME=value` environment assignments."""
    words = shlex.split(line)
    while words and re.fullmatch(r"[A-Za-z_]\w*=.*", words[0]):
        words.pop(0)
    return shlex.join(words)


def test_readme_test_command_is_the_one_ci_runs() -> None:
    """Every step of the README's test command is a line of .ci/run, in the same order (CI may
    prefix a line with environment variables and add steps of its own, e.g. upgrading pip)."""
    readme_steps = [shlex.join(shlex.split(step)) for step in _steps(block("tests"))]
    ci_lines = [_without_assignments(line) for line in CI_RUN.read_text().splitlines()
                if line.strip() and not line.lstrip().startswith("#")]
    at = 0
    for step in readme_steps:
        assert step in ci_lines[at:], f"README's test step {step!r} is not in .ci/run (after line {at}): {ci_lines}"
        at = ci_lines.index(step, at) + 1
    assert readme_steps[-1].endswith("python -m pytest"), "the README's test command must end by running pytest"


def test_install_command_installs_the_base_project_and_serves() -> None:
    assert _steps(block("install")) == [
        "python3 -m venv .venv", ".venv/bin/pip install -e .", ".venv/bin/edgeplex serve",
    ]


def _commands() -> dict[str, argparse.ArgumentParser]:
    """The CLI's commands and their parsers, as `edgeplex --help` lists them."""
    parser = build_parser()
    return next(a.choices for a in parser._actions if isinstance(a.choices, dict) and "serve" in a.choices)


def _serve_flags() -> set[str]:
    """The flags `edgeplex serve --help` shows."""
    help_text = _commands()["serve"].format_help()
    return set(re.findall(r"(?<![\w-])--[a-z][a-z0-9-]*", help_text)) - {"--help"}


def test_every_serve_flag_in_help_is_in_the_readme() -> None:
    text = readme()
    flags = _serve_flags()
    assert {"--repository", "--http-port", "--policy"} <= flags  # the help was read
    missing = sorted(f for f in flags if not re.search(rf"(?<![\w-]){re.escape(f)}(?![\w-])", text))
    assert not missing, f"serve flags in --help but not in README.md: {missing}"


def test_every_setting_has_a_row_with_its_variable() -> None:
    rows = {line.split("|")[1].strip().strip("`"): line for line in readme().splitlines() if line.startswith("| `")}
    for name in Settings.model_fields:
        assert name in rows, f"README.md's settings table has no row for '{name}'"
        assert f"`{env_name(name)}`" in rows[name], f"the row of '{name}' does not name {env_name(name)}"


def test_every_command_is_in_the_readme() -> None:
    text = readme()
    for command, command_parser in _commands().items():
        assert f"edgeplex {command}" in text, f"README.md does not show `edgeplex {command}`"
        for action in command_parser._actions:
            if isinstance(action.choices, dict):  # zoo pull/list, bench scenarios
                for name in action.choices:
                    assert f"edgeplex {command} {name}" in text, f"README.md does not show `edgeplex {command} {name}`"


@pytest.fixture(scope="module")
def mymodel_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """The README's recipe followed as written: the model made by its snippet, copied into the
    layout its commands make, its config.yaml beside, served."""
    made = tmp_path_factory.mktemp("made")
    run_python(block("make-model"), made)
    onnx_file = made / "models" / "mymodel" / "1" / "model.onnx"
    assert onnx_file.is_file(), "the make-model snippet did not write models/mymodel/1/model.onnx"

    here = tmp_path_factory.mktemp("recipe")
    recipe = block("recipe").splitlines()
    assert recipe[-1] == "edgeplex serve --repository models"
    shell = "\n".join(recipe[:-1]).replace("/path/to/your/model.onnx", shlex.quote(str(onnx_file)))
    subprocess.run(["bash", "-euc", shell], cwd=here, check=True, timeout=30)
    (here / "models" / "mymodel" / "config.yaml").write_text(block("config") + "\n")
    with running_server(here / "models", "--policy", "config") as server:
        yield server


def test_http_example_runs_as_written(mymodel_server: ServerProcess, tmp_path: Path) -> None:
    code = with_url(block("http"), mymodel_server.http_url)
    assert_prints_what_it_says(code, run_python(code, tmp_path))


def test_grpc_example_runs_as_written(mymodel_server: ServerProcess, tmp_path: Path) -> None:
    code = with_url(block("grpc"), mymodel_server.grpc_url)
    assert_prints_what_it_says(code, run_python(code, tmp_path))


def test_curl_example_answers_what_the_readme_shows(mymodel_server: ServerProcess) -> None:
    command = block("curl").replace("localhost:8000", mymodel_server.http_url)
    assert mymodel_server.http_url in command
    shown = json.loads(block("curl-output"))
    if shutil.which("curl"):
        done = subprocess.run(["bash", "-euc", command], capture_output=True, text=True, timeout=30, check=True)
        answer = json.loads(done.stdout)
    else:  # the same request without curl: its JSON body, posted as curl would
        import urllib.request

        body = re.search(r"-d '(?P<body>.*)'", command, re.DOTALL)
        assert body is not None
        request = urllib.request.Request(f"http://{mymodel_server.http_url}/v2/models/mymodel/infer",
                                         data=body["body"].encode(), headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=30) as response:
            answer = json.load(response)
    assert answer == shown


@pytest.mark.integration
def test_zoo_grpc_example_runs_as_written(zoo_repo: Path, tmp_path: Path) -> None:
    with running_server(zoo_repo, "--policy", "config", "--model", "yolov8n") as server:
        code = with_url(block("zoo-grpc"), server.grpc_url)
        assert_prints_what_it_says(code, run_python(code, tmp_path))
