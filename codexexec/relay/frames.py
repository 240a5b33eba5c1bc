"""Relay frames on the websocket: build, encode, decode and validate ``RelayMessageFrame``.

One websocket binary message carries exactly one ``codex.exec_server.relay.v1.RelayMessageFrame``
(schema: proto/codex/exec_server/relay/v1/relay.proto). The rules follow what Codex 0.169.0 does
(docs/relay-protocol.md §3):

* ``decode`` turns untrusted bytes into a frame or raises ``FrameError``; no other exception
  escapes, whatever the input.
* ``validate`` applies Codex's per-frame checks and returns a ``FrameError`` (it does not raise).
  ``strict=True`` (the default) adds the checks codexexec applies to its own peers on top of
  0.169.0's: a canonical stream id of at most 128 bytes and a reset reason of at most 256 bytes.
  Frames that Codex 0.169.0 itself sends always pass the strict checks.
* ``encode_data``/``encode_reset`` are the allocation-light send paths: they write the frame bytes
  directly (one join) from a per-stream header built once by ``stream_header``. They produce the
  same bytes as ``encode`` of the equivalent message (fields in field-number order, proto3 defaults
  omitted), which is the layout Codex emits.

Where codexexec's decoder is stricter than Codex's (prost): a varint in a known ``uint32`` field
that does not fit in 32 bits is rejected (prost silently truncates it). Like prost, a known field
carrying the wrong wire type is rejected, and unknown fields are skipped (newer Codex revisions
added fields, e.g. the trace context, that older peers must ignore).
"""

from __future__ import annotations

import enum
from typing import Final, Literal, cast

from google.protobuf.message import DecodeError

from codexexec.relay.errors import RelayError
from codexexec.relay.limits import (
    MAX_RESET_REASON_BYTES,
    MAX_SEQ,
    MAX_STREAM_ID_BYTES,
    MAX_WEBSOCKET_MESSAGE_BYTES,
    RELAY_FRAME_VERSION,
    RESET_REASON,
)
from codexexec.relay.proto.relay_pb2 import RelayMessageFrame

__all__ = [
    "BodyKind",
    "FrameError",
    "FrameErrorKind",
    "RelayMessageFrame",
    "ack_frame",
    "body_kind",
    "data_fields",
    "data_frame",
    "data_stream_id",
    "decode",
    "encode",
    "encode_data",
    "encode_reset",
    "handshake_frame",
    "heartbeat_frame",
    "parse",
    "reset_frame",
    "resume_frame",
    "stream_header",
    "validate",
]

BodyKind = Literal["data", "ack_frame", "resume", "reset", "heartbeat", "handshake"]


class FrameErrorKind(enum.Enum):
    """Why a websocket message is not an acceptable relay frame."""

    NOT_BINARY = "not_binary"
    TOO_LARGE = "too_large"
    MALFORMED = "malformed"
    UNSUPPORTED_VERSION = "unsupported_version"
    MISSING_STREAM_ID = "missing_stream_id"
    STREAM_ID_NOT_CANONICAL = "stream_id_not_canonical"
    STREAM_ID_TOO_LONG = "stream_id_too_long"
    MISSING_BODY = "missing_body"
    INVALID_DATA = "invalid_data"
    INVALID_RESET = "invalid_reset"
    RESET_REASON_TOO_LONG = "reset_reason_too_long"
    INVALID_HANDSHAKE = "invalid_handshake"


class FrameError(RelayError):
    """A websocket message that is not an acceptable relay frame.

    The receiver logs and drops such a message and keeps the socket (Codex 0.169.0 behaviour,
    docs/relay-protocol.md §3.3). ``message`` uses Codex's wording where Codex has one.
    """

    def __init__(self, kind: FrameErrorKind, message: str) -> None:
        super().__init__(message)
        self.kind = kind
        self.message = message

    def __repr__(self) -> str:
        return f"FrameError({self.kind.name}, {self.message!r})"


# -- building frames -------------------------------------------------------------------------


