"""Relay frames: schema, generated code, byte layout, validation, and untrusted-input safety."""

from __future__ import annotations

import contextlib
import importlib.util
import os
import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from google.protobuf import descriptor_pb2
from google.protobuf.message import Message
from hypothesis import given, settings
from hypothesis import strategies as st

from codexexec.relay import frames as f
from codexexec.relay.frames import FrameError, FrameErrorKind, RelayMessageFrame
from codexexec.relay.framing import RECORD_BYTES, FramingError, MessageAssembler, records
from codexexec.relay.limits import MAX_SEQ, MAX_WEBSOCKET_MESSAGE_BYTES, RESET_REASON
from codexexec.relay.proto import relay_pb2
from codexexec.relay.streams import Reset

ROOT = Path(__file__).resolve().parent.parent
PROTO = ROOT / "proto" / "codex" / "exec_server" / "relay" / "v1" / "relay.proto"
GENERATED = ROOT / "codexexec" / "relay" / "proto"

# The stream id of the handshake in verified-codex-0.169.md §1.3; any 36-byte UUID fits the
# `12 24 <sid>` layout of §3.1.
SID = "4123a380-dacb-4371-a5a3-22bd0478a927"
SID_BYTES = SID.encode()
HEAD = bytes.fromhex("0801") + bytes.fromhex("1224") + SID_BYTES


def hx(text: str) -> bytes:
    return bytes.fromhex(text.replace(" ", "").replace("|", ""))


# -- generated code ------------------------------------------------------------------------


def _regenerate(out: Path) -> None:
    if importlib.util.find_spec("grpc_tools") is None:
        pytest.skip("grpc_tools is not installed (pip install -e '.[test]'): cannot run protoc")
    env = dict(os.environ, PYTHON=sys.executable)
    subprocess.run(
        ["bash", str(ROOT / "scripts" / "gen-proto.sh"), str(out)],
        check=True,
        env=env,
        capture_output=True,
    )


def _gencode_version(text: str) -> str:
    match = re.search(r"^# Protobuf Python Version: (\S+)$", text, re.M)
    assert match, "generated module lacks its protobuf version header"
    return match.group(1)


def test_committed_generated_code_matches_the_proto(tmp_path: Path) -> None:
    """scripts/gen-proto.sh reproduces the committed relay_pb2.py/.pyi byte for byte."""
    _regenerate(tmp_path)
    fresh = (tmp_path / "relay_pb2.py").read_text()
    committed = (GENERATED / "relay_pb2.py").read_text()
    if _gencode_version(fresh) != _gencode_version(committed):
        pytest.skip(
            f"installed protoc generates for protobuf {_gencode_version(fresh)}, the committed "
            f"files are for {_gencode_version(committed)}; the schema itself is compared by "
            "test_committed_descriptor_matches_the_proto"
        )
    assert fresh == committed, "relay_pb2.py is stale: run scripts/gen-proto.sh"
    assert (tmp_path / "relay_pb2.pyi").read_text() == (GENERATED / "relay_pb2.pyi").read_text(), (
        "relay_pb2.pyi is stale: run scripts/gen-proto.sh"
    )


def test_committed_descriptor_matches_the_proto(tmp_path: Path) -> None:
    """Whatever protoc version is installed, the committed schema equals relay.proto's."""
    if importlib.util.find_spec("grpc_tools") is None:
        pytest.skip("grpc_tools is not installed (pip install -e '.[test]'): cannot run protoc")
    out = tmp_path / "relay.desc"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "grpc_tools.protoc",
            f"-I{ROOT / 'proto'}",
            f"--descriptor_set_out={out}",
            "codex/exec_server/relay/v1/relay.proto",
        ],
        check=True,
        capture_output=True,
    )
    fresh = descriptor_pb2.FileDescriptorSet.FromString(out.read_bytes()).file[0]
    for message in fresh.message_type:  # the embedded descriptor omits derived json names
        for field in message.field:
            field.ClearField("json_name")
    committed = descriptor_pb2.FileDescriptorProto.FromString(relay_pb2.DESCRIPTOR.serialized_pb)
    assert fresh == committed, "codexexec/relay/proto is stale: run scripts/gen-proto.sh"


