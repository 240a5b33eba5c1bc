"""The one interface every registry credential offers."""

from __future__ import annotations

from typing import Protocol

from codexexec.remote.errors import RemoteError


class AuthError(RemoteError):
    """A credential cannot be used; the message names the fix and never holds a secret."""


class CredentialUnavailable(AuthError):
    """No usable credential right now, but one may come (a rotating credential expired):
    the executor waits instead of exiting."""


class AuthProvider(Protocol):
    @property
    def description(self) -> str:
        """Which credential and where it came from, safe to print (never the secret)."""
        ...

    async def headers(self) -> dict[str, str]:
        """Headers for one registry request (refreshing the credential first if needed)."""
        ...