def data_frame(
    stream_id: str,
    seq: int,
    payload: bytes,
    *,
    traceparent: str | None = None,
    tracestate: str | None = None,
) -> RelayMessageFrame:
    """A Data frame: ``segment_index`` 0, ``segment_count`` 1 (relay segmentation is unused)."""
    frame = RelayMessageFrame(version=RELAY_FRAME_VERSION, stream_id=stream_id)
    data = frame.data
    data.seq = seq
    data.segment_count = 1
    data.payload = payload
    if traceparent is not None:
        frame.traceparent = traceparent
    if tracestate is not None:
        frame.tracestate = tracestate
    return frame


def handshake_frame(stream_id: str, payload: bytes) -> RelayMessageFrame:
    """A Handshake frame carrying one Noise handshake message."""
    frame = RelayMessageFrame(version=RELAY_FRAME_VERSION, stream_id=stream_id)
    frame.handshake.payload = payload
    return frame


def resume_frame(stream_id: str, next_seq: int = 0) -> RelayMessageFrame:
    """A Resume frame; with ``next_seq`` 0 it is the empty submessage ``3a 00`` on the wire."""
    frame = RelayMessageFrame(version=RELAY_FRAME_VERSION, stream_id=stream_id)
    frame.resume.SetInParent()  # presence matters even when next_seq is the default 0
    frame.resume.next_seq = next_seq
    return frame


def reset_frame(stream_id: str, reason: str = RESET_REASON) -> RelayMessageFrame:
    """A Reset frame; codexexec always sends Codex's one generic reason."""
    frame = RelayMessageFrame(version=RELAY_FRAME_VERSION, stream_id=stream_id)
    frame.reset.reason = reason
    return frame


def ack_frame(stream_id: str, *, ack: int = 0, ack_bits: int = 0) -> RelayMessageFrame:
    """An explicit Ack frame (never sent by Codex 0.169.0, which also ignores received ones)."""
    frame = RelayMessageFrame(
        version=RELAY_FRAME_VERSION, stream_id=stream_id, ack=ack, ack_bits=ack_bits
    )
    frame.ack_frame.SetInParent()
    return frame


def heartbeat_frame(stream_id: str, *, ack: int = 0, ack_bits: int = 0) -> RelayMessageFrame:
    """A relay Heartbeat frame (never sent by Codex 0.169.0; received ones are ignored)."""
    frame = RelayMessageFrame(
        version=RELAY_FRAME_VERSION, stream_id=stream_id, ack=ack, ack_bits=ack_bits
    )
    frame.heartbeat.SetInParent()
    return frame


def body_kind(frame: RelayMessageFrame) -> BodyKind | None:
    """Which member of the ``body`` oneof is set, or None."""
    return cast("BodyKind | None", frame.WhichOneof("body"))


# -- encoding --------------------------------------------------------------------------------


def encode(frame: RelayMessageFrame) -> bytes:
    """Serialize any frame (fields in field-number order, as Codex emits them)."""
    out: bytes = frame.SerializeToString()
    return out


_SMALL_VARINTS: Final = tuple(bytes((value,)) for value in range(0x80))

# Fixed pieces of the hand-written encodings (tag bytes: field << 3 | wire type).
_VERSION_1_STREAM_ID_TAG: Final = b"\x08\x01\x12"  # version=1, then stream_id (field 2, LEN)
_DATA_TAG: Final = b"\x2a"  # field 5 (data), LEN
_SEQ_TAG: Final = b"\x08"  # RelayData.seq, varint
_SEGMENT_COUNT_1_PAYLOAD_TAG: Final = b"\x18\x01\x22"  # segment_count=1, then payload (field 4)
_RESET_TAG: Final = b"\x42"  # field 8 (reset), LEN
_REASON_TAG: Final = b"\x0a"  # RelayReset.reason, LEN
_TRACEPARENT_TAG: Final = b"\x5a"  # field 11, LEN
_TRACESTATE_TAG: Final = b"\x62"  # field 12, LEN


