"""Which Noise handshakes an executor socket admits, and its failure budget: the decisions
of docs/relay-protocol.md §5 without I/O. The clock's reading is passed in, so the pause and
its end are tested with a fake one; the transport (``transport/noise_admission.py``) runs
the Noise read and the registry call and acts on the answers.

Order of the checks before message 1 is read: the pause, the stream table's own refusal
(already active, retired, or 128 active), then the handshakes awaiting their answer.
Charged failures (a bad message 1, a failed or late validation, data before the handshake,
a second handshake while one is pending) count against the budget; the budget's last one pauses
every new handshake for the cool-down, the socket and its streams going on, and the count
starts again.
"""

from __future__ import annotations

from dataclasses import dataclass

from codexexec.relay.limits import (
    HANDSHAKE_COOLDOWN_SECONDS,
    MAX_FAILED_HANDSHAKES,
    MAX_PENDING_HANDSHAKES,
)


@dataclass(frozen=True, slots=True)
class Refusal:
    """A handshake Reset before message 1 is read, never charged to the budget."""

    reason: str  # a diagnostic, never sent: every Reset carries the one generic reason


class HandshakeGate:
    def __init__(
        self,
        *,
        budget: int = MAX_FAILED_HANDSHAKES,
        cooldown: float = HANDSHAKE_COOLDOWN_SECONDS,
        max_pending: int = MAX_PENDING_HANDSHAKES,
    ) -> None:
        self._budget = budget
        self.cooldown = cooldown
        self._max_pending = max_pending
        self.failures = 0
        self._paused_until = 0.0

    def paused(self, now: float) -> bool:
        return now < self._paused_until

    def check(self, now: float, table_refusal: str | None, pending: int) -> Refusal | None:
        """None when message 1 may be read; else why the handshake is Reset (uncharged)."""
        if self.paused(now):
            return Refusal("cooldown")
        if table_refusal is not None:
            return Refusal(f"stream_{table_refusal}")
        if pending >= self._max_pending:
            return Refusal("too_many_pending_handshakes")
        return None

    def charge(self, now: float) -> bool:
        """Count one failure; True when it starts a pause."""
        self.failures += 1
        if self.failures < self._budget:
            return False
        self.failures = 0
        self._paused_until = now + self.cooldown
        return True
