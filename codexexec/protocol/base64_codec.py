"""Standard padded base64, the encoding of every byte field on the wire.

Decoding is strict, and a refusal reads like Codex's (the Rust base64 crate's words),
so every method that takes base64 (process/write, fs/writeFile, http/request) reports
bad input the same way.
"""

from __future__ import annotations

import binascii

_ALPHABET = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/")


class Base64Error(ValueError):
    """Text that is not standard padded base64; ``str()`` is Codex's message."""


def encode_base64(data: bytes) -> str:
    return binascii.b2a_base64(data, newline=False).decode("ascii")


def decode_base64(text: str) -> bytes:
    try:
        return binascii.a2b_base64(text, strict_mode=True)
    except (binascii.Error, ValueError):
        raise Base64Error(_error_text(text)) from None


def _error_text(text: str) -> str:
    data = text.encode("utf-8", "surrogatepass")
    body = data.rstrip(b"=")
    for offset, byte in enumerate(body):
        if byte not in _ALPHABET:
            return f"Invalid symbol {byte}, offset {offset}."
    return "Invalid padding"