def _varint(value: int) -> bytes:
    if value < 0x80:
        return _SMALL_VARINTS[value]
    out = bytearray()
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def stream_header(stream_id: str) -> bytes:
    """The leading bytes every frame of ``stream_id`` shares (version 1 and the stream id).

    Build it once per stream and pass it to ``encode_data``/``encode_reset``.
    """
    raw = stream_id.encode("utf-8")
    return b"".join((_VERSION_1_STREAM_ID_TAG, _varint(len(raw)), raw))


def encode_data(
    header: bytes,
    seq: int,
    payload: bytes | bytearray | memoryview,
    *,
    traceparent: str | None = None,
    tracestate: str | None = None,
) -> bytes:
    """Encode a Data frame directly: the bytes of ``encode(data_frame(...))`` in one join.

    ``header`` comes from ``stream_header``. Raises ValueError for a seq outside uint32, an
    empty payload (Codex rejects it), or a frame over the 256 KiB websocket message cap.
    """
    if not 0 <= seq <= MAX_SEQ:
        raise ValueError(f"relay seq {seq} is outside 0..{MAX_SEQ}")
    size = len(payload)
    if size == 0:
        raise ValueError("relay data payload must not be empty")
    size_prefix = _varint(size)
    parts: list[bytes | bytearray | memoryview]
    if seq:
        seq_bytes = _varint(seq)
        inner_len = 1 + len(seq_bytes) + 3 + len(size_prefix) + size
        parts = [header, _DATA_TAG, _varint(inner_len), _SEQ_TAG, seq_bytes]
    else:  # seq 0 is the proto3 default and is not written
        inner_len = 3 + len(size_prefix) + size
        parts = [header, _DATA_TAG, _varint(inner_len)]
    parts += (_SEGMENT_COUNT_1_PAYLOAD_TAG, size_prefix, payload)
    if traceparent is not None:
        raw = traceparent.encode("utf-8")
        parts += (_TRACEPARENT_TAG, _varint(len(raw)), raw)
    if tracestate is not None:
        raw = tracestate.encode("utf-8")
        parts += (_TRACESTATE_TAG, _varint(len(raw)), raw)
    out = b"".join(parts)
    if len(out) > MAX_WEBSOCKET_MESSAGE_BYTES:
        raise ValueError(
            f"relay frame of {len(out)} bytes exceeds {MAX_WEBSOCKET_MESSAGE_BYTES} bytes"
        )
    return out


def encode_reset(header: bytes, reason: str = RESET_REASON) -> bytes:
    """Encode a Reset frame directly: the bytes of ``encode(reset_frame(...))``."""
    raw = reason.encode("utf-8")
    if not raw:
        raise ValueError("relay reset reason must not be empty")
    inner = b"".join((_REASON_TAG, _varint(len(raw)), raw))
    return b"".join((header, _RESET_TAG, _varint(len(inner)), inner))


# -- decoding --------------------------------------------------------------------------------

# Wire types.
_VARINT: Final = 0
_I64: Final = 1
_LEN: Final = 2
_SGROUP: Final = 3
_EGROUP: Final = 4
_I32: Final = 5

_MAX_TAG: Final = 0xFFFF_FFFF  # field numbers stop at 2**29 - 1
_MAX_DEPTH: Final = 100  # nesting limit for skipped groups, as prost's and upb's recursion limit


class _Schema:
    """The known fields of one message, keyed by the exact tag (field << 3 | wire type) they
    must arrive with: a submessage schema for a nested message, else None (a uint32 varint or a
    string/bytes blob)."""

    __slots__ = ("known_fields", "tags")

    def __init__(
        self,
        u32: tuple[int, ...] = (),
        blobs: tuple[int, ...] = (),
        messages: dict[int, _Schema] | None = None,
    ) -> None:
        tags: dict[int, _Schema | None] = {}
        tags.update((field << 3 | _VARINT, None) for field in u32)
        tags.update((field << 3 | _LEN, None) for field in blobs)
        tags.update((field << 3 | _LEN, sub) for field, sub in (messages or {}).items())
        self.tags = tags
        self.known_fields = frozenset(tag >> 3 for tag in tags)