def test_generated_classes_live_in_the_codexexec_package() -> None:
    assert RelayMessageFrame.__module__ == "codexexec.relay.proto.relay_pb2"
    assert RelayMessageFrame.DESCRIPTOR.full_name == "codex.exec_server.relay.v1.RelayMessageFrame"


def test_schema_field_numbers_match_codex() -> None:
    def numbers(message: type[Message]) -> dict[str, int]:
        return {field.name: field.number for field in message.DESCRIPTOR.fields}

    assert numbers(relay_pb2.RelayMessageFrame) == {
        "version": 1,
        "stream_id": 2,
        "ack": 3,
        "ack_bits": 4,
        "data": 5,
        "ack_frame": 6,
        "resume": 7,
        "reset": 8,
        "heartbeat": 9,
        "handshake": 10,
        "traceparent": 11,
        "tracestate": 12,
    }
    body = relay_pb2.RelayMessageFrame.DESCRIPTOR.oneofs_by_name["body"]
    assert [field.name for field in body.fields] == [
        "data",
        "ack_frame",
        "resume",
        "reset",
        "heartbeat",
        "handshake",
    ]
    assert numbers(relay_pb2.RelayData) == {
        "seq": 1,
        "segment_index": 2,
        "segment_count": 3,
        "payload": 4,
    }
    assert numbers(relay_pb2.RelayResume) == {"next_seq": 1}
    assert numbers(relay_pb2.RelayReset) == {"reason": 1}
    assert numbers(relay_pb2.RelayHandshake) == {"payload": 1}
    assert numbers(relay_pb2.RelayAck) == {}
    assert numbers(relay_pb2.RelayHeartbeat) == {}
    assert PROTO.is_file()


# -- byte layout: the hex captures of verified-codex-0.169.md §3.1 ---------------------------

MSG1 = bytes(range(256)) * 14 + bytes(range(20))  # 3604 bytes, like the observed message 1
MSG2 = bytes(reversed(range(256))) * 13 + bytes(96)  # 3424 bytes, like the observed message 2
CIPHER0 = bytes(range(95))
CIPHER1 = bytes(range(100, 156))

VECTORS: list[tuple[str, Callable[[], RelayMessageFrame], bytes]] = [
    ("resume", lambda: f.resume_frame(SID), HEAD + hx("3a 00")),
    (
        "handshake msg1",
        lambda: f.handshake_frame(SID, MSG1),
        HEAD + hx("52 97 1c | 0a 94 1c") + MSG1,
    ),
    (
        "handshake msg2",
        lambda: f.handshake_frame(SID, MSG2),
        HEAD + hx("52 e3 1a | 0a e0 1a") + MSG2,
    ),
    (
        "data seq 0",
        lambda: f.data_frame(SID, 0, CIPHER0),
        HEAD + hx("2a 63 | 18 01 | 22 5f") + CIPHER0,
    ),
    (
        "data seq 1",
        lambda: f.data_frame(SID, 1, CIPHER1),
        HEAD + hx("2a 3e | 08 01 | 18 01 | 22 38") + CIPHER1,
    ),
    (
        "reset",
        lambda: f.reset_frame(SID),
        HEAD + hx("42 1c | 0a 1a") + b"noise_relay_protocol_error",
    ),
    (
        "ack_frame probe",
        lambda: f.ack_frame(SID, ack=100, ack_bits=5),
        HEAD + hx("18 64 20 05 32 00"),
    ),
    (
        "heartbeat probe",
        lambda: f.heartbeat_frame(SID, ack=7, ack_bits=1),
        HEAD + hx("18 07 20 01 4a 00"),
    ),
    # exec-server-protocol.md §3.1: version 1, stream_id "s-1", empty resume.
    ("protocol §3.1 example", lambda: f.resume_frame("s-1"), hx("08 01 12 03 73 2d 31 3a 00")),
]


