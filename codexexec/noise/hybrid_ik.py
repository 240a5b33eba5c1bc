"""Clatter 2.2.0 post-quantum hybrid IK handshake (X25519 + ML-KEM-768, AES-GCM).

Pattern (responder static key pinned in advance)::

    <- s
    -> skem, e, es, s, ss        (message 1, initiator = harness, carries a payload)
    <- ekem, skem, e, ee, se     (message 2, responder = executor, empty payload)

``e`` and ``s`` each carry an X25519 key followed by an ML-KEM-768 key (two MixHash /
EncryptAndHash steps). ``skem`` shared secrets go through MixKeyAndHash, ``ekem`` shared secrets
and DH results through MixKey. Codex uses SHA-256; the Clatter reference vector uses SHA-512.

Randomness is injectable: pass ``rng`` (a ``Callable[[int], bytes]``) and every ephemeral key
and encapsulation coin is drawn from it in token order (ephemeral X25519 secret, then the
64-byte ML-KEM seed; 32 bytes per encapsulation). With ``rng`` set, encapsulation uses the pure
Python FIPS 203 code in :mod:`codexexec.noise.mlkem768`; otherwise ``cryptography`` does it.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import struct
from collections.abc import Callable
from typing import NoReturn

import msgspec
from cryptography.hazmat.primitives.asymmetric import mlkem
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey

from codexexec.noise import mlkem768
from codexexec.noise.errors import NoiseError
from codexexec.noise.keys import (
    MLKEM768_PUBLIC_KEY_LEN,
    X25519_KEY_LEN,
    NoiseKeyError,
    StaticIdentity,
    StaticPublicKey,
)
from codexexec.noise.transport import (
    MAX_NOISE_MESSAGE_LEN,
    TAG_LEN,
    CipherState,
    NoiseDecryptError,
    NoiseTransport,
)

__all__ = [
    "MAX_HANDSHAKE_PAYLOAD_LEN",
    "MAX_HARNESS_KEY_AUTHORIZATION_BYTES",
    "MESSAGE1_OVERHEAD",
    "MESSAGE2_LEN",
    "PROLOGUE_DOMAIN",
    "REGISTRY_AUTHENTICATION_REJECTED",
    "SHA256",
    "SHA512",
    "HandshakeError",
    "HandshakeResult",
    "HashFunction",
    "HybridIKInitiator",
    "HybridIKResponder",
    "SymmetricState",
    "build_prologue",
    "check_harness_key_authorization",
    "protocol_name",
]

Rng = Callable[[int], bytes]

PROLOGUE_DOMAIN = b"codex-exec-server-relay-noise/v1"
# Message 2's payload when /validate answered 401 (41 ASCII bytes, then Reset;
# docs/relay-protocol.md §1.4).
REGISTRY_AUTHENTICATION_REJECTED = b"codex-registry-authentication-rejected/v1"
MAX_HARNESS_KEY_AUTHORIZATION_BYTES = 4096

_KEM_CT_LEN = mlkem768.CIPHERTEXT_LEN  # 1088
_E_LEN = X25519_KEY_LEN + MLKEM768_PUBLIC_KEY_LEN  # 1216
_S_ENC_LEN = X25519_KEY_LEN + TAG_LEN + MLKEM768_PUBLIC_KEY_LEN + TAG_LEN  # 1248
MESSAGE1_OVERHEAD = _KEM_CT_LEN + _E_LEN + _S_ENC_LEN + TAG_LEN  # 3568
MESSAGE2_LEN = _KEM_CT_LEN + (_KEM_CT_LEN + TAG_LEN) + _E_LEN + TAG_LEN  # 3424
MAX_HANDSHAKE_PAYLOAD_LEN = MAX_NOISE_MESSAGE_LEN - MESSAGE1_OVERHEAD  # 61967


class HandshakeError(NoiseError):
    """The hybrid IK handshake failed (bad message, wrong key, prologue mismatch, ...)."""


class HashFunction(msgspec.Struct, frozen=True):
    """A Noise hash function: its Noise name and its ``hashlib`` constructor name."""

    noise_name: str
    hashlib_name: str
    hashlen: int

    def digest(self, data: bytes) -> bytes:
        return hashlib.new(self.hashlib_name, data).digest()

    def hmac(self, key: bytes, data: bytes) -> bytes:
        return hmac.new(key, data, self.hashlib_name).digest()

    def hkdf(self, chaining_key: bytes, ikm: bytes, outputs: int) -> list[bytes]:
        temp = self.hmac(chaining_key, ikm)
        out: list[bytes] = []
        previous = b""
        for index in range(1, outputs + 1):
            previous = self.hmac(temp, previous + bytes([index]))
            out.append(previous)
        return out


SHA256 = HashFunction("SHA256", "sha256", 32)
SHA512 = HashFunction("SHA512", "sha512", 64)


def protocol_name(hash_function: HashFunction) -> bytes:
    """The Noise protocol name hashed into ``h`` (DH is named "25519", not "X25519")."""
    return f"Noise_hybridIK_25519+MLKEM768_AESGCM_{hash_function.noise_name}".encode("ascii")


def build_prologue(environment_id: str, executor_registration_id: str, stream_id: str) -> bytes:
    """Codex prologue: four parts, each an 8-byte big-endian length then the UTF-8 bytes."""
    parts = (
        PROLOGUE_DOMAIN,
        environment_id.encode("utf-8"),
        executor_registration_id.encode("utf-8"),
        stream_id.encode("utf-8"),
    )
    return b"".join(struct.pack(">Q", len(part)) + part for part in parts)


def check_harness_key_authorization(payload: bytes) -> str:
    """Executor-side check of the message-1 payload before asking the registry."""
    if len(payload) > MAX_HARNESS_KEY_AUTHORIZATION_BYTES:
        raise HandshakeError("harness key authorization is too large")
    try:
        return payload.decode("utf-8")
    except UnicodeDecodeError:
        raise HandshakeError("harness key authorization is not valid UTF-8") from None


class SymmetricState:
    """Noise SymmetricState (``ck``, ``h`` and an optional CipherState)."""

    __slots__ = ("_cipher", "_ck", "_h", "_hash")

    def __init__(self, name: bytes, hash_function: HashFunction) -> None:
        self._hash = hash_function
        if len(name) <= hash_function.hashlen:
            self._h = name + b"\x00" * (hash_function.hashlen - len(name))
        else:
            self._h = hash_function.digest(name)
        self._ck = self._h
        self._cipher: CipherState | None = None

    def __repr__(self) -> str:
        return f"SymmetricState(hash={self._hash.noise_name}, has_key={self.has_key})"

    def __reduce__(self) -> NoReturn:
        raise TypeError("SymmetricState cannot be pickled")

    @property
    def handshake_hash(self) -> bytes:
        return self._h

    @property
    def has_key(self) -> bool:
        return self._cipher is not None

    def mix_hash(self, data: bytes) -> None:
        self._h = self._hash.digest(self._h + data)

    def mix_key(self, ikm: bytes) -> None:
        self._ck, temp_k = self._hash.hkdf(self._ck, ikm, 2)
        self._cipher = CipherState(temp_k[:32])

    def mix_key_and_hash(self, ikm: bytes) -> None:
        self._ck, temp_h, temp_k = self._hash.hkdf(self._ck, ikm, 3)
        self.mix_hash(temp_h)
        self._cipher = CipherState(temp_k[:32])

    def encrypt_and_hash(self, plaintext: bytes) -> bytes:
        if self._cipher is None:
            ciphertext = plaintext
        else:
            ciphertext = self._cipher.encrypt_with_ad(self._h, plaintext)
        self.mix_hash(ciphertext)
        return ciphertext

    def decrypt_and_hash(self, ciphertext: bytes) -> bytes:
        if self._cipher is None:
            plaintext = ciphertext
        else:
            plaintext = self._cipher.decrypt_with_ad(self._h, ciphertext)
        self.mix_hash(ciphertext)
        return plaintext

    def split(self) -> tuple[CipherState, CipherState]:
        temp_k1, temp_k2 = self._hash.hkdf(self._ck, b"", 2)
        return CipherState(temp_k1[:32]), CipherState(temp_k2[:32])


class HandshakeResult(msgspec.Struct, frozen=True):
    """Outcome of a completed handshake for one side."""

    transport: NoiseTransport
    handshake_hash: bytes
    remote_static: StaticPublicKey
    # Message 2's payload: empty, or REGISTRY_AUTHENTICATION_REJECTED (docs/relay-protocol.md §1.4).
    payload: bytes = b""

    def __repr__(self) -> str:
        return f"HandshakeResult(transport={self.transport!r})"


class _Reader:
    __slots__ = ("_data", "_pos")

    def __init__(self, data: bytes) -> None:
        self._data = data
        self._pos = 0

    def take(self, count: int) -> bytes:
        end = self._pos + count
        if end > len(self._data):
            raise HandshakeError("handshake message is too short")
        chunk = self._data[self._pos : end]
        self._pos = end
        return chunk

    def rest(self) -> bytes:
        chunk = self._data[self._pos :]
        self._pos = len(self._data)
        return chunk


class _Ephemeral:
    """An ephemeral X25519 + ML-KEM-768 pair (DH drawn first, then the KEM seed)."""

    __slots__ = ("dh_private", "dh_public", "kem_private", "kem_public")

    def __init__(self, draw: Rng) -> None:
        self.dh_private = X25519PrivateKey.from_private_bytes(draw(X25519_KEY_LEN))
        self.kem_private = mlkem.MLKEM768PrivateKey.from_seed_bytes(draw(mlkem768.SEED_LEN))
        self.dh_public = self.dh_private.public_key().public_bytes_raw()
        self.kem_public = self.kem_private.public_key().public_bytes_raw()

    def __repr__(self) -> str:
        return "_Ephemeral(<redacted>)"


def _dh(private: X25519PrivateKey, public: bytes) -> bytes:
    try:
        return private.exchange(X25519PublicKey.from_public_bytes(public))
    except ValueError:
        raise HandshakeError("X25519 key agreement failed") from None


def _static_dh(identity: StaticIdentity, public: bytes) -> bytes:
    try:
        return identity.dh(public)
    except ValueError:
        raise HandshakeError("X25519 key agreement failed") from None


def _decaps(private: mlkem.MLKEM768PrivateKey | StaticIdentity, ciphertext: bytes) -> bytes:
    try:
        return private.decapsulate(ciphertext)
    except ValueError:
        raise HandshakeError("ML-KEM-768 decapsulation failed") from None


class _Party:
    __slots__ = ("_done", "_draw", "_identity", "_injected", "_state")

    def __init__(
        self,
        identity: StaticIdentity,
        responder_static: StaticPublicKey,
        prologue: bytes,
        hash_function: HashFunction,
        rng: Rng | None,
    ) -> None:
        self._identity = identity
        self._injected = rng is not None
        self._draw: Rng = os.urandom if rng is None else rng
        self._state = SymmetricState(protocol_name(hash_function), hash_function)
        self._state.mix_hash(prologue)
        self._state.mix_hash(responder_static.x25519)
        self._state.mix_hash(responder_static.mlkem768)
        self._done = False

    def __repr__(self) -> str:
        return f"{type(self).__name__}(identity={self._identity!r})"

    def __reduce__(self) -> NoReturn:
        raise TypeError("handshake state cannot be pickled")

    @property
    def handshake_hash(self) -> bytes:
        return self._state.handshake_hash

    def _encapsulate(self, public: bytes) -> tuple[bytes, bytes]:
        """Returns ``(shared_secret, ciphertext)``."""
        try:
            if self._injected:
                return mlkem768.encapsulate(public, self._draw(32))
            return mlkem.MLKEM768PublicKey.from_public_bytes(public).encapsulate()
        except ValueError:
            raise HandshakeError("ML-KEM-768 encapsulation failed") from None

    def _finish(
        self, remote: StaticPublicKey, initiator: bool, payload: bytes = b""
    ) -> HandshakeResult:
        k1, k2 = self._state.split()
        transport = NoiseTransport(send=k1, recv=k2) if initiator else NoiseTransport(k2, k1)
        self._done = True
        return HandshakeResult(transport, self._state.handshake_hash, remote, payload)


class HybridIKInitiator(_Party):
    """The harness side: knows the executor's static key in advance."""

    __slots__ = ("_ephemeral", "_responder")

    def __init__(
        self,
        identity: StaticIdentity,
        responder_static: StaticPublicKey,
        prologue: bytes,
        *,
        hash_function: HashFunction = SHA256,
        rng: Rng | None = None,
    ) -> None:
        super().__init__(identity, responder_static, prologue, hash_function, rng)
        self._responder = responder_static
        self._ephemeral: _Ephemeral | None = None

    def write_message1(self, payload: bytes) -> bytes:
        if self._ephemeral is not None or self._done:
            raise HandshakeError("message 1 was already written")
        if len(payload) > MAX_HANDSHAKE_PAYLOAD_LEN:
            raise HandshakeError("handshake payload is too large")
        state = self._state
        out: list[bytes] = []
        # skem
        shared, ciphertext = self._encapsulate(self._responder.mlkem768)
        out.append(state.encrypt_and_hash(ciphertext))
        state.mix_key_and_hash(shared)
        # e
        eph = _Ephemeral(self._draw)
        self._ephemeral = eph
        state.mix_hash(eph.dh_public)
        state.mix_hash(eph.kem_public)
        out += [eph.dh_public, eph.kem_public]
        # es
        state.mix_key(_dh(eph.dh_private, self._responder.x25519))
        # s
        own = self._identity.public_key
        out.append(state.encrypt_and_hash(own.x25519))
        out.append(state.encrypt_and_hash(own.mlkem768))
        # ss
        state.mix_key(_static_dh(self._identity, self._responder.x25519))
        out.append(state.encrypt_and_hash(payload))
        return b"".join(out)

    def read_message2(self, message: bytes) -> HandshakeResult:
        """Consume message 2; any failure (including a bad AEAD tag) is a HandshakeError."""
        try:
            return self._read_message2(message)
        except NoiseDecryptError:
            raise HandshakeError("handshake response failed to authenticate") from None

    def _read_message2(self, message: bytes) -> HandshakeResult:
        eph = self._ephemeral
        if eph is None or self._done:
            raise HandshakeError("message 2 is not expected now")
        if len(message) > MAX_NOISE_MESSAGE_LEN:
            raise HandshakeError("handshake response is too large")
        state = self._state
        reader = _Reader(message)
        # ekem: the ciphertext travels in clear (MixHash only, even though a key is set)
        ciphertext = reader.take(_KEM_CT_LEN)
        state.mix_hash(ciphertext)
        state.mix_key(_decaps(eph.kem_private, ciphertext))
        # skem
        ciphertext = state.decrypt_and_hash(reader.take(_KEM_CT_LEN + TAG_LEN))
        state.mix_key_and_hash(_decaps(self._identity, ciphertext))
        # e
        re_dh = reader.take(X25519_KEY_LEN)
        re_kem = reader.take(MLKEM768_PUBLIC_KEY_LEN)
        state.mix_hash(re_dh)
        state.mix_hash(re_kem)
        # ee, se
        state.mix_key(_dh(eph.dh_private, re_dh))
        state.mix_key(_static_dh(self._identity, re_dh))
        rest = reader.rest()
        if len(rest) < TAG_LEN:
            raise HandshakeError("handshake message is too short")
        payload = state.decrypt_and_hash(rest)
        if payload not in (b"", REGISTRY_AUTHENTICATION_REJECTED):
            raise HandshakeError("handshake response carries an unexpected payload")
        self._ephemeral = None
        return self._finish(self._responder, initiator=True, payload=payload)


