"""Whole JSON-RPC messages over a relay stream: 4-byte big-endian length + message,
cut into records of at most 60 KiB, one record per Data frame; messages sent together share
records (docs/relay-protocol.md §3.2).

The same framing the Noise data plane uses (docs/relay-protocol.md §3.2), so a message of any
size up to 64 MiB crosses a relay whose websocket messages are capped at 256 KiB.
"""

from __future__ import annotations

import struct

from codexexec.relay.errors import RelayError

RECORD_BYTES = 60 * 1024
MAX_MESSAGE_BYTES = 64 * 1024 * 1024


class FramingError(RelayError, ValueError):
    """The record stream is corrupt; the stream must be reset."""


def records(messages: list[bytes]) -> list[bytes]:
    """The records that carry ``messages`` in order. Messages sent together share records
    (a receiver accepts any record boundaries), so two small ones cost one frame."""
    parts: list[bytes] = []
    for message in messages:
        if not 0 < len(message) <= MAX_MESSAGE_BYTES:
            raise FramingError(f"message of {len(message)} bytes is outside 1..{MAX_MESSAGE_BYTES}")
        parts += (struct.pack(">I", len(message)), message)
    data = b"".join(parts)
    return [data[i : i + RECORD_BYTES] for i in range(0, len(data), RECORD_BYTES)]


class MessageAssembler:
    """Turns records back into messages; holds at most one partial message."""

    def __init__(self) -> None:
        self._buffer = bytearray()

    def feed(self, record: bytes) -> list[bytes]:
        if len(record) > RECORD_BYTES:
            raise FramingError(f"record of {len(record)} bytes exceeds {RECORD_BYTES}")
        self._buffer += record
        messages = []
        while len(self._buffer) >= 4:
            (length,) = struct.unpack_from(">I", self._buffer)
            if not 0 < length <= MAX_MESSAGE_BYTES:
                raise FramingError(f"message length {length} is outside 1..{MAX_MESSAGE_BYTES}")
            if len(self._buffer) < 4 + length:
                break
            messages.append(bytes(self._buffer[4 : 4 + length]))
            del self._buffer[: 4 + length]
        return messages