@pytest.mark.parametrize(("name", "build", "wire"), VECTORS, ids=[v[0] for v in VECTORS])
def test_encoding_matches_codex_bytes(
    name: str, build: Callable[[], RelayMessageFrame], wire: bytes
) -> None:
    frame = build()
    assert f.encode(frame) == wire
    decoded = f.decode(wire)
    assert decoded == frame
    assert f.validate(decoded) is None


def test_fast_encoders_match_codex_bytes() -> None:
    header = f.stream_header(SID)
    assert header == HEAD
    assert f.encode_data(header, 0, CIPHER0) == HEAD + hx("2a 63 18 01 22 5f") + CIPHER0
    assert f.encode_data(header, 1, CIPHER1) == HEAD + hx("2a 3e 08 01 18 01 22 38") + CIPHER1
    reset = HEAD + hx("42 1c 0a 1a") + b"noise_relay_protocol_error"
    assert f.encode_reset(header) == reset
    assert Reset.encode(SID) == reset
    assert f.encode(Reset.frame(SID)) == reset
    assert Reset.REASON == RESET_REASON == "noise_relay_protocol_error"


def test_every_observed_executor_frame_shape_decodes_with_defaults() -> None:
    """Executor frames had version 1, ack 0, ack_bits 0, segment 0/1 and no trace fields."""
    frame = f.decode(HEAD + hx("2a 63 18 01 22 5f") + CIPHER0)
    assert (frame.version, frame.stream_id, frame.ack, frame.ack_bits) == (1, SID, 0, 0)
    assert f.body_kind(frame) == "data"
    assert (frame.data.seq, frame.data.segment_index, frame.data.segment_count) == (0, 0, 1)
    assert frame.data.payload == CIPHER0
    assert not frame.HasField("traceparent") and not frame.HasField("tracestate")


def test_harness_acks_are_accepted_and_carried() -> None:
    """verified §3.2: Data with ack=50, ack_bits=0xffffffff was accepted by the executor."""
    frame = f.data_frame(SID, 3, b"x")
    frame.ack, frame.ack_bits = 50, 0xFFFF_FFFF
    decoded = f.parse(f.encode(frame))
    assert (decoded.ack, decoded.ack_bits, decoded.data.seq) == (50, 0xFFFF_FFFF, 3)


def test_trace_fields_use_numbers_11_and_12() -> None:
    frame = f.data_frame(SID, 0, b"p", traceparent="tp", tracestate="ts")
    wire = f.encode(frame)
    assert wire.endswith(hx("5a 02") + b"tp" + hx("62 02") + b"ts")
    assert f.encode_data(f.stream_header(SID), 0, b"p", traceparent="tp", tracestate="ts") == wire
    # Present-but-empty trace fields are kept (proto3 `optional`).
    empty = f.decode(f.encode(f.data_frame(SID, 0, b"p", traceparent="")))
    assert empty.HasField("traceparent") and not empty.HasField("tracestate")


# -- round trips -----------------------------------------------------------------------------

ROUND_TRIPS: list[tuple[str, Callable[[], RelayMessageFrame]]] = [
    ("data", lambda: f.data_frame(SID, 7, b"\x00\x01ciphertext")),
    ("data max seq", lambda: f.data_frame(SID, MAX_SEQ, b"z")),
    (
        "data with trace",
        lambda: f.data_frame(SID, 1, b"z", traceparent="00-ab-cd-01", tracestate="k=v"),
    ),
    ("ack_frame", lambda: f.ack_frame(SID)),
    ("ack_frame with state", lambda: f.ack_frame(SID, ack=2, ack_bits=0b10)),
    ("resume", lambda: f.resume_frame(SID)),
    ("resume next_seq", lambda: f.resume_frame(SID, 12345)),
    ("reset", lambda: f.reset_frame(SID)),
    ("reset other reason", lambda: f.reset_frame(SID, "secure_relay_protocol_error")),
    ("heartbeat", lambda: f.heartbeat_frame(SID)),
    ("handshake", lambda: f.handshake_frame(SID, b"\x01" * 3604)),
]


