"""Relay stream sequencing (Codex 0.169.0 dialect) and the executor's stream table."""

from __future__ import annotations

import bisect
import random
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from codexexec.relay import frames as f
from codexexec.relay.limits import (
    MAX_ACTIVE_STREAMS,
    MAX_PENDING_BYTES,
    MAX_PENDING_FRAMES,
    MAX_REORDER_DISTANCE,
    MAX_RETIRED_STREAM_IDS,
    MAX_SEQ,
)
from codexexec.relay.streams import (
    Action,
    Admission,
    OutboundSequencer,
    RefusalKind,
    RelayStream,
    ReorderBuffer,
    Reset,
    StreamError,
    StreamErrorKind,
    StreamRefused,
    StreamTable,
    Verdict,
)

SID = "92d9c3bc-d9cb-467a-95d1-d51e060ed672"


def sid(n: int) -> str:
    return f"stream-{n:04d}"


def payload(seq: int) -> bytes:
    return f"record-{seq}".encode()


def data(stream_id: str, seq: int, body: bytes | None = None) -> f.RelayMessageFrame:
    return f.data_frame(stream_id, seq, payload(seq) if body is None else body)


# -- outbound --------------------------------------------------------------------------------


def test_outbound_seq_starts_at_zero_and_counts_up() -> None:
    out = OutboundSequencer(SID)
    assert out.next_seq == 0
    wires = [out.encode_data(payload(n)) for n in range(5)]
    frames = [f.parse(w) for w in wires]
    assert [fr.data.seq for fr in frames] == [0, 1, 2, 3, 4]
    assert all(fr.stream_id == SID and fr.data.segment_count == 1 for fr in frames)
    assert [fr.data.payload for fr in frames] == [payload(n) for n in range(5)]
    assert wires[0] == f.encode(f.data_frame(SID, 0, payload(0)))
    assert out.next_seq == 5


def test_outbound_trace_fields_are_written() -> None:
    out = OutboundSequencer(SID)
    frame = f.parse(out.encode_data(b"x", traceparent="00-a-b-01", tracestate="k=v"))
    assert (frame.traceparent, frame.tracestate) == ("00-a-b-01", "k=v")


def test_outbound_empty_payload_is_refused_without_using_a_seq() -> None:
    out = OutboundSequencer(SID)
    with pytest.raises(ValueError):
        out.encode_data(b"")
    assert out.next_seq == 0
    assert f.parse(out.encode_data(b"x")).data.seq == 0


def test_outbound_seq_never_wraps() -> None:
    out = OutboundSequencer(SID)
    out._next = MAX_SEQ  # skip ahead: counting 2**32 frames takes too long
    assert f.parse(out.encode_data(b"x")).data.seq == MAX_SEQ
    with pytest.raises(StreamError) as caught:
        out.encode_data(b"y")
    assert caught.value.kind is StreamErrorKind.SEQ_EXHAUSTED
    with pytest.raises(StreamError):
        out.allocate()


def test_outbound_reset_uses_the_generic_reason() -> None:
    out = OutboundSequencer(SID)
    frame = f.parse(out.encode_reset())
    assert frame.reset.reason == "noise_relay_protocol_error"
    assert out.encode_reset() == Reset.encode(SID)


# -- reorder buffer ----------------------------------------------------------------------------


def test_in_order_frames_are_released_one_by_one() -> None:
    buf = ReorderBuffer()
    for seq in range(10):
        assert buf.push(seq, payload(seq)) == (payload(seq),)
    assert buf.next_seq == 10 and buf.pending_frames == 0


def test_seq_one_before_zero_releases_both_when_zero_arrives() -> None:
    """verified §3.2: seq 1 sent before seq 0 -> both processed once seq 0 arrives."""
    buf = ReorderBuffer()
    assert buf.push(1, b"one") == ()
    assert buf.pending_frames == 1 and buf.pending_bytes == 3
    assert buf.push(0, b"zero") == (b"zero", b"one")
    assert buf.next_seq == 2 and buf.pending_frames == 0 and buf.pending_bytes == 0


