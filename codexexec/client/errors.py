"""The one exception the client raises for anything a user can act on."""

from __future__ import annotations

import re

# How an executor (Codex's and codexexec's) names the OS error behind a failure.
_OS_ERROR = re.compile(r"\(os error (\d+)\)")


class ExecServerError(Exception):
    """A failure with a one-line message; ``code`` is the JSON-RPC code when there is one,
    ``os_errno`` the OS error the executor named (`… (os error 2)`), if it named one."""

    def __init__(self, message: str, code: int | None = None) -> None:
        super().__init__(message)
        self.code = code
        found = _OS_ERROR.search(message)
        self.os_errno = int(found.group(1)) if found else None


class StartInterrupted(ExecServerError):
    """The connection dropped while a process/start was in flight: the command may have
    started. A recovering client stops it once the session is back, so nothing is left
    running that nobody reads."""
