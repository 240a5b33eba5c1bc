"""Static Noise keys: the public-key JSON object and the secret static identity.

The JSON form (codex ``NoiseChannelPublicKey``) has exactly three string fields; unknown
fields are rejected. Both key components are RFC 4648 standard base64 with canonical padding.
Deserialising accepts any ``suite`` string; :meth:`NoiseChannelPublicKey.decode` checks it.
Nothing here ever prints key material: reprs show only the suite.
"""

from __future__ import annotations

import base64
import binascii
import json
import os
from collections.abc import Callable, Mapping
from typing import Any, NoReturn

import msgspec
from cryptography.hazmat.primitives.asymmetric import mlkem
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey

from codexexec.noise.errors import NoiseError

__all__ = [
    "MLKEM768_PUBLIC_KEY_LEN",
    "NOISE_CHANNEL_SUITE",
    "X25519_KEY_LEN",
    "NoiseChannelPublicKey",
    "NoiseKeyError",
    "StaticIdentity",
    "StaticPublicKey",
]

NOISE_CHANNEL_SUITE = "Noise_hybridIK_X25519+MLKEM768_AESGCM_SHA256"
X25519_KEY_LEN = 32
MLKEM768_PUBLIC_KEY_LEN = 1184
MLKEM768_SEED_LEN = 64

_FIELDS = ("suite", "x25519_public_key", "mlkem768_public_key")
_REDACTED = "<redacted>"


class NoiseKeyError(NoiseError, ValueError):
    """A public key is malformed or uses an unsupported suite."""