@pytest.mark.parametrize(("name", "build"), ROUND_TRIPS, ids=[r[0] for r in ROUND_TRIPS])
def test_round_trip(name: str, build: Callable[[], RelayMessageFrame]) -> None:
    frame = build()
    decoded = f.parse(f.encode(frame))
    assert decoded == frame
    assert f.body_kind(decoded) == f.body_kind(frame) is not None
    assert f.encode(decoded) == f.encode(frame)


def test_decode_accepts_bytearray_and_memoryview() -> None:
    wire = f.encode(f.reset_frame(SID))
    assert f.decode(bytearray(wire)) == f.decode(memoryview(wire)) == f.decode(wire)


stream_ids = st.text(min_size=1, max_size=40).filter(lambda s: s.strip() == s and s.strip())
u32 = st.integers(min_value=0, max_value=MAX_SEQ)


@given(
    stream_id=stream_ids,
    seq=u32,
    payload=st.binary(min_size=1, max_size=300),
    traceparent=st.none() | st.text(max_size=60),
    tracestate=st.none() | st.text(max_size=60),
)
def test_fast_data_encoding_equals_protobuf_encoding(
    stream_id: str, seq: int, payload: bytes, traceparent: str | None, tracestate: str | None
) -> None:
    expected = f.encode(
        f.data_frame(stream_id, seq, payload, traceparent=traceparent, tracestate=tracestate)
    )
    header = f.stream_header(stream_id)
    got = f.encode_data(header, seq, payload, traceparent=traceparent, tracestate=tracestate)
    assert got == expected
    assert f.decode(got).data.payload == payload


@given(
    stream_id=stream_ids.filter(lambda s: len(s.encode()) <= 128),
    seq=u32,
    payload=st.binary(min_size=1, max_size=70_000),
)
@settings(max_examples=300)
def test_every_data_frame_codex_sends_is_read_by_the_fast_path(
    stream_id: str, seq: int, payload: bytes
) -> None:
    wire = f.encode_data(f.stream_header(stream_id), seq, payload)
    if stream_id.strip(f._RUST_WHITESPACE) != stream_id:
        assert f.data_fields(wire) is None  # not canonical: parse decides
    else:
        assert f.data_fields(wire) == (stream_id, seq, payload)
    _fast_path_agrees(wire)


def test_the_fast_path_leaves_everything_else_to_parse() -> None:
    data = f.encode_data(f.stream_header(SID), 3, b"x")
    traced = f.encode_data(f.stream_header(SID), 3, b"x", traceparent="00-ab")
    assert f.data_fields(data) == (SID, 3, b"x")
    assert f.data_fields(traced) is None  # a field after the body
    assert f.data_fields(f.encode(f.reset_frame(SID))) is None
    assert f.data_fields(f.encode(f.handshake_frame(SID, b"m1"))) is None
    assert f.data_fields(data[:-1]) is None
    assert f.data_fields(data + b"\x00") is None
    assert f.data_fields(f.encode_data(f.stream_header(" " + SID), 3, b"x")) is None
    # A payload length padded to 6 bytes: protobuf (upb) refuses it, so the fast path must.
    padded = b"\x08\x01\x12\x01s\x2a\x0a\x18\x01\x22\x81\x80\x80\x80\x80\x00x"
    assert f.data_fields(padded) is None
    _fast_path_agrees(padded)
    # Padded to 5 bytes it is accepted by both.
    five = b"\x08\x01\x12\x01s\x2a\x09\x18\x01\x22\x81\x80\x80\x80\x00x"
    assert f.data_fields(five) == ("s", 0, b"x") and f.parse(five).data.payload == b"x"


@given(stream_id=stream_ids, reason=st.text(min_size=1, max_size=300))
def test_fast_reset_encoding_equals_protobuf_encoding(stream_id: str, reason: str) -> None:
    assert f.encode_reset(f.stream_header(stream_id), reason) == f.encode(
        f.reset_frame(stream_id, reason)
    )


