"""Progress a front end may want to show while the client waits on something slow.

A context variable rather than a parameter threaded through every layer: the CLI sets a
callback for the length of one command when a person is watching (a terminal), and the
connection code, several calls down, tells it what it is waiting for.
"""

from __future__ import annotations

from collections.abc import Callable
from contextvars import ContextVar

waiting: ContextVar[Callable[[str], None] | None] = ContextVar("waiting", default=None)
# What happens to the connection while a command runs: lost, reconnecting, back.
connection: ContextVar[Callable[[str], None] | None] = ContextVar("connection", default=None)


def tell_waiting(message: str) -> None:
    """Say once what the client is waiting for; nothing when nobody listens."""
    notice = waiting.get()
    if notice is not None:
        notice(message)


def tell_connection(message: str) -> None:
    """Say what happened to the connection; nothing when nobody listens."""
    notice = connection.get()
    if notice is not None:
        notice(message)