def test_stream_starting_at_seq_one_waits_forever() -> None:
    """verified §3.2: a harness starting at seq 1 gets no reply and no Reset."""
    buf = ReorderBuffer()
    for seq in range(1, MAX_REORDER_DISTANCE + 1):
        assert buf.push(seq, payload(seq)) == ()
    assert buf.next_seq == 0 and buf.pending_frames == MAX_REORDER_DISTANCE


def test_duplicates_are_dropped_and_the_first_copy_wins() -> None:
    buf = ReorderBuffer()
    assert buf.push(0, b"a") == (b"a",)
    assert buf.push(0, b"a") is None  # byte-identical replay of seq 0 (verified §3.2)
    assert buf.push(2, b"first") == ()
    assert buf.push(2, b"second") is None
    assert buf.push(1, b"b") == (b"b", b"first")
    assert buf.push(1, b"b") is None and buf.push(0, b"z") is None
    assert buf.duplicates == 4
    assert buf.push(3, b"c") == (b"c",)


def test_window_edge_matches_codex() -> None:
    """verified §3.2: with next=0, seq 64 is buffered and seq 65 resets the stream."""
    buf = ReorderBuffer()
    assert buf.push(64, b"edge") == ()
    with pytest.raises(StreamError) as caught:
        buf.push(65, b"past")
    assert caught.value.kind is StreamErrorKind.REORDER_WINDOW
    assert str(caught.value) == "Noise relay ciphertext exceeds reorder window"


def test_window_moves_with_the_next_expected_seq() -> None:
    buf = ReorderBuffer()
    for seq in range(10):
        buf.push(seq, payload(seq))
    assert buf.push(10 + 64, b"edge") == ()
    with pytest.raises(StreamError):
        buf.push(10 + 65, b"past")


def test_pending_bytes_are_capped() -> None:
    buf = ReorderBuffer(max_pending_bytes=100)
    assert buf.push(1, bytes(60)) == ()
    assert buf.push(2, bytes(40)) == ()
    with pytest.raises(StreamError) as caught:
        buf.push(3, b"x")
    assert caught.value.kind is StreamErrorKind.PENDING_BYTES
    assert ReorderBuffer().push(1, bytes(MAX_PENDING_BYTES)) == ()


@settings(max_examples=300)
@given(
    count=st.integers(min_value=1, max_value=400),
    seed=st.integers(min_value=0, max_value=2**32),
    replay_rate=st.sampled_from([0.0, 0.2, 0.5]),
    lead_bias=st.sampled_from([0.0, 0.5, 1.0]),
)
def test_shuffled_delivery_within_the_window_yields_the_original_order_once(
    count: int, seed: int, replay_rate: float, lead_bias: float
) -> None:
    """Any arrival order the window allows, with replays mixed in, delivers 0..n-1 exactly once.

    Each step sends a random not-yet-sent seq among those within next..next+64 (``lead_bias``
    favours the farthest one, filling the buffer to its 64-frame bound), or replays one.
    """
    rng = random.Random(seed)
    buf = ReorderBuffer()
    unsent = list(range(count))  # sorted
    sent: list[int] = []
    delivered: list[bytes] = []
    while unsent:
        if sent and rng.random() < replay_rate:
            seq = rng.choice(sent)
        else:
            allowed = bisect.bisect_right(unsent, buf.next_seq + MAX_REORDER_DISTANCE)
            index = allowed - 1 if rng.random() < lead_bias else rng.randrange(allowed)
            seq = unsent.pop(index)
            sent.append(seq)
        released = buf.push(seq, payload(seq))
        if released:
            delivered.extend(released)
        assert buf.pending_frames <= MAX_PENDING_FRAMES
    assert delivered == [payload(seq) for seq in range(count)]
    assert buf.next_seq == count and buf.pending_frames == 0 and buf.pending_bytes == 0


@settings(max_examples=300)
@given(st.lists(st.integers(min_value=0, max_value=300), max_size=300))
def test_arbitrary_arrivals_match_a_simple_model_and_stay_bounded(seqs: list[int]) -> None:
    buf = ReorderBuffer()
    next_seq, held, out = 0, set(), []
    for seq in seqs:
        if seq < next_seq or seq in held:
            assert buf.push(seq, payload(seq)) is None
            continue
        if seq - next_seq > MAX_REORDER_DISTANCE:
            with pytest.raises(StreamError):
                buf.push(seq, payload(seq))
            return  # the stream is reset: nothing more is pushed
        released = buf.push(seq, payload(seq))
        held.add(seq)
        while next_seq in held:
            held.remove(next_seq)
            out.append(payload(next_seq))
            next_seq += 1
        assert released is not None
        assert list(released) == out[len(out) - len(released) :]
        assert buf.next_seq == next_seq and buf.pending_frames == len(held)
        assert buf.pending_frames <= MAX_PENDING_FRAMES


