"""The memory policy as pure functions: the verdicts alone, with no engine, thread or clock."""

from __future__ import annotations

from edgeplex.engine.memory import Evict, Refuse, Resident, TurnLine, Wait, plan_room

MB = 1_000_000


def test_nothing_is_evicted_when_the_need_fits_or_there_is_no_budget() -> None:
    residents = [Resident("a", 40 * MB)]
    assert plan_room("new", 10 * MB, 0, 40 * MB, 100 * MB, residents, now=0.0) == Evict(())
    assert plan_room("new", 10**12, 0, 40 * MB, None, residents, now=0.0) == Evict(())


def test_the_least_recently_used_go_first_and_only_as_many_as_needed() -> None:
    residents = [Resident("old", 30 * MB, last_used=1.0), Resident("recent", 30 * MB, last_used=9.0),
                 Resident("middle", 30 * MB, last_used=5.0)]
    # 90 held of 100: 25 more needs one eviction (the oldest), 45 more needs two.
    assert plan_room("new", 25 * MB, 0, 90 * MB, 100 * MB, residents, now=10.0) == Evict(("old",))
    assert plan_room("new", 45 * MB, 0, 90 * MB, 100 * MB, residents, now=10.0) == Evict(("old", "middle"))


def test_pinned_models_are_never_evicted() -> None:
    residents = [Resident("pinned", 50 * MB, pinned=True, last_used=0.0), Resident("b", 40 * MB, last_used=5.0)]
    assert plan_room("new", 30 * MB, 0, 90 * MB, 100 * MB, residents, now=10.0) == Evict(("b",))


def test_a_need_no_eviction_can_meet_is_refused_with_the_reason() -> None:
    residents = [Resident("pinned", 70 * MB, pinned=True)]
    verdict = plan_room("new", 40 * MB, 0, 70 * MB, 100 * MB, residents, now=0.0)
    assert isinstance(verdict, Refuse) and "pinned or being replaced" in verdict.why
    # The model's own bytes (it is being replaced) count against it too.
    verdict = plan_room("self", 40 * MB, 70 * MB, 70 * MB, 100 * MB, [], now=0.0)
    assert isinstance(verdict, Refuse) and "needs about 40.0 MB" in verdict.why


def test_models_taking_turns_go_before_placed_ones_even_if_used_more_recently() -> None:
    residents = [Resident("placed", 40 * MB, last_used=1.0), Resident("turns", 40 * MB, taking_turns=True, last_used=9.0)]
    assert plan_room("new", 30 * MB, 0, 80 * MB, 100 * MB, residents, now=10.0) == Evict(("turns",))
    # When the turn-takers' memory would not do, placed models go too, LRU first after them.
    assert plan_room("new", 70 * MB, 0, 80 * MB, 100 * MB, residents, now=10.0) == Evict(("turns", "placed"))


def test_a_swap_on_request_waits_for_residency_to_be_paid_back() -> None:
    residents = [Resident("a", 60 * MB, last_used=1.0, swappable_at=12.5)]
    verdict = plan_room("b", 60 * MB, 0, 60 * MB, 100 * MB, residents, now=10.0, protect_recent=True)
    assert isinstance(verdict, Wait) and verdict.retry_in_s == 2.5 and "(a)" in verdict.why
    # Once paid back it is evicted; without protection (a placement, not a request), at once.
    assert plan_room("b", 60 * MB, 0, 60 * MB, 100 * MB, residents, now=12.5, protect_recent=True) == Evict(("a",))
    assert plan_room("b", 60 * MB, 0, 60 * MB, 100 * MB, residents, now=10.0) == Evict(("a",))


def test_a_swap_evicts_nothing_unless_what_it_may_evict_frees_enough() -> None:
    # c is ripe but frees 30 of the 60 needed; d is not yet: evict nobody, wait for d's turn to end.
    residents = [Resident("c", 30 * MB, swappable_at=0.0), Resident("d", 50 * MB, swappable_at=14.0)]
    verdict = plan_room("b", 60 * MB, 0, 80 * MB, 100 * MB, residents, now=10.0, protect_recent=True)
    assert isinstance(verdict, Wait) and verdict.retry_in_s == 4.0


def test_a_model_waiting_longer_gets_the_turn_first() -> None:
    residents = [Resident("a", 60 * MB, swappable_at=0.0)]
    verdict = plan_room("c", 60 * MB, 0, 60 * MB, 100 * MB, residents, now=10.0, protect_recent=True, ahead="b")
    assert isinstance(verdict, Wait) and "behind b" in verdict.why


def test_the_turn_line_serves_the_longest_waiting_and_forgets_those_that_gave_up() -> None:
    line = TurnLine(residency_s=3.0)
    line.waits("b", 1.0)
    line.waits("c", 2.0)
    assert line.ahead_of("c", 2.5, {"b", "c"}) == "b"
    assert line.ahead_of("b", 2.5, {"b", "c"}) == ""
    assert line.ahead_of("c", 2.5, {"c"}) == ""  # b is back in memory: not ahead any more
    line.served("b")
    assert line.ahead_of("c", 2.5, {"b", "c"}) == ""
    line.waits("b", 3.0)
    line.waits("c", 10.0)  # c's requests keep asking; b's stopped at 3.0, over 4 s ago at 8.0
    assert line.ahead_of("c", 8.0, {"b", "c"}) == ""
