"""The `noise_ik_v1` profile: classic `Noise_IK_25519_ChaChaPoly_BLAKE2s`, for peers without
ML-KEM (a codexexec extension; Codex 0.169.0 speaks only `noise_hybrid_ik_v1`).

The handshake and the transport ciphers come from the `noiseprotocol` package. Everything
around them is the hybrid profile's: the same prologue (domain, environment, registration and
stream ids, 8-byte lengths), message 1 carrying the registry's harness authorization, message 2
empty (or the "authentication rejected" payload), 60 KiB records, one record per Data frame.

Public key JSON: ``{"suite": "Noise_IK_25519_ChaChaPoly_BLAKE2s", "x25519_public_key": B64}``,
unknown fields rejected, canonical standard base64.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, NoReturn

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from noise.connection import Keypair, NoiseConnection
from noise.exceptions import (
    NoiseHandshakeError,
    NoiseInvalidMessage,
    NoiseMaxNonceError,
    NoiseValueError,
)

from codexexec.noise.hybrid_ik import REGISTRY_AUTHENTICATION_REJECTED, HandshakeError
from codexexec.noise.keys import NoiseKeyError
from codexexec.noise.transport import (
    MAX_NOISE_MESSAGE_LEN,
    MAX_RECORD_PLAINTEXT_LEN,
    TAG_LEN,
    NoiseDecryptError,
    NonceExhaustedError,
    RecordError,
)
from codexexec.protocol.registry import CLASSIC_NOISE_PROFILE, NOISE_SUITES

CLASSIC_SUITE = NOISE_SUITES[CLASSIC_NOISE_PROFILE]
_PROTOCOL_NAME = CLASSIC_SUITE.encode("ascii")
_FIELDS = ("suite", "x25519_public_key")
_KEY_LEN = 32
# What noiseprotocol raises for a message that does not authenticate or fit.
_LIBRARY_ERRORS = (
    NoiseHandshakeError,
    NoiseInvalidMessage,
    NoiseMaxNonceError,
    NoiseValueError,
    InvalidTag,
    ValueError,
)


def classic_public_key_json(public: bytes) -> dict[str, str]:
    return {"suite": CLASSIC_SUITE, "x25519_public_key": base64.b64encode(public).decode("ascii")}


def decode_classic_public_key(obj: Any) -> bytes:
    """The raw X25519 key from its JSON object; anything but exactly the two fields fails."""
    if not isinstance(obj, Mapping):
        raise NoiseKeyError("Noise public key must be a JSON object")
    if set(obj) != set(_FIELDS):
        raise NoiseKeyError(f"a {CLASSIC_SUITE} public key has exactly the fields {_FIELDS}")
    if obj["suite"] != CLASSIC_SUITE:
        raise NoiseKeyError("unsupported Noise channel suite")
    text = obj["x25519_public_key"]
    try:
        raw = base64.b64decode(str(text).encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError, ValueError):
        raise NoiseKeyError("invalid X25519 public key") from None
    if len(raw) != _KEY_LEN or base64.b64encode(raw).decode("ascii") != text:
        raise NoiseKeyError("invalid X25519 public key")
    return raw


class ClassicIdentity:
    """A static X25519 key pair. The secret never prints or pickles."""

    __slots__ = ("_private", "public")

    def __init__(self, private: X25519PrivateKey) -> None:
        self._private = private
        self.public = private.public_key().public_bytes_raw()

    @classmethod
    def generate(cls) -> ClassicIdentity:
        return cls(X25519PrivateKey.generate())

    def __repr__(self) -> str:
        return "ClassicIdentity(<redacted>)"

    def __reduce__(self) -> NoReturn:
        raise TypeError("ClassicIdentity cannot be pickled")

    def public_key_json(self) -> dict[str, str]:
        return classic_public_key_json(self.public)

    def _secret(self) -> bytes:
        return self._private.private_bytes_raw()


class ClassicTransport:
    """Records over a finished classic handshake, with the hybrid transport's rules: at most
    60 KiB of plaintext per record, in order, and any failure ends the transport."""

    __slots__ = ("_connection", "_failed")

    def __init__(self, connection: NoiseConnection) -> None:
        self._connection = connection
        self._failed = False

    def __repr__(self) -> str:
        return f"ClassicTransport(failed={self._failed})"

    def __reduce__(self) -> NoReturn:
        raise TypeError("ClassicTransport cannot be pickled")

    def encrypt(self, plaintext: bytes) -> bytes:
        if self._failed:
            raise RecordError("Noise transport already failed")
        if len(plaintext) > MAX_RECORD_PLAINTEXT_LEN:
            raise RecordError("transport plaintext is too large")
        try:
            return bytes(self._connection.encrypt(bytes(plaintext)))
        except NoiseMaxNonceError:
            self._failed = True
            raise NonceExhaustedError("Noise transport nonce exhausted") from None

    def decrypt(self, ciphertext: bytes) -> bytes:
        if self._failed:
            raise RecordError("Noise transport already failed")
        if not TAG_LEN <= len(ciphertext) <= MAX_NOISE_MESSAGE_LEN:
            self._failed = True
            raise RecordError("transport ciphertext has an invalid length")
        try:
            plaintext = bytes(self._connection.decrypt(bytes(ciphertext)))
        except _LIBRARY_ERRORS:
            self._failed = True
            raise NoiseDecryptError("transport record failed to authenticate") from None
        if len(plaintext) > MAX_RECORD_PLAINTEXT_LEN:
            self._failed = True
            raise RecordError("transport plaintext record exceeds maximum length")
        return plaintext


@dataclass(frozen=True, repr=False)
class ClassicResult:
    transport: ClassicTransport
    payload: bytes = b""


def _connection(identity: ClassicIdentity, prologue: bytes, initiator: bool) -> NoiseConnection:
    connection = NoiseConnection.from_name(_PROTOCOL_NAME)
    if initiator:
        connection.set_as_initiator()
    else:
        connection.set_as_responder()
    connection.set_keypair_from_private_bytes(Keypair.STATIC, identity._secret())
    connection.set_prologue(prologue)
    return connection


class ClassicIKInitiator:
    """The harness side, with the executor's key pinned."""

    def __init__(self, identity: ClassicIdentity, responder_public: bytes, prologue: bytes) -> None:
        self._connection = _connection(identity, prologue, initiator=True)
        self._connection.set_keypair_from_public_bytes(Keypair.REMOTE_STATIC, responder_public)
        self._connection.start_handshake()

    def write_message1(self, payload: bytes) -> bytes:
        return bytes(self._connection.write_message(payload))

    def read_message2(self, message: bytes) -> ClassicResult:
        if len(message) > MAX_NOISE_MESSAGE_LEN:
            raise HandshakeError("handshake response is too large")
        try:
            payload = bytes(self._connection.read_message(message))
        except _LIBRARY_ERRORS:
            raise HandshakeError("handshake response failed to authenticate") from None
        if payload not in (b"", REGISTRY_AUTHENTICATION_REJECTED):
            raise HandshakeError("handshake response carries an unexpected payload")
        return ClassicResult(ClassicTransport(self._connection), payload)