# -- the Reset helper --------------------------------------------------------------------------


def test_reset_helper_builds_the_generic_reset() -> None:
    frame = Reset.frame(SID)
    assert f.validate(frame) is None
    assert frame.reset.reason == Reset.REASON == "noise_relay_protocol_error"
    assert Reset.encode(SID) == f.encode(frame)
    assert Reset.encode_with_header(f.stream_header(SID)) == f.encode(frame)


# -- stream table: explicit admission (Noise, 0.169.0) ----------------------------------------


def _deliver(table: StreamTable[Any], stream_id: str, seq: int) -> Verdict[Any]:
    verdict = table.receive(data(stream_id, seq))
    assert verdict.action is Action.DELIVER, verdict
    assert verdict.payloads == (payload(seq),)
    return verdict


def test_open_admits_128_streams_and_refuses_the_129th() -> None:
    table: StreamTable[object] = StreamTable()
    for n in range(MAX_ACTIVE_STREAMS):
        assert table.refusal(sid(n)) is None
        table.open(sid(n))
    assert len(table) == MAX_ACTIVE_STREAMS
    assert table.refusal(sid(999)) is RefusalKind.FULL
    with pytest.raises(StreamRefused) as caught:
        table.open(sid(999))
    assert caught.value.kind is RefusalKind.FULL
    assert str(caught.value) == "Noise relay has too many active streams"
    assert sid(999) not in table and not table.is_retired(sid(999))
    # Room again once one stream ends.
    table.retire(sid(0))
    table.open(sid(999))
    assert sid(999) in table


def test_open_refuses_an_active_or_retired_id() -> None:
    table: StreamTable[object] = StreamTable()
    table.open(SID)
    with pytest.raises(StreamRefused) as caught:
        table.open(SID)
    assert caught.value.kind is RefusalKind.ACTIVE
    table.retire(SID)
    with pytest.raises(StreamRefused) as caught:
        table.open(SID)
    assert caught.value.kind is RefusalKind.RETIRED


def test_data_on_an_unknown_stream_is_reset() -> None:
    """verified §3.3: Data on an unknown stream id -> Reset for that id."""
    table: StreamTable[object] = StreamTable()
    verdict = table.receive(data(SID, 0))
    assert verdict.action is Action.RESET
    assert verdict.reply == Reset.encode(SID)
    assert verdict.detail == "data for an unknown stream"
    assert SID not in table


def test_data_flows_per_stream_with_its_own_sequence() -> None:
    table: StreamTable[str] = StreamTable()
    a = table.open("a", context="ctx-a")
    table.open("b")
    assert table.receive(data("a", 1)).action is Action.BUFFERED
    _deliver(table, "b", 0)
    verdict = table.receive(data("a", 0))
    assert verdict.action is Action.DELIVER and verdict.payloads == (payload(0), payload(1))
    assert verdict.stream is a and a.context == "ctx-a"
    assert table.receive(data("a", 1)).action is Action.DUPLICATE
    assert a.inbound.next_seq == 2
    b = table.get("b")
    assert b is not None and b.inbound.next_seq == 1


def test_out_of_window_resets_only_that_stream() -> None:
    table: StreamTable[object] = StreamTable()
    table.open("a")
    table.open("b")
    _deliver(table, "b", 0)
    verdict = table.receive(data("a", MAX_REORDER_DISTANCE + 1))
    assert verdict.action is Action.RESET
    assert verdict.reply == Reset.encode("a")
    assert verdict.detail == "Noise relay ciphertext exceeds reorder window"
    assert "a" not in table and table.is_retired("a")
    _deliver(table, "b", 1)  # the other stream is untouched
    # A late frame for the reset stream is dropped, not answered again.
    assert table.receive(data("a", 0)).action is Action.IGNORED


