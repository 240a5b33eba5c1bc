"""Rotating executor credentials (`serve --remote … --executor-credential-stdin`).

A parent process (a provisioning agent) writes one frame per line to the executor's stdin,
and a new one whenever the credential rotates (docs/codex-0.169-observed.md §32)::

    {"version":1,"environment_id":"devbox","token":"…","expires_at":1796534535}

The frame must hold exactly these four fields; ``expires_at`` is whole Unix seconds and the
line, newline included, is at most 16 KiB. A frame for another environment, an expired one,
or a malformed one ends the executor, as Codex's does; the pipe closing ends it quietly (it
is how the parent says stop). The newest credential signs the next registration and every
``/validate``; an expired one signs nothing, so streams are refused until a fresh frame comes.

Parsing and the credential's state are pure (time passed in); reading the pipe is
``credential_pipe.py``, at the edge.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from codexexec.remote.auth.base import AuthError, CredentialUnavailable

FRAME_VERSION = 1
MAX_FRAME_BYTES = 16 * 1024  # the whole line, newline included (docs/codex-0.169-observed.md §32)
INITIAL_WAIT_SECONDS = 30.0
MAX_EXPIRES_AT = 2**64 - 1  # a u64 of seconds, as Codex 0.169.0 reads it (§32)

INVALID = "invalid exec-server executor credential frame"
TOO_LARGE = "exec-server executor credential frame exceeds the size limit"
OTHER_ENVIRONMENT = "exec-server executor credential is for a different environment"
EXPIRED = "exec-server executor credential is expired"
UNAVAILABLE = "exec-server executor credential is unavailable"
PIPE_CLOSED = "exec-server executor credential pipe closed"
READ_FAILED = "could not read exec-server executor credential pipe"
INITIAL_TIMEOUT = "timed out waiting for the initial exec-server executor credential"

_FIELDS = frozenset({"version", "environment_id", "token", "expires_at"})


class CredentialFrameError(AuthError):
    """A frame (or the pipe) that ends the executor; the text is Codex's."""


@dataclass(frozen=True)
class CredentialFrame:
    token: str
    expires_at: int

    def __repr__(self) -> str:  # never the token, even in a traceback's locals
        return f"CredentialFrame(expires_at={self.expires_at})"


def parse_frame(line: bytes, environment_id: str, now: float) -> CredentialFrame:
    """One line read from the pipe (with its newline) into a frame, checked in Codex's
    order: size, shape, environment, expiry."""
    if len(line) > MAX_FRAME_BYTES:
        raise CredentialFrameError(TOO_LARGE)
    try:
        # UTF-8 only (json.loads of bytes would take UTF-16 and -32 too); deep nesting is
        # as invalid as any other bad frame.
        value: Any = json.loads(line.decode("utf-8"), object_pairs_hook=_no_repeats)
    except (ValueError, RecursionError):
        raise CredentialFrameError(INVALID) from None
    if not isinstance(value, dict) or set(value) != _FIELDS:
        raise CredentialFrameError(INVALID)
    version, frame_env = value["version"], value["environment_id"]
    token, expires_at = value["token"], value["expires_at"]
    if (
        not _is_int(version)
        or version != FRAME_VERSION
        or not isinstance(frame_env, str)
        or not isinstance(token, str)
        or not _header_safe(token)
        or not _is_int(expires_at)
        or not 0 <= expires_at <= MAX_EXPIRES_AT
    ):
        raise CredentialFrameError(INVALID)
    if frame_env != environment_id:
        raise CredentialFrameError(OTHER_ENVIRONMENT)
    if expires_at <= now:
        raise CredentialFrameError(EXPIRED)
    return CredentialFrame(token, expires_at)


def _no_repeats(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """A field given twice is invalid, as in Codex."""
    value = dict(pairs)
    if len(value) != len(pairs):
        raise ValueError("a repeated field")
    return value


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _header_safe(token: str) -> bool:
    return bool(token) and all(33 <= ord(ch) <= 126 for ch in token)


class RotatingCredential:
    """The newest frame's bearer; an :class:`AuthProvider` for registration and
    ``/validate``. An expired or missing credential raises :class:`CredentialUnavailable`,
    which the relay waits out instead of exiting."""

    def __init__(self, environment_id: str, clock: Callable[[], float] = time.time) -> None:
        self._environment_id = environment_id
        self._clock = clock
        self._frame: CredentialFrame | None = None
        self.rotations = 0  # frames accepted after the first

    @property
    def description(self) -> str:
        return "rotating executor credential from stdin"

    @property
    def ready(self) -> bool:
        return self._frame is not None

    def accept(self, line: bytes) -> None:
        frame = parse_frame(line, self._environment_id, self._clock())
        if self._frame is not None:
            self.rotations += 1
        self._frame = frame

    def current(self) -> CredentialFrame:
        if self._frame is None:
            raise CredentialUnavailable(UNAVAILABLE)
        if self._frame.expires_at <= self._clock():
            raise CredentialUnavailable(EXPIRED)
        return self._frame

    async def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.current().token}"}