_EMPTY: Final = _Schema()
_FRAME_SCHEMA: Final = _Schema(
    u32=(1, 3, 4),  # version, ack, ack_bits
    blobs=(2, 11, 12),  # stream_id, traceparent, tracestate
    messages={
        5: _Schema(u32=(1, 2, 3), blobs=(4,)),  # data: seq, segment_index, segment_count, payload
        6: _EMPTY,  # ack_frame
        7: _Schema(u32=(1,)),  # resume: next_seq
        8: _Schema(blobs=(1,)),  # reset: reason
        9: _EMPTY,  # heartbeat
        10: _Schema(blobs=(1,)),  # handshake: payload
    },
)
_UNKNOWN: Final = _Schema()  # sentinel: the tag is not a known field with its wire type


def _malformed(detail: str) -> FrameError:
    return FrameError(FrameErrorKind.MALFORMED, f"invalid relay message frame: {detail}")


def _read_varint(buf: bytes | memoryview, pos: int, end: int) -> tuple[int, int]:
    if pos < end:
        first = buf[pos]
        if first < 0x80:
            return first, pos + 1
    value = 0
    shift = 0
    while True:
        if pos >= end:
            raise _malformed("truncated varint")
        byte = buf[pos]
        pos += 1
        if shift == 63 and byte > 1:
            raise _malformed("invalid varint")
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, pos
        shift += 7


def _skip_field(buf: bytes, pos: int, end: int, tag: int, depth: int) -> int:
    wire_type = tag & 7
    if wire_type == _VARINT:
        return _read_varint(buf, pos, end)[1]
    if wire_type == _LEN:
        size, pos = _read_varint(buf, pos, end)
        stop = pos + size
    elif wire_type == _I64:
        stop = pos + 8
    elif wire_type == _I32:
        stop = pos + 4
    elif wire_type == _SGROUP:
        if depth >= _MAX_DEPTH:
            raise _malformed("recursion limit reached")
        while True:
            if pos >= end:
                raise _malformed("unterminated group")
            inner, pos = _read_varint(buf, pos, end)
            if inner > _MAX_TAG or inner >> 3 == 0:
                raise _malformed("invalid tag")
            if inner & 7 == _EGROUP:
                if inner >> 3 != tag >> 3:
                    raise _malformed("unexpected end group tag")
                return pos
            pos = _skip_field(buf, pos, end, inner, depth + 1)
    elif wire_type == _EGROUP:
        raise _malformed("unexpected end group tag")
    else:
        raise _malformed(f"invalid wire type value: {wire_type}")
    if stop > end:
        raise _malformed("buffer underflow")
    return stop


def _check_wire(buf: bytes, pos: int, end: int, schema: _Schema, depth: int) -> None:
    """Walk one message without copying: tags, wire types of known fields, uint32 ranges."""
    tags = schema.tags
    while pos < end:
        tag, pos = _read_varint(buf, pos, end)
        sub = tags.get(tag, _UNKNOWN)
        if sub is _UNKNOWN:
            field = tag >> 3
            if tag > _MAX_TAG or field == 0:
                raise _malformed("invalid tag")
            if field in schema.known_fields:
                raise _malformed(f"invalid wire type for field {field}")
            pos = _skip_field(buf, pos, end, tag, depth)
        elif tag & 7 == _VARINT:
            value, pos = _read_varint(buf, pos, end)
            if value > MAX_SEQ:
                raise _malformed(f"uint32 field {tag >> 3} out of range")
        else:
            size, pos = _read_varint(buf, pos, end)
            stop = pos + size
            if stop > end:
                raise _malformed("buffer underflow")
            if sub is not None:
                _check_wire(buf, pos, stop, sub, depth + 1)
            pos = stop


