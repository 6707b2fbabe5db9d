"""Progress of a benchmark's load phases: a bar on a terminal, a plain line per phase when not
(no control characters in logs), nothing with `--quiet` (`ENABLED = False`)."""

from __future__ import annotations

import sys
from types import TracebackType

from tqdm import tqdm

ENABLED = True  # `edgeplex --quiet bench ...` turns it off


class Progress:
    """One load phase: `at(seconds, answered)` as it runs; closed when the phase ends."""

    def __init__(self, what: str, duration_s: float | None) -> None:
        self.what = what
        self.duration_s = duration_s
        self.terminal = ENABLED and sys.stderr.isatty()
        self.bar = tqdm(total=round(duration_s or 0, 1) or None, desc=what[:40], unit="s", file=sys.stderr,
                        leave=False, disable=not self.terminal, bar_format="{desc}: {bar} {n:.0f}/{total:.0f} s {postfix}")
        self.answered = 0

    def at(self, seconds: float, answered: int) -> None:
        self.answered = answered
        if self.terminal:
            self.bar.n = round(min(seconds, self.duration_s or seconds), 1)
            self.bar.set_postfix_str(f"{answered} answered", refresh=True)

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None,
                 traceback: TracebackType | None) -> None:
        self.bar.close()
        if ENABLED and not self.terminal:
            print(f"edgeplex bench: {self.what}: {self.answered} answered", file=sys.stderr, flush=True)