def _b64encode(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _b64decode_strict(text: str) -> bytes | None:
    try:
        raw = base64.b64decode(text.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError, ValueError):
        return None
    if _b64encode(raw) != text:
        return None  # non-canonical padding or trailing bits
    return raw


class StaticPublicKey(msgspec.Struct, frozen=True):
    """Decoded static public key: raw X25519 (32 bytes) and ML-KEM-768 (1184 bytes)."""

    x25519: bytes
    mlkem768: bytes

    def __post_init__(self) -> None:
        if len(self.x25519) != X25519_KEY_LEN:
            raise NoiseKeyError("invalid X25519 public key length")
        if len(self.mlkem768) != MLKEM768_PUBLIC_KEY_LEN:
            raise NoiseKeyError("invalid ML-KEM-768 public key length")

    def __repr__(self) -> str:
        return f"StaticPublicKey(x25519={_REDACTED}, mlkem768={_REDACTED})"

    __str__ = __repr__

    def to_channel_key(self) -> NoiseChannelPublicKey:
        return NoiseChannelPublicKey(
            suite=NOISE_CHANNEL_SUITE,
            x25519_public_key=_b64encode(self.x25519),
            mlkem768_public_key=_b64encode(self.mlkem768),
        )


class NoiseChannelPublicKey(msgspec.Struct, frozen=True):
    """The JSON public-key object exactly as it travels to and from the registry."""

    suite: str
    x25519_public_key: str
    mlkem768_public_key: str

    def __repr__(self) -> str:
        return (
            f"NoiseChannelPublicKey(suite={self.suite!r}, x25519_public_key={_REDACTED}, "
            f"mlkem768_public_key={_REDACTED})"
        )

    __str__ = __repr__

    @classmethod
    def from_json_obj(cls, obj: Any) -> NoiseChannelPublicKey:
        """Parse a decoded JSON value; unknown, missing or non-string fields are rejected."""
        if not isinstance(obj, Mapping):
            raise NoiseKeyError("Noise channel public key must be a JSON object")
        unknown = sorted(str(key) for key in obj if key not in _FIELDS)
        if unknown:
            raise NoiseKeyError(f"unknown field in Noise channel public key: {unknown[0]}")
        values: dict[str, str] = {}
        for field in _FIELDS:
            if field not in obj:
                raise NoiseKeyError(f"missing field in Noise channel public key: {field}")
            value = obj[field]
            if not isinstance(value, str):
                raise NoiseKeyError(f"field {field} of Noise channel public key must be a string")
            values[field] = value
        return cls(**values)

    @classmethod
    def from_json(cls, text: str | bytes) -> NoiseChannelPublicKey:
        try:
            obj = json.loads(text)
        except ValueError as exc:
            raise NoiseKeyError("Noise channel public key is not valid JSON") from exc
        return cls.from_json_obj(obj)

    def to_json_obj(self) -> dict[str, str]:
        return {
            "suite": self.suite,
            "x25519_public_key": self.x25519_public_key,
            "mlkem768_public_key": self.mlkem768_public_key,
        }

    def to_json(self) -> str:
        return json.dumps(self.to_json_obj(), separators=(",", ":"))

    def decode(self) -> StaticPublicKey:
        """Validate and decode, with codex's checks in codex's order."""
        if self.suite != NOISE_CHANNEL_SUITE:
            raise NoiseKeyError("unsupported Noise channel suite")
        x25519 = _b64decode_strict(self.x25519_public_key)
        if x25519 is None:
            raise NoiseKeyError("invalid X25519 public key")
        if len(x25519) != X25519_KEY_LEN:
            raise NoiseKeyError("invalid X25519 public key length")
        kem = _b64decode_strict(self.mlkem768_public_key)
        if kem is None:
            raise NoiseKeyError("invalid ML-KEM-768 public key")
        if len(kem) != MLKEM768_PUBLIC_KEY_LEN:
            raise NoiseKeyError("invalid ML-KEM-768 public key length")
        return StaticPublicKey(x25519=x25519, mlkem768=kem)


class StaticIdentity:
    """A static X25519 + ML-KEM-768 key pair (executor or harness). Secrets never print."""

    __slots__ = ("_kem", "_public", "_x25519")

    def __init__(self, x25519: X25519PrivateKey, kem: mlkem.MLKEM768PrivateKey) -> None:
        self._x25519 = x25519
        self._kem = kem
        self._public = StaticPublicKey(
            x25519=x25519.public_key().public_bytes_raw(),
            mlkem768=kem.public_key().public_bytes_raw(),
        )

    @classmethod
    def generate(cls, rng: Callable[[int], bytes] | None = None) -> StaticIdentity:
        """Fresh identity. ``rng`` (default ``os.urandom``) supplies the X25519 secret, then
        the 64-byte ML-KEM seed ``d || z``."""
        draw = os.urandom if rng is None else rng
        x_secret = draw(X25519_KEY_LEN)
        kem_seed = draw(MLKEM768_SEED_LEN)
        return cls.from_secret_bytes(x_secret, kem_seed)

    @classmethod
    def from_secret_bytes(cls, x25519_secret: bytes, mlkem_seed: bytes) -> StaticIdentity:
        if len(x25519_secret) != X25519_KEY_LEN:
            raise NoiseKeyError("X25519 secret must be 32 bytes")
        if len(mlkem_seed) != MLKEM768_SEED_LEN:
            raise NoiseKeyError("ML-KEM-768 seed must be 64 bytes")
        return cls(
            X25519PrivateKey.from_private_bytes(x25519_secret),
            mlkem.MLKEM768PrivateKey.from_seed_bytes(mlkem_seed),
        )

    def __repr__(self) -> str:
        return f"StaticIdentity(public_key={self.public_key.to_channel_key()!r})"

    __str__ = __repr__

    def __reduce__(self) -> NoReturn:
        raise TypeError("StaticIdentity cannot be pickled")

    @property
    def public_key(self) -> StaticPublicKey:
        return self._public

    def channel_public_key(self) -> NoiseChannelPublicKey:
        return self._public.to_channel_key()

    def dh(self, peer_x25519: bytes) -> bytes:
        """X25519 with the static secret."""
        return self._x25519.exchange(X25519PublicKey.from_public_bytes(peer_x25519))

    def decapsulate(self, ciphertext: bytes) -> bytes:
        """ML-KEM-768 decapsulation with the static secret."""
        return self._kem.decapsulate(ciphertext)