class ClassicIKResponder:
    """The executor side: reads message 1, and (once authorized) writes message 2."""

    def __init__(self, identity: ClassicIdentity, prologue: bytes) -> None:
        self._connection = _connection(identity, prologue, initiator=False)
        self._connection.start_handshake()
        self._remote: bytes | None = None

    def read_message1(self, message: bytes) -> bytes:
        if self._remote is not None:
            raise HandshakeError("message 1 was already read")
        if len(message) > MAX_NOISE_MESSAGE_LEN:
            raise HandshakeError("handshake message is too large")
        try:
            payload = bytes(self._connection.read_message(message))
        except _LIBRARY_ERRORS:
            raise HandshakeError("handshake request failed to authenticate") from None
        remote = self._connection.noise_protocol.handshake_state.rs
        self._remote = bytes(remote.public_bytes)
        return payload

    def remote_public_key_json(self) -> dict[str, str]:
        if self._remote is None:
            raise HandshakeError("message 1 has not been read")
        return classic_public_key_json(self._remote)

    def write_message2(self, payload: bytes = b"") -> tuple[bytes, ClassicResult]:
        if self._remote is None:
            raise HandshakeError("message 2 cannot be written now")
        message = bytes(self._connection.write_message(payload))
        return message, ClassicResult(ClassicTransport(self._connection), payload)
