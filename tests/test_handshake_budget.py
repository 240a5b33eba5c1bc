"""The rendezvous's per-credential handshake budget, as a pure table with a fake clock."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from codexexec.rendezvous.handshake_budget import (
    FIRST_BLOCK_SECONDS,
    MAX_BLOCK_SECONDS,
    MAX_FAILURES,
    MAX_TRACKED,
    HandshakeBudget,
)


def test_a_credential_is_paused_after_its_failures_and_free_again_later() -> None:
    budget = HandshakeBudget()
    now = 1000.0
    for _ in range(MAX_FAILURES - 1):
        assert budget.charge("bad", now) is False
        assert budget.blocked_for("bad", now) == 0
    assert budget.charge("bad", now) is True
    assert budget.blocked_for("bad", now) == FIRST_BLOCK_SECONDS
    assert budget.blocked_for("good", now) == 0  # others are not touched
    assert budget.blocked_for("bad", now + FIRST_BLOCK_SECONDS) == 0


def test_pauses_double_up_to_the_cap_and_a_success_clears_them() -> None:
    budget = HandshakeBudget()
    now, pauses = 0.0, []
    for _ in range(10):
        for _ in range(MAX_FAILURES):
            budget.charge("bad", now)
        pauses.append(budget.blocked_for("bad", now))
        now += pauses[-1]
    assert pauses[:3] == [FIRST_BLOCK_SECONDS, 2 * FIRST_BLOCK_SECONDS, 4 * FIRST_BLOCK_SECONDS]
    assert max(pauses) == MAX_BLOCK_SECONDS
    budget.succeeded("bad")
    for _ in range(MAX_FAILURES):
        budget.charge("bad", now)
    assert budget.blocked_for("bad", now) == FIRST_BLOCK_SECONDS


@given(st.lists(st.integers(0, 3 * MAX_TRACKED), max_size=300))
def test_the_table_stays_bounded(credentials: list[int]) -> None:
    budget = HandshakeBudget()
    for n in credentials:
        budget.charge(f"c{n}", 0.0)
    assert len(budget._records) <= MAX_TRACKED


def test_the_least_recently_charged_credential_is_forgotten_first() -> None:
    budget = HandshakeBudget()
    for _ in range(MAX_FAILURES):
        budget.charge("old", 0.0)
    for n in range(MAX_TRACKED):
        budget.charge(f"c{n}", 0.0)
    assert budget.blocked_for("old", 0.0) == 0
