"""Executor results handed to an event loop in bursts (engine/completions.py)."""

from __future__ import annotations

import asyncio
import gc
import threading
import weakref
from concurrent.futures import Future
from typing import Any

import pytest

from edgeplex.engine.completions import loop_completions as completions


def test_results_and_errors_reach_their_own_waiters() -> None:
    async def scenario() -> None:
        inbox = completions(asyncio.get_running_loop())
        futures: list[Future[Any]] = [Future() for _ in range(5)]
        waiters = [inbox.watch(future) for future in futures]

        def finish() -> None:  # from another thread, as an executor thread does
            for index, future in enumerate(futures):
                if index == 3:
                    future.set_exception(ValueError("three"))
                else:
                    future.set_result(index)

        thread = threading.Thread(target=finish)
        thread.start()
        results = await asyncio.gather(*waiters, return_exceptions=True)
        thread.join()
        assert results[:3] == [0, 1, 2] and results[4] == 4
        assert isinstance(results[3], ValueError) and str(results[3]) == "three"

    asyncio.run(scenario())


def test_a_burst_of_results_wakes_the_loop_once() -> None:
    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        inbox = completions(loop)
        wakeups = 0
        schedule = loop.call_soon_threadsafe

        def counting(callback: Any, *args: Any) -> Any:
            nonlocal wakeups
            wakeups += 1
            return schedule(callback, *args)

        loop.call_soon_threadsafe = counting  # type: ignore[method-assign,assignment]
        futures: list[Future[int]] = [Future() for _ in range(8)]
        waiters = [inbox.watch(future) for future in futures]
        done = threading.Event()

        def finish_all() -> None:  # a batch finishing: eight results before the loop runs again
            for index, future in enumerate(futures):
                future.set_result(index)
            done.set()

        threading.Thread(target=finish_all).start()
        done.wait(5)  # the loop does not run meanwhile: the whole burst is queued
        assert await asyncio.gather(*waiters) == list(range(8))
        assert wakeups == 1

    asyncio.run(scenario())


def test_cancelling_the_waiter_cancels_work_not_started_and_a_late_result_is_dropped() -> None:
    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        errors: list[dict[str, Any]] = []
        loop.set_exception_handler(lambda _, context: errors.append(context))
        inbox = completions(loop)
        future: Future[int] = Future()
        waiter = inbox.watch(future)
        waiter.cancel()
        await asyncio.sleep(0)
        assert future.cancelled()  # not yet running: it never computes

        running: Future[int] = Future()
        assert running.set_running_or_notify_cancel()
        late = inbox.watch(running)
        late.cancel()
        await asyncio.sleep(0)
        running.set_result(1)  # finishes anyway: nobody waits, nothing raises
        await asyncio.sleep(0.01)
        assert late.cancelled()
        assert errors == []  # the loop's handler saw no InvalidStateError from the drain

    asyncio.run(scenario())


def test_work_cancelled_by_the_engine_cancels_its_waiter() -> None:
    async def scenario() -> None:
        future: Future[int] = Future()
        waiter = completions(asyncio.get_running_loop()).watch(future)
        future.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiter

    asyncio.run(scenario())


def test_a_result_that_cannot_be_handed_over_fails_its_own_request_only() -> None:
    """asyncio refuses StopIteration as a future's exception: that request fails with a clear
    error, and the rest of its burst is still answered."""

    async def scenario() -> None:
        inbox = completions(asyncio.get_running_loop())
        futures: list[Future[int]] = [Future() for _ in range(3)]
        waiters = [inbox.watch(future) for future in futures]

        def finish() -> None:
            futures[0].set_result(0)
            futures[1].set_exception(StopIteration())
            futures[2].set_result(2)

        thread = threading.Thread(target=finish)
        thread.start()
        thread.join()
        results = await asyncio.gather(*waiters, return_exceptions=True)
        assert results[0] == 0 and results[2] == 2
        assert isinstance(results[1], RuntimeError) and "StopIteration" in str(results[1])

    asyncio.run(scenario())


def test_a_loop_that_is_done_with_is_freed_and_late_results_are_dropped() -> None:
    """Each asyncio.run makes a loop; the inbox must not keep it (nor results for it) alive."""
    late: Future[int] = Future()
    assert late.set_running_or_notify_cancel()  # running when its loop ends: it cannot be cancelled

    async def watch(future: Future[int]) -> weakref.ref[asyncio.AbstractEventLoop]:
        loop = asyncio.get_running_loop()
        completions(loop).watch(future)
        return weakref.ref(loop)

    gone = asyncio.run(watch(late))
    late.set_result(1)  # arrives after its loop has closed: dropped, nothing raises
    del late  # as the engine drops a job's future once answered (its callbacks hold the waiter)
    gc.collect()
    assert gone() is None  # and with it, its inbox: `_by_loop` holds loops weakly
