"""HMAC-signed, expiring relay websocket URLs.

A relay URL looks like::

    ws://HOST:PORT/relay?role=environment&environment_id=env-1&registration_id=reg-…
        &expires=1767225600&sig=<base64url HMAC-SHA256>

The websocket upgrade carries no ``Authorization`` header (neither Codex's executor nor its
harness sends one), so the signed query *is* the credential. The MAC covers the role, the
environment id, the registration id and the expiry, each length-prefixed so no two field lists
encode alike. The host is not covered: it is whatever address the caller used to reach the
registry. Verification is constant-time; a bad signature is refused before the expiry is
looked at, so probing never learns whether an expiry would have been acceptable.

Signed URLs are bearer capabilities: never log one (log ``shown_urls.origin`` of it).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Literal
from urllib.parse import urlencode, urlsplit, urlunsplit

from codexexec.rendezvous.errors import RendezvousError

RelayRole = Literal["environment", "harness"]
RELAY_ROLES: tuple[RelayRole, ...] = ("environment", "harness")
RELAY_PATH = "/relay"
KEY_BYTES = 32
_DOMAIN = b"codexexec-rendezvous-relay-url/v2"
_FIELDS = ("role", "environment_id", "registration_id", "expires", "sig")
_OPTIONAL_FIELDS = ("sub",)
_MAX_FIELD = 512


class SignatureError(RendezvousError):
    """A relay URL that must not open a websocket; carries the HTTP answer."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message


@dataclass(frozen=True)
class RelayTicket:
    """What a verified relay URL grants."""

    role: RelayRole
    environment_id: str
    registration_id: str
    expires: int
    # Who the URL was issued to (a harness credential's label), or "".
    subject: str = ""


def _mac_input(
    role: str, environment_id: str, registration_id: str, expires: int, subject: str
) -> bytes:
    parts = [_DOMAIN]
    for text in (role, environment_id, registration_id, str(expires), subject):
        parts.append(text.encode("utf-8"))
    return b"".join(len(part).to_bytes(8, "big") + part for part in parts)


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


class RelayUrlSigner:
    def __init__(self, key: bytes, *, clock: Callable[[], float] = time.time) -> None:
        if len(key) < 16:
            raise ValueError("relay URL signing key must be at least 16 bytes")
        self._key = key
        self._clock = clock

    def _sig(
        self, role: str, environment_id: str, registration_id: str, expires: int, subject: str
    ) -> str:
        message = _mac_input(role, environment_id, registration_id, expires, subject)
        return _b64url(hmac.new(self._key, message, hashlib.sha256).digest())

    def sign(
        self,
        base_url: str,
        role: RelayRole,
        environment_id: str,
        registration_id: str,
        ttl_seconds: float,
        subject: str = "",
    ) -> str:
        """``base_url`` is ``ws://HOST:PORT`` (or ``wss://…``, any path is replaced)."""
        expires = int(self._clock() + ttl_seconds)
        fields = [
            ("role", role),
            ("environment_id", environment_id),
            ("registration_id", registration_id),
            ("expires", str(expires)),
        ]
        if subject:
            fields.append(("sub", subject))
        sig = self._sig(role, environment_id, registration_id, expires, subject)
        query = urlencode([*fields, ("sig", sig)])
        parts = urlsplit(base_url)
        return urlunsplit((parts.scheme, parts.netloc, RELAY_PATH, query, ""))

    def verify(self, query: Iterable[tuple[str, str]]) -> RelayTicket:
        """Check a relay URL's query parameters (every pair, duplicates included)."""
        values: dict[str, str] = {}
        for name, value in query:
            if name not in _FIELDS and name not in _OPTIONAL_FIELDS:
                continue
            if name in values:
                raise SignatureError(400, "invalid_relay_url", f"duplicate {name} parameter")
            if len(value) > _MAX_FIELD:
                raise SignatureError(400, "invalid_relay_url", f"{name} parameter too long")
            values[name] = value
        missing = [name for name in _FIELDS if not values.get(name)]
        if missing:
            raise SignatureError(401, "invalid_relay_url", "relay URL lacks " + ", ".join(missing))
        role = values["role"]
        expires_text = values["expires"]
        if not expires_text.isascii() or not expires_text.isdigit() or len(expires_text) > 15:
            raise SignatureError(400, "invalid_relay_url", "malformed expires parameter")
        expires = int(expires_text)
        subject = values.get("sub", "")
        expected = self._sig(
            role, values["environment_id"], values["registration_id"], expires, subject
        )
        if not hmac.compare_digest(expected.encode("ascii"), values["sig"].encode("utf-8")):
            raise SignatureError(403, "invalid_signature", "relay URL signature is not valid")
        if role not in RELAY_ROLES:
            raise SignatureError(400, "invalid_relay_url", "unknown relay role")
        if expires <= self._clock():
            raise SignatureError(401, "relay_url_expired", "relay URL has expired")
        return RelayTicket(
            role="environment" if role == "environment" else "harness",
            environment_id=values["environment_id"],
            registration_id=values["registration_id"],
            expires=expires,
            subject=subject,
        )
