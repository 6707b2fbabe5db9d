"""The memory policy, as pure functions: which models to evict to make room, or why to wait or refuse.

Within a budget, loading evicts the least recently used model that is neither pinned nor being
loaded. Models taking turns in memory (the planner could not place them) go before placed ones:
while the turn-takers' memory would do, a swap waits for their turns to end rather than evict a
placed model. A swap on request (`protect_recent`) evicts only models whose residency is paid
back (`swappable_at`), never jumps ahead of a model waiting for a turn longer, and evicts
nothing unless what it may evict frees enough: otherwise it waits, and the caller retries.

Nothing here holds a lock, sleeps or reads a clock: the manager passes the states and the time
in and carries out the verdict, and the tests check the verdicts alone.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

TURN_RETRY_S = 0.05  # how soon to look again when the wait has no known end
STALE_WAIT_S = 1.0  # a model whose requests stopped asking this long (past the residency) leaves the line


@dataclass(frozen=True)
class Resident:
    """What the policy needs of a resident model."""

    name: str
    memory_bytes: int
    pinned: bool = False
    taking_turns: bool = False
    last_used: float = 0.0
    swappable_at: float = 0.0


@dataclass(frozen=True)
class Evict:
    """Evict these models, in this order: then the need fits."""

    victims: tuple[str, ...]


@dataclass(frozen=True)
class Wait:
    """No room yet: a resident's turn ends in `retry_in_s` (or another model is ahead)."""

    retry_in_s: float
    why: str


@dataclass(frozen=True)
class Refuse:
    """No eviction could ever make room (pinned models and the model itself hold too much)."""

    why: str


Verdict = Evict | Wait | Refuse


def plan_room(loading: str, need: int, own_bytes: int, used: int, budget: int | None,
              residents: Sequence[Resident], now: float, protect_recent: bool = False, ahead: str = "") -> Verdict:
    """How `loading` gets `need` more bytes within `budget` with `used` held now.

    `residents`: the other resident models; `own_bytes`: what `loading` itself holds now (being
    replaced, it cannot be evicted); `ahead`: a model waiting for a turn longer than `loading`."""
    if budget is None or used + need <= budget:
        return Evict(())
    pinned = sum(r.memory_bytes for r in residents if r.pinned)
    candidates = [r for r in residents if not r.pinned]
    if not candidates or pinned + own_bytes + need > budget:
        return Refuse(
            f"model '{loading}' needs about {need / 1e6:.1f} MB; the memory budget is {budget / 1e6:.1f} MB and "
            f"{(pinned + own_bytes) / 1e6:.1f} MB are held by models that are pinned or being replaced"
        )
    free = budget - used
    turns = [r for r in candidates if r.taking_turns]
    pool = turns if turns and free + sum(r.memory_bytes for r in turns) >= need else candidates
    ripe = [r for r in pool if not protect_recent or r.swappable_at <= now]
    if ripe and protect_recent and ahead:
        return Wait(TURN_RETRY_S, f"model '{loading}' waits for its turn in memory behind {ahead}")
    if ripe and protect_recent and free + sum(r.memory_bytes for r in ripe) < need:
        ripe = []  # evicting those would not make room yet: evict none, wait for more turns to end
    if not ripe:
        later = [r.swappable_at - now for r in pool if r.swappable_at > now]
        turn = min(later) if later else TURN_RETRY_S
        return Wait(max(turn, 0.0), (
            f"model '{loading}' needs about {need / 1e6:.1f} MB of the {budget / 1e6:.1f} MB memory budget, held by "
            f"models loaded too recently to be swapped out ({', '.join(sorted(r.name for r in pool))}); the next can "
            f"be in {turn:.1f} s"))
    victims: list[str] = []
    for resident in sorted(ripe, key=lambda r: (not r.taking_turns, r.last_used)):
        if free >= need:
            break
        victims.append(resident.name)
        free += resident.memory_bytes
    return Evict(tuple(victims))


class TurnLine:
    """Evicted models waiting for a turn in memory: a turn that ends goes to the one waiting
    longest, not to whichever request polls first. Not thread-safe: the manager locks it."""

    def __init__(self, residency_s: float) -> None:
        self.residency_s = residency_s
        self._waiting: dict[str, tuple[float, float]] = {}  # name -> (waiting since, last try)

    def waits(self, name: str, now: float) -> None:
        since = self._waiting.get(name, (now, 0.0))[0]
        self._waiting[name] = (since, now)

    def served(self, name: str) -> None:
        self._waiting.pop(name, None)

    def ahead_of(self, name: str, now: float, still_evicted: set[str]) -> str:
        """The model waiting longer than `name` whose requests still try, if any."""
        for stale in [m for m, (_, tried) in self._waiting.items() if now - tried > self.residency_s + STALE_WAIT_S]:
            del self._waiting[stale]  # its requests gave up
        mine = self._waiting.get(name, (now, now))[0]
        earlier = [(since, m) for m, (since, _) in self._waiting.items()
                   if m != name and since < mine and m in still_evicted]
        return min(earlier)[1] if earlier else ""
