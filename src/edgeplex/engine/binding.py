"""What the operator chose in a model's config file: those choices bind the allocator.

A Triton or OVMS user who writes `backend: openvino` or `instance_count: 3` expects exactly that
to run. So a field the config file states (backend, processor, threads, instance count, variant,
dynamic batching) is a constraint the allocator keeps for that model; what the file leaves
unset is the allocator's to choose. `--policy config` honours every field, as before.

A variant is chosen with the config's `parameters: {variant: int8}` (Triton-style string
parameters; the config has no field of its own for it).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..backends.base import ExecutionConfig
from ..config import ModelConfig, read_config_file

# The config fields that choose how a model runs, in the order they are reported.
ALLOCATION_FIELDS = ("backend", "processor", "variant", "threads", "instance_count", "dynamic_batching")


@dataclass(frozen=True)
class Binding:
    """The allocation fields a model's config file sets, with their values."""

    fields: frozenset[str] = frozenset()
    backend: str = "onnxruntime"
    processor: str = "cpu"
    variant: str = "fp32"
    threads: int = 1
    instance_count: int = 1
    batching: bool = False  # dynamic_batching set (and max_batch_size > 0): batch as configured

    @property
    def count(self) -> int | None:
        """The instance count the operator fixed, None when the allocator chooses it."""
        return self.instance_count if "instance_count" in self.fields else None

    def allows(self, config: ExecutionConfig) -> bool:
        """Whether an execution config keeps every bound field."""
        f = self.fields
        return ((("backend" not in f) or config.backend == self.backend)
                and (("processor" not in f) or config.processor == self.processor)
                and (("variant" not in f) or config.variant == self.variant)
                and (("threads" not in f) or config.threads == self.threads)
                and (("dynamic_batching" not in f) or (config.max_batch > 0) == self.batching))

    def describe(self) -> list[str]:
        """The bound fields as `field=value`, for reports and logs."""
        values: dict[str, Any] = {"backend": self.backend, "processor": self.processor, "variant": self.variant,
                                  "threads": self.threads, "instance_count": self.instance_count,
                                  "dynamic_batching": "on" if self.batching else "off"}
        return [f"{name}={values[name]}" for name in ALLOCATION_FIELDS if name in self.fields]


def variant_of(config: ModelConfig) -> str:
    """The variant the config asks for (`parameters.variant`), fp32 when it names none."""
    return config.parameters.get("variant", "fp32") or "fp32"


def binding_of(config: ModelConfig, stated: set[str] | frozenset[str]) -> Binding:
    """The binding of a complete config whose file stated the top-level fields `stated`."""
    fields = {name for name in ALLOCATION_FIELDS if name in stated and name != "variant"}
    if "variant" in config.parameters:
        fields.add("variant")
    return Binding(frozenset(fields), config.backend, config.processor, variant_of(config), config.threads,
                   config.instance_count, config.dynamic_batching is not None and config.max_batch_size > 0)


def stated_fields(config_file: Any, model: str) -> frozenset[str]:
    """The top-level fields a model's config file states (none without a file)."""
    if config_file is None:
        return frozenset()
    return frozenset(read_config_file(config_file, model))
