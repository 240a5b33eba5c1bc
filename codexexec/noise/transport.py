"""Noise CipherState (AES-256-GCM) and the codex transport-record wrapper.

* The AES-GCM nonce is 4 zero bytes followed by the 64-bit counter in big-endian order
  (Noise spec section 12.4).
* The counter is a u64 that never wraps: the value ``2**64 - 1`` is reserved by Noise, so
  encrypting or decrypting when the counter has reached it raises :class:`NonceExhaustedError`.
* A failed decryption does not advance the counter. Counters are implicit, so a replayed or
  reordered record is authenticated under the wrong nonce and fails to decrypt.
"""

from __future__ import annotations

import struct
from typing import NoReturn

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from codexexec.noise.errors import NoiseError

__all__ = [
    "KEY_LEN",
    "MAX_NOISE_MESSAGE_LEN",
    "MAX_NONCE",
    "MAX_RECORD_PLAINTEXT_LEN",
    "TAG_LEN",
    "CipherState",
    "NoiseDecryptError",
    "NoiseTransport",
    "NonceExhaustedError",
    "RecordError",
]

KEY_LEN = 32
TAG_LEN = 16
MAX_NONCE = 2**64 - 1  # reserved; the last usable nonce is MAX_NONCE - 1
MAX_NOISE_MESSAGE_LEN = 65535
MAX_RECORD_PLAINTEXT_LEN = 61440  # NOISE_RECORD_PLAINTEXT_LEN, 60 KiB


class NoiseDecryptError(NoiseError):
    """AEAD authentication failed (tampered, replayed, reordered, or wrong key)."""


class NonceExhaustedError(NoiseError):
    """The 64-bit nonce counter reached its reserved maximum."""


class RecordError(NoiseError):
    """A transport record violated a size rule or the transport is no longer usable."""


def _nonce_bytes(counter: int) -> bytes:
    return b"\x00\x00\x00\x00" + struct.pack(">Q", counter)


class CipherState:
    """A Noise CipherState with a key (always set) and a u64 nonce counter."""

    __slots__ = ("_aead", "_n")

    def __init__(self, key: bytes, nonce: int = 0) -> None:
        if len(key) != KEY_LEN:
            raise ValueError("CipherState key must be 32 bytes")
        if not 0 <= nonce <= MAX_NONCE:
            raise ValueError("CipherState nonce must be a u64")
        self._aead = AESGCM(bytes(key))
        self._n = nonce

    def __repr__(self) -> str:
        return f"CipherState(key=<redacted>, nonce={self._n})"

    __str__ = __repr__

    def __reduce__(self) -> NoReturn:
        raise TypeError("CipherState cannot be pickled")

    @property
    def nonce(self) -> int:
        return self._n

    def _check_nonce(self) -> None:
        if self._n >= MAX_NONCE:
            raise NonceExhaustedError("Noise nonce exhausted")

    def encrypt_with_ad(self, ad: bytes, plaintext: bytes) -> bytes:
        self._check_nonce()
        ciphertext = self._aead.encrypt(_nonce_bytes(self._n), plaintext, ad)
        self._n += 1
        return ciphertext

    def decrypt_with_ad(self, ad: bytes, ciphertext: bytes) -> bytes:
        self._check_nonce()
        try:
            plaintext = self._aead.decrypt(_nonce_bytes(self._n), ciphertext, ad)
        except InvalidTag:
            raise NoiseDecryptError(
                f"Noise decrypt failed at nonce {self._n} "
                "(tampered, replayed, reordered, or wrong key)"
            ) from None
        self._n += 1
        return plaintext


class NoiseTransport:
    """Post-handshake record protection for one stream (codex ``NoiseTransport``).

    ``encrypt`` produces one transport record for at most 60 KiB of plaintext. ``decrypt``
    must receive records strictly in the order they were produced. After any decrypt failure
    the transport refuses further use (Noise errors are fatal for the stream).
    """

    __slots__ = ("_failed", "_recv", "_send")

    def __init__(self, send: CipherState, recv: CipherState) -> None:
        self._send = send
        self._recv = recv
        self._failed = False

    def __repr__(self) -> str:
        return (
            f"NoiseTransport(send_nonce={self._send.nonce}, recv_nonce={self._recv.nonce}, "
            f"failed={self._failed})"
        )

    __str__ = __repr__

    def __reduce__(self) -> NoReturn:
        raise TypeError("NoiseTransport cannot be pickled")

    @property
    def failed(self) -> bool:
        return self._failed

    @property
    def send_nonce(self) -> int:
        return self._send.nonce

    @property
    def recv_nonce(self) -> int:
        return self._recv.nonce

    def encrypt(self, plaintext: bytes) -> bytes:
        if self._failed:
            raise RecordError("Noise transport already failed")
        if len(plaintext) > MAX_RECORD_PLAINTEXT_LEN:
            raise RecordError("transport plaintext is too large")
        return self._send.encrypt_with_ad(b"", plaintext)

    def decrypt(self, ciphertext: bytes) -> bytes:
        if self._failed:
            raise RecordError("Noise transport already failed")
        if len(ciphertext) < TAG_LEN:
            raise RecordError("transport ciphertext is too short")
        if len(ciphertext) > MAX_NOISE_MESSAGE_LEN:
            raise RecordError("transport ciphertext is too large")
        try:
            plaintext = self._recv.decrypt_with_ad(b"", ciphertext)
        except NoiseError:
            self._failed = True
            raise
        if len(plaintext) > MAX_RECORD_PLAINTEXT_LEN:
            self._failed = True
            raise RecordError("transport plaintext record exceeds maximum length")
        return plaintext
