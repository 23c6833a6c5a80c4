"""The one rule for whether an image needs work, shared by the worker and by replay."""

from __future__ import annotations

import pytest

from chimp_worker.ispyb.progress import (
    FAILED,
    MODEL_CHANGED,
    RULE_CHANGED,
    UNPROCESSED,
    stale_reason,
    work_reason,
)

OLD, NEW = frozenset({"a" * 64}), frozenset({"b" * 64})


@pytest.mark.parametrize(
    ("state", "checksums", "current", "rule", "current_rule", "expected"),
    [
        (None, frozenset(), NEW, None, "published", UNPROCESSED),
        ("pending", frozenset(), NEW, None, "published", UNPROCESSED),
        ("failed", frozenset(), NEW, None, "published", FAILED),
        ("done", NEW, NEW, "published", "published", None),
        ("done", OLD, NEW, "published", "published", MODEL_CHANGED),
        ("done", OLD, NEW, "original", "published", MODEL_CHANGED),  # models win over the rule
        ("done", NEW, NEW, "original", "published", RULE_CHANGED),
        ("done", NEW, NEW, None, "published", RULE_CHANGED),  # stored before rules were recorded
        ("done", OLD, None, "original", None, None),  # neither compared
    ],
)
def test_work_reason(state, checksums, current, rule, current_rule, expected) -> None:
    assert work_reason(state, checksums, current, rule, current_rule) == expected


def test_a_done_result_needs_work_exactly_when_it_is_stale() -> None:
    assert work_reason("done", OLD, NEW, "original", None) == stale_reason(
        OLD, NEW, "original", None
    )
    assert stale_reason(NEW, NEW, "published", "published") is None