def decode(message: bytes | bytearray | memoryview | str) -> RelayMessageFrame:
    """Decode one websocket message into a frame; raises only ``FrameError``.

    A text message (``str``) is refused like Codex refuses it ("binary protobuf frames" only),
    and so is a message over 256 KiB. The frame is not validated: see ``validate``/``parse``.
    """
    if isinstance(message, str):
        raise FrameError(
            FrameErrorKind.NOT_BINARY, "relay transport expects binary protobuf frames"
        )
    if not isinstance(message, bytes):
        message = bytes(message)
    if len(message) > MAX_WEBSOCKET_MESSAGE_BYTES:
        raise FrameError(
            FrameErrorKind.TOO_LARGE,
            f"relay message of {len(message)} bytes exceeds {MAX_WEBSOCKET_MESSAGE_BYTES} bytes",
        )
    _check_wire(message, 0, len(message), _FRAME_SCHEMA, 0)
    try:
        frame: RelayMessageFrame = RelayMessageFrame.FromString(message)
    except DecodeError as exc:  # e.g. a string field that is not UTF-8
        raise _malformed(str(exc) or "failed to decode Protobuf message") from None
    except Exception as exc:  # untrusted input: nothing but FrameError may escape
        raise _malformed(f"{type(exc).__name__}: {exc}") from None
    return frame


# Rust's str::trim() strips Unicode White_Space, which differs from Python's str.strip()
# (Python also strips U+001C..U+001F). Codex's blank/canonical checks use Rust's set.
_RUST_WHITESPACE: Final = (
    "\t\n\x0b\x0c\r \x85\xa0\u1680"
    "\u2000\u2001\u2002\u2003\u2004\u2005\u2006\u2007\u2008\u2009\u200a"
    "\u2028\u2029\u202f\u205f\u3000"
)


def validate(frame: RelayMessageFrame, *, strict: bool = True) -> FrameError | None:
    """Codex's per-frame checks; returns the first failure, or None for an acceptable frame.

    Always (Codex 0.169.0): version 1; a stream id that is not blank; a body; Data with
    ``segment_index`` 0, ``segment_count`` 1 and a non-empty payload; Reset with a non-empty
    reason; Handshake with a non-empty payload. Ack/Resume/Heartbeat bodies are accepted as is.

    ``strict`` (codexexec's peers; Codex 0.169.0 does not check these, its PR-branch revisions
    did): the stream id has no surrounding whitespace and is at most 128 UTF-8 bytes, and a reset
    reason is at most 256 UTF-8 bytes.
    """
    version = frame.version
    if version != RELAY_FRAME_VERSION:
        return FrameError(
            FrameErrorKind.UNSUPPORTED_VERSION, f"unsupported relay message frame version {version}"
        )
    stream_id = frame.stream_id
    trimmed = stream_id.strip(_RUST_WHITESPACE)
    if not trimmed:
        return FrameError(
            FrameErrorKind.MISSING_STREAM_ID, "relay message frame is missing stream_id"
        )
    if strict:
        if len(trimmed) != len(stream_id):
            return FrameError(
                FrameErrorKind.STREAM_ID_NOT_CANONICAL,
                "relay message frame stream_id is not canonical",
            )
        # UTF-8 takes at least one byte per code point: only long ids need the encode.
        if len(stream_id) > MAX_STREAM_ID_BYTES // 4 and (
            len(stream_id.encode("utf-8")) > MAX_STREAM_ID_BYTES
        ):
            return FrameError(
                FrameErrorKind.STREAM_ID_TOO_LONG,
                f"relay message frame stream_id exceeds {MAX_STREAM_ID_BYTES} bytes",
            )
    kind = frame.WhichOneof("body")
    if kind is None:
        return FrameError(FrameErrorKind.MISSING_BODY, "relay message frame is missing body")
    if kind == "data":
        data = frame.data
        if data.segment_index != 0 or data.segment_count != 1 or not data.payload:
            return FrameError(
                FrameErrorKind.INVALID_DATA, "relay data message frame is missing required fields"
            )
    elif kind == "reset":
        reason = frame.reset.reason
        if not reason:
            return FrameError(
                FrameErrorKind.INVALID_RESET, "relay reset message frame is missing reason"
            )
        if (
            strict
            and len(reason) > MAX_RESET_REASON_BYTES // 4
            and len(reason.encode("utf-8")) > MAX_RESET_REASON_BYTES
        ):
            return FrameError(
                FrameErrorKind.RESET_REASON_TOO_LONG,
                f"relay reset message frame reason exceeds {MAX_RESET_REASON_BYTES} bytes",
            )
    elif kind == "handshake" and not frame.handshake.payload:
        return FrameError(
            FrameErrorKind.INVALID_HANDSHAKE, "relay handshake message frame is missing payload"
        )
    return None