def test_peer_reset_removes_only_that_stream() -> None:
    table: StreamTable[object] = StreamTable()
    streams = {name: table.open(name) for name in ("a", "b", "c")}
    _deliver(table, "b", 0)
    verdict = table.receive(f.reset_frame("b", "whatever the peer says"))
    assert verdict.action is Action.CLOSED and verdict.stream is streams["b"]
    assert verdict.reply is None  # nothing is sent back
    assert "b" not in table and table.is_retired("b")
    assert {s.stream_id for s in table} == {"a", "c"}
    _deliver(table, "a", 0)
    _deliver(table, "c", 0)
    # A reset for a stream that is not active changes nothing.
    assert table.receive(f.reset_frame("b")).action is Action.IGNORED
    assert table.receive(f.reset_frame("zzz")).action is Action.IGNORED
    assert len(table) == 2


def test_late_data_after_a_reset_is_dropped_or_reset_like_codex() -> None:
    quiet: StreamTable[object] = StreamTable()
    quiet.open(SID)
    quiet.receive(f.reset_frame(SID))
    assert quiet.receive(data(SID, 1)).action is Action.IGNORED
    # 0.169.0 keeps no retired ids and answers a later Data frame with a Reset (verified §3.3).
    codex_like: StreamTable[object] = StreamTable(reset_retired_data=True)
    codex_like.open(SID)
    codex_like.receive(f.reset_frame(SID))
    verdict = codex_like.receive(data(SID, 1))
    assert verdict.action is Action.RESET and verdict.reply == Reset.encode(SID)


def test_acks_heartbeats_and_resume_are_ignored() -> None:
    """verified §3.2/3.3: harness acks, heartbeats and a second Resume change nothing."""
    table: StreamTable[object] = StreamTable()
    table.open(SID)
    for frame in (
        f.ack_frame(SID, ack=100, ack_bits=5),
        f.heartbeat_frame(SID, ack=7, ack_bits=1),
        f.resume_frame(SID),
        f.ack_frame("unknown"),
        f.heartbeat_frame("unknown"),
        f.resume_frame("unknown"),
    ):
        assert table.receive(frame).action is Action.IGNORED
    assert len(table) == 1 and not table.is_retired("unknown")
    _deliver(table, SID, 0)


def test_handshake_frames_go_to_the_transport() -> None:
    table: StreamTable[object] = StreamTable()
    verdict = table.receive(f.handshake_frame(SID, b"msg1"))
    assert verdict.action is Action.HANDSHAKE and verdict.stream is None
    stream = table.open(SID)
    verdict = table.receive(f.handshake_frame(SID, b"msg1"))
    assert verdict.action is Action.HANDSHAKE and verdict.stream is stream
    assert table.refusal(SID) is RefusalKind.ACTIVE  # what the transport checks first


def test_retired_ids_are_remembered_fifo() -> None:
    table: StreamTable[object] = StreamTable()
    for n in range(MAX_RETIRED_STREAM_IDS + 10):
        table.open(sid(n))
        table.retire(sid(n))
    assert table.retired_count == MAX_RETIRED_STREAM_IDS
    assert not any(table.is_retired(sid(n)) for n in range(10))  # oldest forgotten first
    assert all(table.is_retired(sid(n)) for n in range(10, MAX_RETIRED_STREAM_IDS + 10))
    table.open(sid(0))  # a forgotten id may be used again
    with pytest.raises(StreamRefused):
        table.open(sid(10))
    # Retiring an id twice does not refresh its place in the queue.
    table.retire(sid(10))
    table.retire(sid(5000))
    assert not table.is_retired(sid(10)) and table.is_retired(sid(11))


def test_retire_with_a_stale_instance_leaves_the_newer_stream() -> None:
    table: StreamTable[object] = StreamTable(max_retired=0)  # ids may be reused at once
    first = table.open(SID)
    table.retire(SID)
    second = table.open(SID)
    assert second.instance != first.instance
    assert table.retire(SID, instance=first.instance) is None
    assert table.get(SID) is second
    assert table.retire(SID, instance=second.instance) is second
    assert SID not in table


def test_close_returns_a_reset_and_retires() -> None:
    table: StreamTable[object] = StreamTable()
    stream = table.open(SID)
    assert table.close(SID, instance=stream.instance + 1) is None
    assert table.close(SID) == Reset.encode(SID)
    assert SID not in table and table.is_retired(SID)
    assert table.close(SID) is None


