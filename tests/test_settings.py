"""One Settings object for `edgeplex serve`: defaults stated once, EDGEPLEX_* variables over the
defaults, command-line flags over the variables, and errors that name the setting and variable."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from edgeplex import config
from edgeplex.config import (
    DEFAULT_DRAIN_SECONDS,
    DEFAULT_MAX_BODY_BYTES,
    DEFAULT_MAX_TENSOR_ELEMENTS,
    LogSettings,
    ServerConfig,
    Settings,
    default_cores,
    env_name,
)
from edgeplex.errors import ConfigError


@pytest.fixture(autouse=True)
def _clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """No EDGEPLEX_* variable of the machine running the tests leaks into them."""
    import os

    for name in list(os.environ):
        if name.upper().startswith("EDGEPLEX_"):
            monkeypatch.delenv(name)


def _serve_args(*argv: str) -> argparse.Namespace:
    from edgeplex.cli import build_parser

    return build_parser().parse_args(["serve", *argv])


def test_defaults() -> None:
    settings = Settings()
    assert settings.repository is None
    assert settings.models == []
    assert (settings.host, settings.http_port, settings.grpc_port) == ("127.0.0.1", 8000, 8001)
    assert settings.cores == default_cores()
    assert settings.max_body_bytes == DEFAULT_MAX_BODY_BYTES == 64 * 1024 * 1024
    assert settings.max_tensor_elements == DEFAULT_MAX_TENSOR_ELEMENTS == 1 << 26
    assert settings.drain_seconds == DEFAULT_DRAIN_SECONDS == 10.0
    assert settings.api_key is None and settings.enable_repository_api is False
    assert (settings.policy, settings.scheduling, settings.memory_budget) == ("pareto", "priority", None)
    assert settings.profile_store is None
    assert (settings.replan_seconds, settings.min_gain, settings.profile_missing, settings.profile_seconds) == (
        2.0, 0.10, True, 0.5)
    assert (settings.log_level, settings.log_format) == ("info", "text")


def test_server_config_is_the_settings() -> None:
    assert ServerConfig is Settings
    built = ServerConfig(repository=None, cores=3, http_port=0, grpc_port=0, api_key="a-long-enough-key")
    assert (built.cores, built.http_port, built.api_key) == (3, 0, "a-long-enough-key")
    assert "a-long-enough-key" not in repr(built)


def test_every_field_has_a_variable_and_a_flag() -> None:
    parser_flags = {action.dest for action in _subparser("serve")._actions}
    for name, field in Settings.model_fields.items():
        assert field.description, name
        assert env_name(name) == "EDGEPLEX_" + name.upper()
        if name not in ("log_level", "log_format"):  # global options, before the command
            assert name in parser_flags, name


def _subparser(command: str) -> argparse.ArgumentParser:
    from edgeplex.cli import build_parser

    parser = build_parser()
    commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return commands.choices[command]


def test_environment_overrides_defaults(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("EDGEPLEX_REPOSITORY", str(tmp_path))
    monkeypatch.setenv("EDGEPLEX_MODELS", "yolov8n, magika")
    monkeypatch.setenv("EDGEPLEX_HOST", "0.0.0.0")
    monkeypatch.setenv("EDGEPLEX_HTTP_PORT", "9000")
    monkeypatch.setenv("EDGEPLEX_GRPC_PORT", "0")
    monkeypatch.setenv("EDGEPLEX_CORES", "1")
    monkeypatch.setenv("EDGEPLEX_MAX_BODY_BYTES", "1024")
    monkeypatch.setenv("EDGEPLEX_ENABLE_REPOSITORY_API", "true")
    monkeypatch.setenv("EDGEPLEX_DRAIN_SECONDS", "2.5")
    monkeypatch.setenv("EDGEPLEX_POLICY", "Balance")
    monkeypatch.setenv("EDGEPLEX_SCHEDULING", "fifo")
    monkeypatch.setenv("EDGEPLEX_REPLAN_SECONDS", "5")
    monkeypatch.setenv("EDGEPLEX_MIN_GAIN", "0.25")
    monkeypatch.setenv("EDGEPLEX_PROFILE_MISSING", "false")
    monkeypatch.setenv("EDGEPLEX_PROFILE_SECONDS", "1.5")
    monkeypatch.setenv("EDGEPLEX_PROFILE_STORE", str(tmp_path / "p.sqlite"))
    monkeypatch.setenv("EDGEPLEX_LOG_LEVEL", "DEBUG")
    settings = Settings()
    assert settings.repository == tmp_path
    assert settings.models == ["yolov8n", "magika"]
    assert (settings.host, settings.http_port, settings.grpc_port, settings.cores) == ("0.0.0.0", 9000, 0, 1)
    assert settings.max_body_bytes == 1024 and settings.enable_repository_api is True
    assert (settings.drain_seconds, settings.policy, settings.scheduling) == (2.5, "balance", "fifo")
    assert (settings.replan_seconds, settings.min_gain, settings.profile_missing, settings.profile_seconds) == (
        5.0, 0.25, False, 1.5)
    assert settings.profile_store == tmp_path / "p.sqlite"
    assert settings.log_level == "debug"


def test_models_from_the_environment_as_json(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EDGEPLEX_MODELS", '["a", "b"]')
    assert Settings().models == ["a", "b"]


def test_memory_budget_sizes(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EDGEPLEX_MEMORY_BUDGET", "512MiB")
    assert Settings().memory_budget == 512 * 2**20
    assert Settings(memory_budget="1GiB").memory_budget == 2**30
    assert Settings(memory_budget=1000).memory_budget == 1000
    monkeypatch.setenv("EDGEPLEX_MEMORY_BUDGET", "")
    assert Settings().memory_budget is None


def test_a_bad_variable_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EDGEPLEX_HTTP_PORT", "eighty")
    with pytest.raises(ConfigError, match=r"EDGEPLEX_HTTP_PORT='eighty' \(setting 'http_port'\).*integer"):
        Settings()
    monkeypatch.setenv("EDGEPLEX_HTTP_PORT", "70000")
    with pytest.raises(ConfigError, match=r"EDGEPLEX_HTTP_PORT.*less than or equal to 65535"):
        Settings()


@pytest.mark.parametrize("name, value, expected", [
    ("EDGEPLEX_MEMORY_BUDGET", "lots", "not a size"),
    ("EDGEPLEX_POLICY", "fastest", "'config', 'static', 'balance' or 'pareto'"),
    ("EDGEPLEX_CORES", "0", "greater than or equal to 1"),
    ("EDGEPLEX_PROFILE_MISSING", "perhaps", "boolean"),
    ("EDGEPLEX_LOG_FORMAT", "xml", "'text' or 'json'"),
])
def test_bad_variables_name_the_variable(monkeypatch: pytest.MonkeyPatch, name: str, value: str, expected: str) -> None:
    monkeypatch.setenv(name, value)
    with pytest.raises(ConfigError) as info:
        Settings()
    assert name in info.value.message and expected in info.value.message


def test_a_bad_value_given_names_the_setting() -> None:
    with pytest.raises(ConfigError, match=r"setting 'drain_seconds' = -1.*greater than or equal to 0"):
        Settings(drain_seconds=-1)
    with pytest.raises(ConfigError, match=r"unknown setting 'http_prot'"):
        Settings(http_prot=1)


def test_a_short_api_key_is_refused_without_echoing_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EDGEPLEX_API_KEY", "short")
    with pytest.raises(ConfigError) as info:
        Settings()
    assert "EDGEPLEX_API_KEY" in info.value.message and "at least 8 characters" in info.value.message
    assert "short" not in info.value.message


def test_flags_override_the_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from edgeplex.cli import settings_from_args

    monkeypatch.setenv("EDGEPLEX_HTTP_PORT", "9000")
    monkeypatch.setenv("EDGEPLEX_GRPC_PORT", "9001")
    monkeypatch.setenv("EDGEPLEX_POLICY", "static")
    monkeypatch.setenv("EDGEPLEX_MEMORY_BUDGET", "1GiB")
    monkeypatch.setenv("EDGEPLEX_ENABLE_REPOSITORY_API", "1")
    monkeypatch.setenv("EDGEPLEX_MODELS", "a,b")
    settings = settings_from_args(_serve_args(
        "--http-port", "7000", "--policy", "config", "--memory-budget", "512MiB", "--no-enable-repository-api",
        "--model", "c", "--min-gain", "0.5", "--no-profile-missing", "--repository", str(tmp_path),
    ))
    assert settings.http_port == 7000  # the flag
    assert settings.grpc_port == 9001  # no flag: the variable
    assert settings.drain_seconds == DEFAULT_DRAIN_SECONDS  # neither: the default
    assert (settings.policy, settings.memory_budget, settings.enable_repository_api) == ("config", 512 * 2**20, False)
    assert settings.models == ["c"]
    assert (settings.min_gain, settings.profile_missing, settings.repository) == (0.5, False, tmp_path)


def test_no_flags_no_variables_gives_the_defaults() -> None:
    from edgeplex.cli import settings_from_args

    settings = settings_from_args(_serve_args())
    defaults = Settings()
    assert settings.model_dump() == defaults.model_dump()


def test_api_key_sources(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """--api-key, else --api-key-file, else EDGEPLEX_API_KEY, else EDGEPLEX_API_KEY_FILE."""
    from edgeplex.cli import settings_from_args

    key_file = tmp_path / "key"
    key_file.write_text("file-key-123\nsecond line\n")
    assert settings_from_args(_serve_args()).api_key is None
    monkeypatch.setenv("EDGEPLEX_API_KEY_FILE", str(key_file))
    assert settings_from_args(_serve_args()).api_key == "file-key-123"
    monkeypatch.setenv("EDGEPLEX_API_KEY", " env-key-1234 ")
    assert settings_from_args(_serve_args()).api_key == "env-key-1234"
    assert settings_from_args(_serve_args("--api-key-file", str(key_file))).api_key == "file-key-123"
    assert settings_from_args(_serve_args("--api-key", "flag-key-123", "--api-key-file", str(key_file))).api_key == (
        "flag-key-123")
    with pytest.raises(ConfigError, match="cannot read"):
        settings_from_args(_serve_args("--api-key-file", str(tmp_path / "absent")))


def test_log_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    assert (LogSettings().log_level, LogSettings().log_format) == ("info", "text")
    monkeypatch.setenv("EDGEPLEX_LOG_LEVEL", "warning")
    monkeypatch.setenv("EDGEPLEX_LOG_FORMAT", "json")
    assert (LogSettings().log_level, LogSettings().log_format) == ("warning", "json")
    assert LogSettings(log_level="debug").log_level == "debug"
    # An unrelated bad variable does not stop the logging options of other commands.
    monkeypatch.setenv("EDGEPLEX_HTTP_PORT", "eighty")
    assert LogSettings().log_level == "warning"


def test_main_reads_the_log_options_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    from edgeplex import cli

    seen: list[tuple[str, str]] = []
    monkeypatch.setattr(cli.logs, "configure", lambda level, fmt: seen.append((level, fmt)))
    monkeypatch.setenv("EDGEPLEX_LOG_FORMAT", "json")
    monkeypatch.setenv("EDGEPLEX_LOG_LEVEL", "error")
    assert cli.main(["--log-level", "debug", "placement", "--url", "http://127.0.0.1:1"]) == 2
    assert seen == [("debug", "json")]
    monkeypatch.setenv("EDGEPLEX_LOG_LEVEL", "loud")
    assert cli.main(["placement", "--url", "http://127.0.0.1:1"]) == 2
    assert seen == [("debug", "json")]  # refused before configuring


def test_serve_help_shows_each_default_and_variable() -> None:
    text = " ".join(_subparser("serve").format_help().split())
    for name in Settings.model_fields:
        if name not in ("log_level", "log_format"):
            assert env_name(name) in text, name
    assert "(default: 8000); env EDGEPLEX_HTTP_PORT" in text
    assert f"(default: {DEFAULT_MAX_BODY_BYTES}); env EDGEPLEX_MAX_BODY_BYTES" in text
    assert f"(default: {default_cores()}, the cores this process may use)" in text


def test_defaults_are_stated_once() -> None:
    """The constants other modules use are the Settings' defaults."""
    fields = Settings.model_fields
    assert fields["max_body_bytes"].default == config.DEFAULT_MAX_BODY_BYTES
    assert fields["max_tensor_elements"].default == config.DEFAULT_MAX_TENSOR_ELEMENTS
    assert fields["drain_seconds"].default == config.DEFAULT_DRAIN_SECONDS
    assert fields["http_port"].default == config.DEFAULT_HTTP_PORT


def test_the_gil_switch_interval_is_a_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    assert Settings().switch_interval_us == 500
    monkeypatch.setenv("EDGEPLEX_SWITCH_INTERVAL_US", "250")
    assert Settings().switch_interval_us == 250
    monkeypatch.setenv("EDGEPLEX_SWITCH_INTERVAL_US", "0")
    with pytest.raises(ConfigError, match="EDGEPLEX_SWITCH_INTERVAL_US"):
        Settings()
