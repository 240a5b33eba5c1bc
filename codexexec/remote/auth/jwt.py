"""JWT claims read without verifying the signature: shape and times only.

The registry (or the rendezvous's agent keys) is what trusts a credential; these checks
only catch a token that cannot work before it is sent.
"""

from __future__ import annotations

import base64
import binascii
import json
from typing import Any

from codexexec.remote.errors import RemoteError


class JwtError(RemoteError, ValueError):
    """Why a token is not a usable JWT (never quotes the token)."""


def decode_claims(token: str) -> dict[str, Any]:
    parts = token.split(".")
    if len(parts) != 3 or not all(parts):
        raise JwtError("is not a JWT (expected three non-empty dot-separated parts)")
    _segment(parts[0], "header")
    return _segment(parts[1], "payload")


def _segment(text: str, name: str) -> dict[str, Any]:
    try:
        raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
        value = json.loads(raw)
    except (binascii.Error, ValueError):
        raise JwtError(f"has a {name} that is not base64url-encoded JSON") from None
    if not isinstance(value, dict):
        raise JwtError(f"has a {name} that is not a JSON object")
    return value


def numeric_claim(claims: dict[str, Any], name: str) -> float | None:
    """``exp``/``iat``/``nbf`` as seconds, None when absent; JwtError when not a number."""
    value = claims.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise JwtError(f"has a non-numeric `{name}` claim")
    return float(value)
