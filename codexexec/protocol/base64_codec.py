"""Standard padded base64, the encoding of every byte field on the wire.

Decoding is strict, and a refusal reads like Codex's (the Rust base64 crate's words),
so every method that takes base64 (process/write, fs/writeFile, http/request) reports
bad input the same way.
"""

from __future__ import annotations

import binascii

import msgspec
import pybase64

from codexexec.protocol.errors import ProtocolError

_ALPHABET = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/")


class Base64Error(ProtocolError, ValueError):
    """Text that is not standard padded base64; ``str()`` is Codex's message."""


# Every byte field of the output and file paths goes through these. pybase64's SIMD codec
# is ~20x binascii's and ~10x msgspec's built-in bytes encoding on this machine.
def base64_bytes(data: bytes | bytearray | memoryview) -> bytes:
    """The base64 text as ASCII bytes, for messages built by hand."""
    return pybase64.b64encode(data)


def base64_json(data: bytes | bytearray | memoryview) -> msgspec.Raw:
    """A JSON string of the base64 text, written verbatim by the encoder (no re-scan)."""
    return msgspec.Raw(b'"' + pybase64.b64encode(data) + b'"')


def encode_base64(data: bytes | bytearray | memoryview) -> str:
    return pybase64.b64encode_as_string(data)


def decode_base64(text: str) -> bytes:
    length = len(text)
    if length % 4 == 0:
        padding = text.find("=")
        # Well-formed text (padding only in the last one or two places) takes the fast path;
        # anything else gets the strict decoder and its Codex-worded refusal.
        if padding == -1 or (padding >= length - 2 and text[-1] == "="):
            try:
                return pybase64.b64decode(text, validate=True)
            except (binascii.Error, ValueError):
                pass
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