def test_close_all_drops_every_stream() -> None:
    table: StreamTable[object] = StreamTable()
    opened = [table.open(sid(n)) for n in range(3)]
    assert table.close_all() == opened
    assert len(table) == 0


def test_buffer_never_exceeds_64_frames_per_stream_in_the_table() -> None:
    table: StreamTable[object] = StreamTable()
    stream = table.open(SID)
    for seq in range(MAX_REORDER_DISTANCE, 0, -1):
        assert table.receive(data(SID, seq)).action is Action.BUFFERED
    assert stream.inbound.pending_frames == MAX_PENDING_FRAMES == 64
    verdict = table.receive(data(SID, MAX_REORDER_DISTANCE + 1))
    assert verdict.action is Action.RESET  # the 65th ahead is out of the window
    assert SID not in table


# -- stream table: implicit admission ---------------------------------------------------------


def test_implicit_admission_opens_on_data_and_resets_the_129th() -> None:
    table: StreamTable[object] = StreamTable(admission=Admission.IMPLICIT)
    for n in range(MAX_ACTIVE_STREAMS):
        verdict = _deliver(table, sid(n), 0)
        assert verdict.opened and verdict.stream is not None
    verdict = table.receive(data(sid(128), 0))
    assert verdict.action is Action.RESET and verdict.reply == Reset.encode(sid(128))
    assert verdict.detail == "Noise relay has too many active streams"
    assert sid(128) not in table and table.is_retired(sid(128))
    # Its next frames are dropped, even once there is room again.
    table.retire(sid(0))
    assert table.receive(data(sid(128), 1)).action is Action.IGNORED
    assert len(table) == MAX_ACTIVE_STREAMS - 1
    # A second data frame of an opened stream is not "opened" again.
    assert not _deliver(table, sid(1), 1).opened


def test_implicit_admission_opens_on_resume_and_resets_the_129th() -> None:
    table: StreamTable[object] = StreamTable(admission=Admission.IMPLICIT)
    for n in range(MAX_ACTIVE_STREAMS):
        verdict = table.receive(f.resume_frame(sid(n)))
        assert verdict.action is Action.OPENED and verdict.opened
    assert table.receive(f.resume_frame(sid(0))).action is Action.IGNORED  # already open
    verdict = table.receive(f.resume_frame(sid(128)))
    assert verdict.action is Action.RESET and table.is_retired(sid(128))
    _deliver(table, sid(5), 0)


def test_implicit_admission_buffers_a_first_frame_that_is_ahead() -> None:
    table: StreamTable[object] = StreamTable(admission=Admission.IMPLICIT)
    verdict = table.receive(data(SID, 1))
    assert verdict.action is Action.BUFFERED and verdict.opened
    verdict = table.receive(data(SID, 0))
    assert verdict.action is Action.DELIVER and not verdict.opened
    assert verdict.payloads == (payload(0), payload(1))


def test_implicit_admission_resets_a_first_frame_past_the_window() -> None:
    table: StreamTable[object] = StreamTable(admission=Admission.IMPLICIT)
    verdict = table.receive(data(SID, MAX_REORDER_DISTANCE + 1))
    assert verdict.action is Action.RESET and verdict.opened
    assert SID not in table and table.is_retired(SID)


def test_implicit_admission_ignores_handshakes_and_never_reopens_retired_ids() -> None:
    table: StreamTable[object] = StreamTable(admission=Admission.IMPLICIT)
    assert table.receive(f.handshake_frame(SID, b"m")).action is Action.IGNORED
    _deliver(table, SID, 0)
    table.receive(f.reset_frame(SID))
    assert table.receive(data(SID, 0)).action is Action.IGNORED
    assert table.receive(f.resume_frame(SID)).action is Action.IGNORED
    assert SID not in table


def test_relay_stream_defaults() -> None:
    stream: RelayStream[int] = RelayStream(SID)
    assert stream.context is None and stream.instance == 0
    assert stream.outbound.next_seq == 0 and stream.inbound.next_seq == 0
    assert repr(stream) == f"RelayStream({SID!r}, instance=0)"