def test_fast_data_encoding_refuses_invalid_frames() -> None:
    header = f.stream_header(SID)
    with pytest.raises(ValueError, match="empty"):
        f.encode_data(header, 0, b"")
    with pytest.raises(ValueError, match="outside"):
        f.encode_data(header, MAX_SEQ + 1, b"x")
    with pytest.raises(ValueError, match="outside"):
        f.encode_data(header, -1, b"x")
    with pytest.raises(ValueError, match="exceeds"):
        f.encode_data(header, 0, bytes(MAX_WEBSOCKET_MESSAGE_BYTES))
    with pytest.raises(ValueError, match="empty"):
        f.encode_reset(header, "")


# -- validation ------------------------------------------------------------------------------


def _frame(version: int, stream_id: str, ack: int = 0, ack_bits: int = 0) -> RelayMessageFrame:
    return RelayMessageFrame(version=version, stream_id=stream_id, ack=ack, ack_bits=ack_bits)


def _with_body(stream_id: str = SID, version: int = 1) -> RelayMessageFrame:
    frame = RelayMessageFrame(version=version, stream_id=stream_id)
    frame.heartbeat.SetInParent()
    return frame


def _data(seq: int = 0, index: int = 0, count: int = 1, payload: bytes = b"x") -> RelayMessageFrame:
    frame = RelayMessageFrame(version=1, stream_id=SID)
    frame.data.seq, frame.data.segment_index, frame.data.segment_count = seq, index, count
    frame.data.payload = payload
    return frame


K = FrameErrorKind
# (case, frame, error kind under strict validation, error kind under 0.169.0's lax rules)
VALIDATION: list[tuple[str, Callable[[], RelayMessageFrame], K | None, K | None]] = [
    ("heartbeat ok", lambda: _with_body(), None, None),
    (
        "version missing (0)",
        lambda: _with_body(version=0),
        K.UNSUPPORTED_VERSION,
        K.UNSUPPORTED_VERSION,
    ),
    ("version 2", lambda: _with_body(version=2), K.UNSUPPORTED_VERSION, K.UNSUPPORTED_VERSION),
    ("stream id empty", lambda: _with_body(""), K.MISSING_STREAM_ID, K.MISSING_STREAM_ID),
    ("stream id blank", lambda: _with_body(" \t\r\n"), K.MISSING_STREAM_ID, K.MISSING_STREAM_ID),
    (
        "stream id U+3000 only",
        lambda: _with_body("\u3000\u2028\u0085"),
        K.MISSING_STREAM_ID,
        K.MISSING_STREAM_ID,
    ),
    # U+001F is whitespace to Python's str.strip() but not to Rust's trim(), which Codex uses.
    ("stream id U+001F is not blank", lambda: _with_body("\x1f"), None, None),
    ("stream id leading space", lambda: _with_body(" " + SID), K.STREAM_ID_NOT_CANONICAL, None),
    ("stream id trailing newline", lambda: _with_body(SID + "\n"), K.STREAM_ID_NOT_CANONICAL, None),
    ("stream id 128 bytes", lambda: _with_body("s" * 128), None, None),
    ("stream id 129 bytes", lambda: _with_body("s" * 129), K.STREAM_ID_TOO_LONG, None),
    ("stream id 64 x 2-byte chars", lambda: _with_body("é" * 64), None, None),
    ("stream id 65 x 2-byte chars", lambda: _with_body("é" * 65), K.STREAM_ID_TOO_LONG, None),
    ("stream id 33 x 4-byte chars", lambda: _with_body("😀" * 33), K.STREAM_ID_TOO_LONG, None),
    ("no body", lambda: _frame(version=1, stream_id=SID), K.MISSING_BODY, K.MISSING_BODY),
    (
        "no body, acks only",
        lambda: _frame(version=1, stream_id=SID, ack=1, ack_bits=2),
        K.MISSING_BODY,
        K.MISSING_BODY,
    ),
    ("data ok", lambda: _data(), None, None),
    ("data seq max", lambda: _data(seq=MAX_SEQ), None, None),
    ("data segment_index 1", lambda: _data(index=1), K.INVALID_DATA, K.INVALID_DATA),
    ("data segment_count 0", lambda: _data(count=0), K.INVALID_DATA, K.INVALID_DATA),
    ("data segment_count 2", lambda: _data(count=2), K.INVALID_DATA, K.INVALID_DATA),
    ("data empty payload", lambda: _data(payload=b""), K.INVALID_DATA, K.INVALID_DATA),
    ("reset ok", lambda: f.reset_frame(SID), None, None),
    ("reset empty reason", lambda: f.reset_frame(SID, ""), K.INVALID_RESET, K.INVALID_RESET),
    ("reset 256-byte reason", lambda: f.reset_frame(SID, "r" * 256), None, None),
    ("reset 257-byte reason", lambda: f.reset_frame(SID, "r" * 257), K.RESET_REASON_TOO_LONG, None),
    (
        "reset 129 x 2-byte reason",
        lambda: f.reset_frame(SID, "é" * 129),
        K.RESET_REASON_TOO_LONG,
        None,
    ),
    ("handshake ok", lambda: f.handshake_frame(SID, b"m"), None, None),
    (
        "handshake empty payload",
        lambda: f.handshake_frame(SID, b""),
        K.INVALID_HANDSHAKE,
        K.INVALID_HANDSHAKE,
    ),
    ("resume next_seq 0", lambda: f.resume_frame(SID), None, None),
    ("resume next_seq 9", lambda: f.resume_frame(SID, 9), None, None),
    (
        "ack_frame with garbage acks",
        lambda: f.ack_frame(SID, ack=MAX_SEQ, ack_bits=MAX_SEQ),
        None,
        None,
    ),
]


