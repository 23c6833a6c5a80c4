"""The prefetching stage: order, real overlap, errors in place, early close, log context."""

from __future__ import annotations

import contextvars
import threading

import pytest

from chimp_worker.models.prefetch import prefetched


def test_results_come_in_order() -> None:
    assert list(prefetched(range(10), lambda n: n * n, ahead=3)) == [n * n for n in range(10)]


def test_the_next_item_is_computed_while_the_caller_works_on_this_one() -> None:
    second_started = threading.Event()

    def work(n: int) -> int:
        if n == 1:
            second_started.set()
        return n

    for n in prefetched(range(3), work, ahead=1):
        if n == 0:
            # Still holding item 0: the stage must already be working on item 1.
            assert second_started.wait(timeout=10)


def test_an_error_surfaces_at_its_own_item_after_the_earlier_results() -> None:
    def work(n: int) -> int:
        if n == 2:
            raise ValueError("item 2 is bad")
        return n

    results = prefetched(range(5), work, ahead=2)
    assert [next(results), next(results)] == [0, 1]
    with pytest.raises(ValueError, match="item 2 is bad"):
        next(results)


def test_closing_early_stops_the_stage() -> None:
    calls: list[int] = []
    results = prefetched(range(100), lambda n: calls.append(n) or n, ahead=2)
    assert next(results) == 0
    results.close()
    assert len(calls) <= 4  # the current item, two ahead, at most one in flight


def test_the_callers_context_reaches_the_stage() -> None:
    request = contextvars.ContextVar("request", default="none")
    request.set("inspection-7")
    assert list(prefetched([1, 2], lambda _n: request.get())) == ["inspection-7"] * 2


def test_ahead_must_be_positive() -> None:
    with pytest.raises(ValueError, match="ahead"):
        list(prefetched([1], lambda n: n, ahead=0))
