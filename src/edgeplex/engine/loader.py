"""The loader: opens a model's instances on their processors, warms each up once, and measures
the memory each really holds.

An instance's figure is the resident-set delta of its open and first run, floored by the
backend's own figure, the file's size and the largest measured before for the same config (a
reload into pages freed by an eviction measures less than the model really holds). Each backend
is primed once per processor and process first, so its one-off start-up is not charged to the
first model measured.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from ..backends import Backend, ExecutionConfig, get_backend
from ..backends.base import measure_held, prime
from ..config import ModelConfig
from ..errors import EdgeplexError
from ..repository import ModelSource
from ..variant_layout import existing_variant_path
from .placement import InstanceGroup
from .processors import Processors
from .runner import Instance, warmup_inputs

log = logging.getLogger(__name__)

MemoKey = tuple[str, str, str, int]


def memo_key(config: ExecutionConfig) -> MemoKey:
    """What makes two instances hold the same memory: backend, processor, variant, threads."""
    return config.backend, config.processor, config.variant, config.threads


def model_file(folder: Path, config: ModelConfig, exec_config: ExecutionConfig) -> Path:
    """The file an execution config runs (the variants layout's), checked to exist."""
    return existing_variant_path(folder, exec_config.variant, config.default_model_filename, config.name)


class InstanceLoader:
    """Opens instances for the processors of one engine."""

    def __init__(self, processors: Processors) -> None:
        self.processors = processors

    def estimate(self, source: ModelSource, config: ModelConfig, to_open: dict[str, list[InstanceGroup]],
                 measured: dict[MemoKey, int]) -> int:
        """Bytes the instances to open will take: the placement's profiled figure, else what an
        instance of the same config measured before, else the file's size (its weights at least:
        a variant's file may be a quarter of the original's); a wrong guess is corrected once
        the load has been measured."""
        total = 0
        for version, groups in to_open.items():
            for group in groups:
                each = group.memory_bytes or measured.get(memo_key(group.config), 0)
                if not each:
                    each = model_file(source.versions[int(version)], config, group.config).stat().st_size
                total += each * group.count
        return total

    def open(self, source: ModelSource, config: ModelConfig, wanted: dict[str, list[InstanceGroup]],
             measured: dict[MemoKey, int]) -> dict[str, list[Instance]]:
        """Open `wanted[version]` instances of each version, all or none."""
        opened: dict[str, list[Instance]] = {}
        try:
            for version, folder in sorted(source.versions.items()):
                instances: list[Instance] = []
                opened[str(version)] = instances
                for group in wanted.get(str(version), []):
                    backend = get_backend(group.config.backend)
                    self.processors.check(group.config)
                    path = model_file(folder, config, group.config)
                    for _ in range(group.count):
                        instances.append(self._open_instance(backend, path, group, config, measured))
        except BaseException:
            close_all(opened)  # a later version or instance failed: release what was opened
            raise
        return opened

    @staticmethod
    def _open_instance(backend: Backend, path: Path, group: InstanceGroup, config: ModelConfig,
                       measured: dict[MemoKey, int]) -> Instance:
        """Open one session and run it once, measuring the resident memory both took."""
        inputs: dict[str, np.ndarray] | None = None
        try:
            inputs = warmup_inputs(config)
        except EdgeplexError as exc:
            log.info("model %s: warm-up run skipped (%s)", config.name, _first_line(exc.message))
        prime(backend, path, group.config, inputs)
        session, opened = measure_held(lambda: backend.open(path, group.config))
        warmed = 0
        if inputs is not None:
            warm = inputs
            try:
                _, warmed = measure_held(lambda: session.run(warm))
            except EdgeplexError as exc:
                log.info("model %s: warm-up run skipped (%s)", config.name, _first_line(exc.message))
        # The backend's own figure, the file's size and earlier loads are floors of the delta.
        key = memo_key(group.config)
        figure = max(opened + warmed, session.memory_bytes, path.stat().st_size, measured.get(key, 0))
        measured[key] = figure
        return Instance(session, group.config, group.memory_bytes or figure)


def close_all(opened: dict[str, list[Instance]]) -> None:
    for instances in opened.values():
        for inst in instances:
            inst.session.close()


def _first_line(message: str) -> str:
    """A runtime's error can run over many lines: the log keeps the first, which names it."""
    return message.strip().splitlines()[0] if message.strip() else message