@pytest.mark.parametrize(
    ("case", "build", "strict_kind", "lax_kind"), VALIDATION, ids=[v[0] for v in VALIDATION]
)
def test_validation_rule(
    case: str, build: Callable[[], RelayMessageFrame], strict_kind: K | None, lax_kind: K | None
) -> None:
    frame = build()
    strict = f.validate(frame)
    lax = f.validate(frame, strict=False)
    assert (strict.kind if strict else None) == strict_kind
    assert (lax.kind if lax else None) == lax_kind
    # The same verdicts after a trip over the wire, through parse().
    wire = f.encode(frame)
    if strict_kind is None:
        assert f.parse(wire) == frame
    else:
        with pytest.raises(FrameError) as caught:
            f.parse(wire)
        assert caught.value.kind is strict_kind


def test_codex_error_wording() -> None:
    """The texts Codex 0.169.0 logs for the same rejections (verified §3.3, noise §4.2)."""

    def message(frame: RelayMessageFrame) -> str:
        error = f.validate(frame)
        assert error is not None
        return error.message

    assert message(_with_body(version=2)) == "unsupported relay message frame version 2"
    assert message(_frame(version=1, stream_id=SID)) == "relay message frame is missing body"
    assert message(_data(count=2)) == "relay data message frame is missing required fields"
    assert message(_with_body("  ")) == "relay message frame is missing stream_id"
    with pytest.raises(FrameError, match=r"^invalid relay message frame: "):
        f.decode(b"\xff")


# -- decoding untrusted bytes ----------------------------------------------------------------

