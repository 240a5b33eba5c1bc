"""The cluster's pure pieces: credit flow (credit.py), membership, the bus wire format and
the link connection's NATS protocol (nats_wire.py)."""

from __future__ import annotations

import contextlib
import itertools

import pytest
from hypothesis import given
from hypothesis import strategies as st

from codexexec.rendezvous import nats_wire as nw
from codexexec.rendezvous.bus_wire import (
    BusWireError,
    Close,
    LinkKind,
    decode_close,
    decode_control,
    decode_link,
    encode_close,
    encode_link,
    where_subject,
)
from codexexec.rendezvous.credit import ReceiveWindow, SendWindow
from codexexec.rendezvous.membership import Membership


def test_a_sender_stops_at_the_window_and_resumes_on_credit() -> None:
    window = SendWindow(frames=4, nbytes=100)
    assert [window.sent(10) for _ in range(4)] == [0, 1, 2, 3]
    assert not window.admits(1)
    assert window.granted(2, 20)
    assert window.admits(10) and window.sent(10) == 4
    assert not window.granted(9, 0)  # more than was ever sent: the peer's fault


def test_one_large_frame_always_fits_an_empty_window() -> None:
    window = SendWindow(frames=4, nbytes=100)
    assert window.admits(10_000)
    window.sent(10_000)
    assert not window.admits(1)


def test_a_receiver_sees_gaps_and_overflow() -> None:
    receive = ReceiveWindow(frames=2, nbytes=100)
    assert receive.arrived(0, 10) == "ok"
    assert receive.arrived(2, 10) == "gap"
    assert receive.arrived(1, 10) == "ok"
    assert receive.arrived(2, 10) == "overflow"  # the sender ignored its window


@given(
    st.lists(
        st.one_of(
            st.tuples(st.just("send"), st.integers(1, 300)),
            st.tuples(st.just("hand_on"), st.none()),
        ),
        max_size=300,
    )
)
def test_credit_keeps_sender_and_receiver_in_step(steps: list[tuple[str, object]]) -> None:
    """Whatever the order of sends and hand-ons, a sender that keeps to its window never
    overflows the receiver, numbers are never skipped, credit never exceeds what is
    outstanding, and once everything is handed on the sender is not blocked."""
    send, receive = SendWindow(frames=8, nbytes=1000), ReceiveWindow(frames=8, nbytes=1000)
    held: list[int] = []
    for step, value in steps:
        if step == "send":
            assert isinstance(value, int)
            if send.admits(value):
                seq = send.sent(value)
                assert receive.arrived(seq, value) == "ok"
                held.append(value)
        elif held:
            size = held.pop(0)
            grant = receive.handed_on(size)
            if grant is not None:
                assert send.granted(grant.frames, grant.nbytes)
    while held:
        grant = receive.handed_on(held.pop(0))
        if grant is not None:
            assert send.granted(grant.frames, grant.nbytes)
    assert send.outstanding_frames < 2 and send.outstanding_bytes < 250  # under a quarter
    assert send.admits(300)


def test_membership_forgets_silent_nodes_on_a_fake_clock() -> None:
    members = Membership(timeout=5.0)
    members.heard("a", 100.0)
    members.heard("b", 103.0)
    assert members.expired(105.0) == []
    assert members.expired(105.5) == ["a"]
    assert "a" not in members and "b" in members
    members.heard("b", 108.0)
    assert members.expired(112.0) == []
    assert members.expired(113.5) == ["b"]


def test_link_messages_round_trip_and_bad_ones_are_refused() -> None:
    message = decode_link(encode_link(LinkKind.FRAME, "n1.7", 42, 0, b"\x00frame"))
    assert (message.kind, message.link, message.first, message.payload) == (
        LinkKind.FRAME,
        "n1.7",
        42,
        b"\x00frame",
    )
    close = Close(4002, "executor disconnected", ("s1", "s2"), "gone")
    assert decode_close(decode_link(encode_close("n1.7", close))) == close
    for bad in (b"", b"\x09\x00", b"\x01\x05ab", b"\x01\xff" + b"x" * 300, b"\x01\x01\xff\0\0"):
        with pytest.raises(BusWireError):
            decode_link(bad)
    for bad in (b"[]", b"{", b"\xff", b"{" + b" " * 20000 + b"}"):
        with pytest.raises(BusWireError):
            decode_control(bad)


@given(st.binary(max_size=200))
def test_any_bytes_decode_or_are_refused_cleanly(data: bytes) -> None:
    with contextlib.suppress(BusWireError):
        decode_link(data)


def test_subjects_hold_dots_in_ids_as_one_token() -> None:
    subject = where_subject("team.devbox", "reg-1")
    assert subject.count(".") == 3 and subject.startswith("codexexec.where.")


# -- the link connection's NATS protocol (nats_wire.py) -----------------------------------------

_SERVER_BYTES = (
    b'INFO {"server_id":"x","max_payload":1048576}\r\n'
    b"PING\r\n"
    b"MSG cx.node.a 1 5\r\nhello\r\n"
    b"+OK\r\n"
    b"MSG cx.node.a 1 reply.to 0\r\n\r\n"
    b"HMSG cx.node.a 1 18 23\r\nNATS/1.0\r\nK: v\r\n\r\nworld\r\n"
    b"PONG\r\n"
    b"-ERR 'Authorization Violation'\r\n"
)


@given(st.lists(st.integers(min_value=0, max_value=len(_SERVER_BYTES)), max_size=12))
def test_the_server_stream_reads_the_same_however_it_is_cut(cuts: list[int]) -> None:
    stream = nw.ServerStream()
    events = []
    bounds = [0, *sorted(cuts), len(_SERVER_BYTES)]
    for start, end in itertools.pairwise(bounds):
        events += stream.feed(_SERVER_BYTES[start:end])
    assert events == [
        nw.Info({"server_id": "x", "max_payload": 1048576}),
        nw.Ping(),
        nw.Message("cx.node.a", "1", b"hello"),
        nw.Message("cx.node.a", "1", b""),
        nw.Message("cx.node.a", "1", b"world"),
        nw.Pong(),
        nw.ServerError("Authorization Violation"),
    ]


@pytest.mark.parametrize(
    "wire",
    [
        b"MSG a 1 10\r\nshort\r\nXXXXX",  # the size says 10, no CRLF after 10 bytes
        b"MSG a 1\r\n",  # no size
        b"MSG a 1 x\r\n",  # a size that is not a number
        b"MSG a 1 2000000\r\n",  # over max_payload
        b"INFO [1]\r\n",
        b"WHAT\r\n",
        b"X" * 70_000,  # a control line with no end in sight
    ],
)
def test_what_the_client_cannot_read_is_refused(wire: bytes) -> None:
    with pytest.raises(nw.NatsWireError):
        nw.ServerStream().feed(wire)


def test_commands_are_what_nats_expects() -> None:
    assert b"".join(nw.pub_command("cx.node.a", b"abc")) == b"PUB cx.node.a 3\r\nabc\r\n"
    assert nw.sub_command("cx.node.a", "1") == b"SUB cx.node.a 1\r\n"
    assert nw.connect_command({"verbose": False}) == b'CONNECT {"verbose":false}\r\n'
