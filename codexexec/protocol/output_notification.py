"""`process/output`, the one message that carries bulk bytes, written and read by hand.

Its layout is fixed by the server (``encode``), so a reader can take it apart with a few
searches and decode the base64 straight from the received bytes (``decode``), instead of
JSON-decoding megabytes of string and then base64-decoding that (issue #17: this was most
of the local output path's time). ``decode`` accepts only the exact layout ``encode`` writes
(ids without escapes, a well-formed base64 chunk); anything else — another server's field
order, an escaped id — returns None and takes the general JSON path, so nothing is lost.
"""

from __future__ import annotations

import binascii

import msgspec
import pybase64

from codexexec.protocol.base64_codec import base64_bytes

_PREFIX = b'{"method":"process/output","params":{"processId":'
_SEQ = b',"seq":'
_STREAM = b',"stream":"'
_CHUNK = b'","chunk":"'
_SUFFIX = b'"}}'


class OutputMessage(msgspec.Struct, frozen=True):
    """One `process/output` before it is written: an in-process peer takes it as it is (the
    embedded `local` environment: no base64, no JSON between two halves of one process);
    any other transport gets ``encode()``'s bytes."""

    process_id: str
    quoted_id: bytes  # the same as a JSON string, quotes included (encoded once per process)
    seq: int
    stream: str
    data: bytes

    def encode(self) -> bytes:
        return encode(self.quoted_id, self.seq, self.stream, self.data)

    def __len__(self) -> int:
        """About what its encoding takes (for flow control, counted in bytes)."""
        return len(self.data) * 4 // 3 + 100


def encode(quoted_id: bytes, seq: int, stream: str, data: bytes | memoryview) -> bytes:
    """``quoted_id``: the process id as a JSON string (with its quotes), encoded once."""
    return b"".join(
        (
            _PREFIX,
            quoted_id,
            _SEQ,
            str(seq).encode(),
            _STREAM,
            stream.encode(),
            _CHUNK,
            base64_bytes(data),
            _SUFFIX,
        )
    )


def decode(raw: bytes) -> tuple[str, int, str, bytes] | None:
    """(process id, seq, stream, data) of a message in ``encode``'s layout, else None."""
    if not raw.startswith(_PREFIX) or not raw.endswith(_SUFFIX):
        return None
    start = len(_PREFIX)
    if raw[start : start + 1] != b'"':
        return None
    id_end = raw.find(b'"', start + 1)
    seq_start = id_end + 1 + len(_SEQ)
    if id_end < 0 or raw[id_end + 1 : seq_start] != _SEQ:
        return None
    stream_at = raw.find(_STREAM, seq_start, seq_start + 24)
    if stream_at < 0:
        return None
    chunk_at = raw.find(_CHUNK, stream_at, stream_at + 64)
    if chunk_at < 0:
        return None
    process_id = raw[start + 1 : id_end]
    seq = raw[seq_start:stream_at]
    stream = raw[stream_at + len(_STREAM) : chunk_at]
    if b"\\" in process_id or not seq.isdigit() or not stream.isalpha():
        return None
    try:
        text = process_id.decode()
        data = pybase64.b64decode(
            memoryview(raw)[chunk_at + len(_CHUNK) : len(raw) - len(_SUFFIX)], validate=True
        )
    except (UnicodeDecodeError, binascii.Error, ValueError):
        return None
    return text, int(seq), stream.decode(), data