DECODE_ERRORS: list[tuple[str, object, K]] = [
    ("text message", "{}", K.NOT_BINARY),
    ("over 256 KiB", bytes(MAX_WEBSOCKET_MESSAGE_BYTES + 1), K.TOO_LARGE),
    ("lone continuation byte", b"\x80", K.MALFORMED),
    ("truncated varint value", hx("08 80"), K.MALFORMED),
    ("11-byte varint", hx("08") + b"\xff" * 10 + b"\x01", K.MALFORMED),
    ("varint overflowing 64 bits", hx("08") + b"\xff" * 9 + b"\x02", K.MALFORMED),
    ("field number 0", hx("00 01"), K.MALFORMED),
    ("wire type 6", hx("0e"), K.MALFORMED),
    ("wire type 7", hx("0f"), K.MALFORMED),
    ("length past the end", HEAD + hx("2a 05 18 01"), K.MALFORMED),
    ("stream id past the end", hx("08 01 12 24") + b"short", K.MALFORMED),
    ("version as LEN", hx("0a 01 01") + hx("12 01 73 4a 00"), K.MALFORMED),
    ("stream id as varint", hx("08 01 10 05 4a 00"), K.MALFORMED),
    ("data body as varint", hx("08 01 12 01 73 28 00"), K.MALFORMED),
    ("seq as fixed32", HEAD + hx("2a 0b 0d 00 00 00 00 18 01 22 01 78"), K.MALFORMED),
    ("version beyond uint32", hx("08 81 80 80 80 10 12 01 73 4a 00"), K.MALFORMED),
    ("seq beyond uint32", HEAD + hx("2a 0c 08 ff ff ff ff 1f 18 01 22 01 78"), K.MALFORMED),
    ("stream id not UTF-8", hx("08 01 12 02 c3 28 4a 00"), K.MALFORMED),
    ("reset reason not UTF-8", HEAD + hx("42 03 0a 01 ff"), K.MALFORMED),
    ("stray end-group", HEAD + hx("7c"), K.MALFORMED),
    ("unterminated group", HEAD + hx("7b 08 01"), K.MALFORMED),
    ("mismatched end-group", HEAD + hx("7b 84 01"), K.MALFORMED),
    ("deeply nested groups", HEAD + hx("7b") * 200 + hx("7c") * 200, K.MALFORMED),
    ("truncated fixed64", HEAD + hx("79 01 02"), K.MALFORMED),
    ("truncated fixed32", HEAD + hx("7d 01"), K.MALFORMED),
]


@pytest.mark.parametrize(("case", "wire", "kind"), DECODE_ERRORS, ids=[d[0] for d in DECODE_ERRORS])
def test_decode_rejects(case: str, wire: bytes | str, kind: K) -> None:
    with pytest.raises(FrameError) as caught:
        f.decode(wire)
    assert caught.value.kind is kind


def test_decode_tolerates_unknown_fields() -> None:
    """Fields from newer revisions are skipped: varint, fixed, LEN and group forms."""
    unknown = hx("68 05") + hx("71") + bytes(8) + hx("75") + bytes(4) + hx("a2 06 02 ab cd")
    unknown += hx("7b 08 01 12 00 7c")  # group 15 holding a varint and an empty LEN
    frame = f.parse(HEAD + unknown + hx("3a 00"))
    assert f.body_kind(frame) == "resume" and frame.stream_id == SID
    # An unknown field inside a body is skipped too.
    frame = f.parse(HEAD + hx("2a 07 18 01 22 01 78 28 09"))
    assert frame.data.payload == b"x"


def test_largest_message_is_accepted() -> None:
    header = f.stream_header(SID)
    overhead = len(f.encode_data(header, 0, b"x")) - 1
    payload = bytes(MAX_WEBSOCKET_MESSAGE_BYTES - overhead - 4)  # varints grow by 2 bytes each
    wire = f.encode_data(header, 0, payload)
    assert len(wire) <= MAX_WEBSOCKET_MESSAGE_BYTES
    assert f.parse(wire).data.payload == payload


def test_later_field_values_win_like_protobuf() -> None:
    """Repeated singular fields and oneof members: the last one wins (prost and upb agree)."""
    wire = HEAD + hx("12 03 61 62 63") + hx("3a 00") + hx("4a 00")
    frame = f.parse(wire)
    assert frame.stream_id == "abc" and f.body_kind(frame) == "heartbeat"


def _parse_only_frame_errors(wire: bytes) -> None:
    for strict in (True, False):
        with contextlib.suppress(FrameError):
            f.parse(wire, strict=strict)
    _fast_path_agrees(wire)


def _fast_path_agrees(wire: bytes) -> None:
    """What ``data_fields`` reads, ``parse`` accepts (even strict) and reads the same."""
    fields = f.data_fields(wire)
    # What the rendezvous routes by, also from a view into a bus message.
    assert f.data_stream_id(memoryview(wire)) == (None if fields is None else fields[0])
    if fields is not None:
        frame = f.parse(wire)
        assert frame.WhichOneof("body") == "data"
        assert fields == (frame.stream_id, frame.data.seq, frame.data.payload)


@settings(max_examples=1500)
@given(st.binary(max_size=200))
def test_random_bytes_raise_nothing_but_frame_error(wire: bytes) -> None:
    _parse_only_frame_errors(wire)


