"""Failed Noise handshakes counted per harness credential: one bad harness cannot lock the
others out of an environment.

An executor pauses every new handshake for 10 s after 8 failures on its socket (Codex's
budget, ``transport/noise_admission.py``), whoever caused them. The rendezvous knows which
credential opened each harness socket, so it charges a failure — the executor resetting a
stream that was waiting for its handshake reply — to that credential, and once a credential
has failed ``MAX_FAILURES`` times, stops relaying its new handshakes for a while, doubling
each time it is stopped again (up to a minute); a handshake of its that succeeds clears
its record. Its failures then never reach the executor's budget, and other credentials keep
connecting.

Pure: the caller passes the time in and acts on the answers.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

# Fewer than the executor's 8, so one credential alone never pauses an executor.
MAX_FAILURES = 2
FIRST_BLOCK_SECONDS = 10.0
# Capped low: an executor-side fault (its own credential refused at /validate) fails
# every harness alike, and a credential must not stay paused long after it is mended.
MAX_BLOCK_SECONDS = 60.0
# Credentials remembered at once (least recently charged forgotten first).
MAX_TRACKED = 4096


@dataclass(slots=True)
class _Record:
    failures: int = 0
    blocked_until: float = 0.0
    next_block: float = FIRST_BLOCK_SECONDS


class HandshakeBudget:
    def __init__(self) -> None:
        self._records: OrderedDict[str, _Record] = OrderedDict()

    def blocked_for(self, credential: str, now: float) -> float:
        """Seconds until ``credential`` may start a handshake again; 0 when it may now."""
        record = self._records.get(credential)
        return 0.0 if record is None else max(0.0, record.blocked_until - now)

    def charge(self, credential: str, now: float) -> bool:
        """Count one failed handshake; True when this failure blocks the credential."""
        record = self._records.pop(credential, None) or _Record()
        self._records[credential] = record  # most recently charged last
        while len(self._records) > MAX_TRACKED:
            self._records.popitem(last=False)
        record.failures += 1
        if record.failures < MAX_FAILURES:
            return False
        record.failures = 0
        record.blocked_until = now + record.next_block
        record.next_block = min(record.next_block * 2, MAX_BLOCK_SECONDS)
        return True

    def succeeded(self, credential: str) -> None:
        """A handshake of ``credential`` was answered: its record starts afresh."""
        self._records.pop(credential, None)