class HybridIKResponder(_Party):
    """The executor side: reads message 1, and (once authorized) writes message 2."""

    __slots__ = ("_remote", "_remote_ephemeral")

    def __init__(
        self,
        identity: StaticIdentity,
        prologue: bytes,
        *,
        hash_function: HashFunction = SHA256,
        rng: Rng | None = None,
    ) -> None:
        super().__init__(identity, identity.public_key, prologue, hash_function, rng)
        self._remote: StaticPublicKey | None = None
        self._remote_ephemeral: tuple[bytes, bytes] | None = None

    @property
    def remote_static(self) -> StaticPublicKey | None:
        """The initiator's authenticated static key, once message 1 has been read."""
        return self._remote

    def remote_public_key_json(self) -> dict[str, str]:
        """The initiator's static key as registry JSON (what /validate checks)."""
        if self._remote is None:
            raise HandshakeError("message 1 has not been read")
        return self._remote.to_channel_key().to_json_obj()

    def read_message1(self, message: bytes) -> bytes:
        """Consume message 1 and return its decrypted payload.

        Any failure (wrong pinned key, prologue mismatch, tampering) is a HandshakeError.
        """
        try:
            return self._read_message1(message)
        except NoiseDecryptError:
            raise HandshakeError("handshake request failed to authenticate") from None

    def _read_message1(self, message: bytes) -> bytes:
        if self._remote is not None or self._done:
            raise HandshakeError("message 1 was already read")
        if len(message) > MAX_NOISE_MESSAGE_LEN:
            raise HandshakeError("handshake message is too large")
        state = self._state
        reader = _Reader(message)
        # skem
        ciphertext = state.decrypt_and_hash(reader.take(_KEM_CT_LEN))
        state.mix_key_and_hash(_decaps(self._identity, ciphertext))
        # e
        re_dh = reader.take(X25519_KEY_LEN)
        re_kem = reader.take(MLKEM768_PUBLIC_KEY_LEN)
        state.mix_hash(re_dh)
        state.mix_hash(re_kem)
        # es
        state.mix_key(_static_dh(self._identity, re_dh))
        # s
        rs_dh = state.decrypt_and_hash(reader.take(X25519_KEY_LEN + TAG_LEN))
        rs_kem = state.decrypt_and_hash(reader.take(MLKEM768_PUBLIC_KEY_LEN + TAG_LEN))
        try:
            remote = StaticPublicKey(x25519=rs_dh, mlkem768=rs_kem)
        except NoiseKeyError as exc:
            raise HandshakeError(str(exc)) from None
        # ss
        state.mix_key(_static_dh(self._identity, rs_dh))
        rest = reader.rest()
        if len(rest) < TAG_LEN:
            raise HandshakeError("handshake message is too short")
        payload = state.decrypt_and_hash(rest)
        self._remote = remote
        self._remote_ephemeral = (re_dh, re_kem)
        return payload

    def write_message2(self, payload: bytes = b"") -> tuple[bytes, HandshakeResult]:
        """Produce message 2 and the finished transport.

        The payload is empty, except after the registry refused the executor's own credentials
        at /validate: then it is REGISTRY_AUTHENTICATION_REJECTED and a Reset follows.
        """
        remote = self._remote
        remote_eph = self._remote_ephemeral
        if remote is None or remote_eph is None or self._done:
            raise HandshakeError("message 2 cannot be written now")
        re_dh, re_kem = remote_eph
        state = self._state
        out: list[bytes] = []
        # ekem: the ciphertext travels in clear (MixHash only, even though a key is set)
        shared, ciphertext = self._encapsulate(re_kem)
        state.mix_hash(ciphertext)
        out.append(ciphertext)
        state.mix_key(shared)
        # skem
        shared, ciphertext = self._encapsulate(remote.mlkem768)
        out.append(state.encrypt_and_hash(ciphertext))
        state.mix_key_and_hash(shared)
        # e
        eph = _Ephemeral(self._draw)
        state.mix_hash(eph.dh_public)
        state.mix_hash(eph.kem_public)
        out += [eph.dh_public, eph.kem_public]
        # ee, se
        state.mix_key(_dh(eph.dh_private, re_dh))
        state.mix_key(_dh(eph.dh_private, remote.x25519))
        out.append(state.encrypt_and_hash(payload))
        self._remote_ephemeral = None
        return b"".join(out), self._finish(remote, initiator=False, payload=payload)