# Byte strings built from protobuf-looking pieces reach deeper than uniform noise.
_pieces = st.sampled_from(
    [
        bytes((b,))
        for b in hx("08 12 18 20 2a 32 3a 42 4a 52 5a 62 7b 7c 00 01 80 ff 0a 22 24 7f 0d 09")
    ]
)


@settings(max_examples=1500)
@given(st.lists(_pieces | st.binary(max_size=4), max_size=40).map(b"".join))
def test_protobuf_shaped_noise_raises_nothing_but_frame_error(wire: bytes) -> None:
    _parse_only_frame_errors(wire)


valid_frames = st.one_of(
    st.builds(f.data_frame, stream_ids, u32, st.binary(min_size=1, max_size=64)),
    st.builds(
        lambda sid, seq, payload, tp, ts: f.data_frame(
            sid, seq, payload, traceparent=tp, tracestate=ts
        ),
        stream_ids,
        u32,
        st.binary(min_size=1, max_size=16),
        st.text(max_size=8),
        st.text(max_size=8),
    ),
    st.builds(f.resume_frame, stream_ids, u32),
    st.builds(f.reset_frame, stream_ids, st.text(min_size=1, max_size=40)),
    st.builds(f.handshake_frame, stream_ids, st.binary(min_size=1, max_size=64)),
    st.builds(lambda sid, a, b: f.ack_frame(sid, ack=a, ack_bits=b), stream_ids, u32, u32),
    st.builds(lambda sid, a, b: f.heartbeat_frame(sid, ack=a, ack_bits=b), stream_ids, u32, u32),
)


@settings(max_examples=3000)
@given(frame=valid_frames, position=st.integers(min_value=0), bit=st.integers(0, 7))
def test_single_bit_flip_is_rejected_or_changes_the_frame(
    frame: RelayMessageFrame, position: int, bit: int
) -> None:
    """No corrupted frame is silently taken for the original (e.g. as the same stream id)."""
    wire = f.encode(frame)
    assert f.parse(wire, strict=False) == frame
    flipped = bytearray(wire)
    flipped[position % len(wire)] ^= 1 << bit
    _fast_path_agrees(bytes(flipped))
    try:
        decoded = f.parse(bytes(flipped), strict=False)
    except FrameError:
        return
    # Accepted: then it must not pass for the original, neither as bytes nor field by field
    # (so a same-looking stream id with corrupted content is never the same frame).
    assert f.encode(decoded) != wire
    assert decoded != frame


@settings(max_examples=500)
@given(frame=valid_frames, cut=st.integers(min_value=1))
def test_truncated_frames_never_escape_frame_error(frame: RelayMessageFrame, cut: int) -> None:
    wire = f.encode(frame)
    _parse_only_frame_errors(wire[: cut % len(wire)])


def test_frame_error_repr_and_kind() -> None:
    error = f.validate(_with_body(version=3))
    assert isinstance(error, FrameError) and isinstance(error, Exception)
    assert error.kind is K.UNSUPPORTED_VERSION
    assert "UNSUPPORTED_VERSION" in repr(error)
    assert str(error) == "unsupported relay message frame version 3"


# -- record framing (relay/framing.py) ---------------------------------------------------------


@given(st.lists(st.binary(min_size=1, max_size=150_000), min_size=1, max_size=5))
@settings(max_examples=60, deadline=None)
def test_messages_sent_together_come_back_whole_and_in_order(messages: list[bytes]) -> None:
    cut = records(messages)
    assert all(0 < len(record) <= RECORD_BYTES for record in cut)
    assembler = MessageAssembler()
    assert [m for record in cut for m in assembler.feed(record)] == messages


def test_small_messages_sent_together_share_one_record() -> None:
    exited, closed = b'{"method":"process/exited"}', b'{"method":"process/closed"}'
    (record,) = records([exited, closed])
    assert MessageAssembler().feed(record) == [exited, closed]


def test_an_empty_message_is_refused() -> None:
    with pytest.raises(FramingError):
        records([b"{}", b""])
