"""`exec --timeout` and `--idle-timeout`: when a command has run too long, or been silent
too long. Pure: the caller passes the clock's readings in and does the waiting."""

from __future__ import annotations

from typing import Literal

import msgspec

Fired = Literal["timeout", "idle-timeout"]
EXIT_TIMED_OUT = 124  # what timeout(1) exits with


class Deadlines(msgspec.Struct):
    """``timeout``: seconds of wall clock from ``started``; ``idle``: seconds without output."""

    timeout: float | None
    idle: float | None
    started: float
    last_output: float

    @classmethod
    def begin(cls, timeout: float | None, idle: float | None, now: float) -> Deadlines:
        return cls(timeout, idle, now, now)

    @property
    def active(self) -> bool:
        return self.timeout is not None or self.idle is not None

    def output(self, now: float) -> None:
        self.last_output = now

    def due(self, now: float) -> Fired | None:
        """Which limit is reached at ``now`` (the wall clock first), if any."""
        if self.timeout is not None and now - self.started >= self.timeout:
            return "timeout"
        if self.idle is not None and now - self.last_output >= self.idle:
            return "idle-timeout"
        return None

    def wait(self, now: float) -> float | None:
        """Seconds until the next limit could be reached; None without limits."""
        ends = [
            end
            for end in (
                None if self.timeout is None else self.started + self.timeout,
                None if self.idle is None else self.last_output + self.idle,
            )
            if end is not None
        ]
        return max(0.0, min(ends) - now) if ends else None


def describe(fired: Fired, deadlines: Deadlines) -> str:
    if fired == "timeout":
        return f"--timeout {deadlines.timeout:g}s reached"
    return f"--idle-timeout {deadlines.idle:g}s reached: no output for that long"
