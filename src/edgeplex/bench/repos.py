"""Temporary model repositories of zoo models for a benchmark run, each model with its own
config overrides: every scenario states its placement in its own copy, and the zoo itself is
never written (the model files are symlinked; variants are made beside the links)."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import yaml

from ..zoo import default_zoo_dir, pull


def repository_of(configs: dict[str, dict[str, Any]]) -> Path:
    """A temporary repository of zoo models (symlinked files), each with its own config
    overrides; a None value is written as null (`dynamic_batching: null` = off). The caller
    removes it."""
    zoo = default_zoo_dir()
    pull(zoo, list(configs), progress=False)
    root = Path(tempfile.mkdtemp(prefix="edgeplex-bench-"))
    for name, overrides in configs.items():
        (root / name / "1").mkdir(parents=True)
        (root / name / "1" / "model.onnx").symlink_to(zoo / name / "1" / "model.onnx")
        config = yaml.safe_load((zoo / name / "config.yaml").read_text())
        config.update(overrides)
        (root / name / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    return root


def repository_with(models: tuple[str, ...], overrides: dict[str, Any]) -> Path:
    """A temporary repository of zoo models with the same config fields overridden in each."""
    return repository_of({name: overrides for name in models})
