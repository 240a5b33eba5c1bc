"""The one exception the client raises for anything a user can act on."""

from __future__ import annotations


class ExecServerError(Exception):
    """A failure with a one-line message; ``code`` is the JSON-RPC code when there is one."""

    def __init__(self, message: str, code: int | None = None) -> None:
        super().__init__(message)
        self.code = code


class StartInterrupted(ExecServerError):
    """The connection dropped while a process/start was in flight: the command may have
    started. A recovering client stops it once the session is back, so nothing is left
    running that nobody reads."""