_DATA_LEAD: Final = b"\x08\x01\x12"  # version 1, then the stream id
_DATA_BODY_TAG: Final = 0x2A  # field 5 (data), LEN
_DATA_SEQ_TAG: Final = 0x08
_MAX_LENGTH_VARINT: Final = 5


def data_fields(message: bytes) -> tuple[str, int, bytes] | None:
    """A Data frame's stream id, seq and payload, read straight from the bytes; None when
    ``message`` is anything else or laid out otherwise, for ``parse`` to decide.

    The relay's hot path (every process a frame crosses reads one): a walk over a few
    bytes instead of a protobuf decode. It takes only the layout ``encode_data`` writes,
    which is Codex's (version 1, the stream id, the data body and nothing after it), and
    only frames ``parse`` would accept even with ``strict``, so both give the same answer.
    """
    layout = _data_layout(message)
    if layout is None:
        return None
    stream_id, seq, payload_at = layout
    return stream_id, seq, message[payload_at:]


def data_stream_id(message: bytes | memoryview) -> str | None:
    """``data_fields``'s stream id alone, what a relay routes by: the payload is not copied."""
    layout = _data_layout(message)
    return None if layout is None else layout[0]


def _data_layout(message: bytes | memoryview) -> tuple[str, int, int] | None:
    """Stream id, seq and where the payload starts, for ``data_fields``."""
    end = len(message)
    if end > MAX_WEBSOCKET_MESSAGE_BYTES or message[:3] != _DATA_LEAD:
        return None
    try:
        id_len, id_start = _read_varint(message, 3, end)
        id_end = id_start + id_len
        if id_len > MAX_STREAM_ID_BYTES or id_end >= end or message[id_end] != _DATA_BODY_TAG:
            return None
        body_len, pos = _read_varint(message, id_end + 1, end)
        if body_len == 0 or pos + body_len != end:
            return None
        body_start = pos
        seq = 0
        if message[pos] == _DATA_SEQ_TAG:
            seq, pos = _read_varint(message, pos + 1, end)
            if seq > MAX_SEQ:
                return None
        if message[pos : pos + 3] != _SEGMENT_COUNT_1_PAYLOAD_TAG:
            return None
        size_at = pos + 3
        size, pos = _read_varint(message, size_at, end)
        if size == 0 or pos + size != end:
            return None
        # upb refuses a length written in more than 5 bytes (padded varints): so does this.
        if max(id_start - 3, body_start - id_end - 1, pos - size_at) > _MAX_LENGTH_VARINT:
            return None
        stream_id = str(message[id_start:id_end], "utf-8")
    except (FrameError, UnicodeDecodeError):
        return None
    trimmed = stream_id.strip(_RUST_WHITESPACE)
    if not trimmed or len(trimmed) != len(stream_id):
        return None
    return stream_id, seq, pos


def parse(
    message: bytes | bytearray | memoryview | str, *, strict: bool = True
) -> RelayMessageFrame:
    """``decode`` then ``validate``: an acceptable frame, or ``FrameError`` raised."""
    frame = decode(message)
    error = validate(frame, strict=strict)
    if error is not None:
        raise error
    return frame
