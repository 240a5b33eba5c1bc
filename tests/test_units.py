"""Pure pieces where an edge is easier to pin without a server."""

from __future__ import annotations

import base64
import binascii
import json

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from codexexec.client.events import Closed, EventBuffer, Exited, Output, OutputGap, ReadResponse
from codexexec.client.handle import InvalidHandle, ProcessHandle
from codexexec.client.process import RemoteProcess
from codexexec.protocol import jsonrpc
from codexexec.protocol.base64_codec import (
    Base64Error,
    base64_bytes,
    base64_json,
    decode_base64,
    encode_base64,
)
from codexexec.protocol.limits import (
    RETAINED_OUTPUT_BYTES_PER_PROCESS,
    RETAINED_OUTPUT_CHUNKS_PER_PROCESS,
)
from codexexec.server.output import OutputLog


def test_value_limit_is_exact() -> None:
    at_limit = json.dumps({"id": 1, "method": "m", "params": [0] * (262_144 - 4)})
    assert jsonrpc.decode_json(at_limit)["id"] == 1
    over = json.dumps({"id": 1, "method": "m", "params": [0] * (262_144 - 3)})
    with pytest.raises(jsonrpc.MalformedMessage, match="exceeds the limit of 262144 JSON values"):
        jsonrpc.decode_json(over)


def test_large_scalars_are_fine() -> None:
    message = json.dumps({"id": 1, "method": "m", "params": {"chunk": "A" * 10_000_000}})
    assert len(jsonrpc.decode_json(message)["params"]["chunk"]) == 10_000_000


def test_nesting_check_ignores_brackets_inside_strings() -> None:
    message = json.dumps({"id": 1, "method": "m", "params": {"s": "[" * 1000 + '\\"{' * 100}})
    assert jsonrpc.decode_json(message)["id"] == 1


def test_classification() -> None:
    assert isinstance(jsonrpc.classify({"id": "a", "method": "m"}), jsonrpc.Request)
    assert isinstance(jsonrpc.classify({"method": "m"}), jsonrpc.Notification)
    assert isinstance(jsonrpc.classify({"id": 1, "result": None}), jsonrpc.Response)
    error = jsonrpc.classify({"id": 1, "error": {"code": -1, "message": "x"}})
    assert isinstance(error, jsonrpc.ErrorResponse) and error.message == "x"
    for bad in ({"id": True, "method": "m"}, {"id": 1.5, "method": "m"}, {}, [], 3):
        with pytest.raises(jsonrpc.MalformedMessage):
            jsonrpc.classify(bad)


def test_output_log_evicts_by_bytes_and_by_count() -> None:
    log = OutputLog()
    for _ in range(3):
        log.append("stdout", b"x" * (RETAINED_OUTPUT_BYTES_PER_PROCESS // 2))
    kept = log.retained()
    assert [c.seq for c in kept] == [2, 3]
    small = OutputLog()
    for _ in range(RETAINED_OUTPUT_CHUNKS_PER_PROCESS + 10):
        small.append("stdout", b"y")
    assert len(small.retained()) == RETAINED_OUTPUT_CHUNKS_PER_PROCESS
    assert small.retained()[0].seq == 11


def test_output_log_read_rules() -> None:
    log = OutputLog()
    log.append("stdout", b"aaaa")
    log.append("stderr", b"bbbb")
    log.record_exit(0)
    log.record_close()
    zero = log.snapshot(0, 0)
    assert [c.seq for c in zero.chunks] == [1] and zero.next_seq == 2  # maxBytes 0 acts like 1
    assert log.snapshot(0, None).next_seq == 5
    assert log.snapshot(2, 10).chunks == [] and log.snapshot(2, 10).next_seq == 5


def test_handles_round_trip_and_reject_garbage() -> None:
    handle = ProcessHandle("ws://127.0.0.1:4000", "sess-1", "cx-1")
    assert ProcessHandle.parse(str(handle)) == handle
    for text in ("", "ws://x", "ws://x#s", "#s/p", "ws://x#/p"):
        with pytest.raises(InvalidHandle):
            ProcessHandle.parse(text)


# Text near base64: the alphabet, padding, and a few characters that must be refused.
_NEAR_BASE64 = st.text(
    alphabet=st.sampled_from(
        "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/=\n -_√"
    ),
    max_size=24,
)


@given(_NEAR_BASE64)
@settings(max_examples=3000)
def test_base64_decoding_is_exactly_the_strict_decoders(text: str) -> None:
    """The fast path accepts and refuses exactly what the strict decoder does (a harness
    relies on a bad chunk being refused, never half-decoded), with the same result."""
    try:
        expected: bytes | None = binascii.a2b_base64(text, strict_mode=True)
    except (binascii.Error, ValueError):
        expected = None
    try:
        got: bytes | None = decode_base64(text)
    except Base64Error:
        got = None
    assert got == expected


@given(st.binary(max_size=4096))
def test_base64_round_trips_in_every_form(data: bytes) -> None:
    standard = base64.b64encode(data)
    assert base64_bytes(data) == standard
    assert encode_base64(data) == standard.decode()
    assert msgspec.json.encode({"c": base64_json(data)}) == b'{"c":"' + standard + b'"}'
    assert decode_base64(standard.decode()) == data


async def test_events_pushed_out_of_order_are_taken_in_seq_order() -> None:
    """Codex 0.169 pushes an exit ahead of output numbered before it (seen through the
    relay: exited seq 8101 arrived before output seq 8100). The reader takes by seq, so
    the output must not be mistaken for a duplicate and dropped."""
    buffer = EventBuffer(complete=True)
    for event in (
        Output(1, "stdout", b"a"),
        Exited(3, 0, False),
        Output(2, "stdout", b"b"),
        Closed(4),
    ):
        await buffer.push(event)
    assert buffer.holds(Exited) and buffer.holds(Closed)
    taken = []
    cursor = 0
    while (event := buffer.take_next(cursor)) is not None:
        taken.append(event)
        cursor = event.seq or cursor
    assert [e.seq for e in taken] == [1, 2, 3, 4]
    assert [e.data for e in taken if isinstance(e, Output)] == [b"a", b"b"]


class _ExitedAndClosedClient:
    """What a client holds for a process whose close event (seq 3) arrived before its exit
    event (seq 2), as Codex may push them; its retained output ends at seq 1."""

    connected = True
    lost_reason = ""

    def __init__(self, buffer: EventBuffer) -> None:
        self._buffer = buffer

    def buffer(self, process_id: str) -> EventBuffer:
        return self._buffer

    async def read(self, process_id: str, **_: object) -> ReadResponse:
        return ReadResponse([], 4, True, 0, True, None, False)


async def test_an_exit_not_yet_received_explains_its_hole_in_the_seqs() -> None:
    buffer = EventBuffer(complete=True)
    for event in (Output(1, "stdout", b"a"), Closed(3)):
        await buffer.push(event)
    process = RemoteProcess(_ExitedAndClosedClient(buffer), "p", None)  # type: ignore[arg-type]
    events = [event async for event in process.events()]
    assert not any(isinstance(event, OutputGap) for event in events), events  # nothing was lost
    assert [type(event) for event in events] == [Output, Exited, Closed]


def test_output_notification_fast_path_round_trips_and_refuses_other_layouts() -> None:
    """`process/output` in the server's own layout is decoded without JSON; any other layout
    (Codex's field order, an escaped id, bad base64) goes the general way, unchanged."""
    from codexexec.protocol import output_notification
    from codexexec.protocol.jsonrpc import Notification, encode_json, parse_message

    for data in (b"x", bytes(range(256)) * 100, b"\xff\xfe"):
        raw = output_notification.encode(encode_json("proc-1"), 7, "stderr", data)
        assert output_notification.decode(raw) == ("proc-1", 7, "stderr", data)
        message = parse_message(raw)
        assert isinstance(message, Notification)
        assert message.params == {
            "processId": "proc-1",
            "seq": 7,
            "stream": "stderr",
            "chunk": data,
        }
    other_order = b'{"method":"process/output","params":{"seq":1,"processId":"p","stream":"stdout","chunk":"eA=="}}'
    escaped = output_notification.encode(encode_json('p"1'), 1, "stdout", b"x")
    bad_base64 = output_notification.encode(encode_json("p"), 1, "stdout", b"x").replace(
        b"eA==", b"e!=="
    )
    for raw in (other_order, escaped, bad_base64):
        assert output_notification.decode(raw) is None
    general = parse_message(other_order)
    assert isinstance(general, Notification) and general.params["chunk"] == "eA=="
    assert parse_message(escaped).params["processId"] == 'p"1'  # type: ignore[union-attr]


def test_json_limits_are_still_enforced_after_decoding() -> None:
    import pytest

    from codexexec.protocol.jsonrpc import MalformedMessage, decode_json

    deep = b'{"a":' * 127 + b"1" + b"}" * 127
    decode_json(deep)  # 127 levels pass
    with pytest.raises(MalformedMessage, match="recursion limit exceeded at line 1 column"):
        decode_json(b'{"a":' * 128 + b"1" + b"}" * 128)
    with pytest.raises(MalformedMessage, match="recursion limit exceeded"):
        decode_json(b"[" * 5000 + b"]" * 5000)
    with pytest.raises(MalformedMessage, match="limit of 262144 JSON values"):
        decode_json(b"[" + b"0," * 262144 + b"0]")


def test_deadlines_on_a_fake_clock() -> None:
    from codexexec.cli.deadlines import Deadlines

    none = Deadlines.begin(None, None, 100.0)
    assert not none.active and none.wait(1e9) is None and none.due(1e9) is None
    both = Deadlines.begin(10.0, 3.0, 100.0)
    assert both.wait(100.0) == 3.0
    assert both.due(102.9) is None
    both.output(102.0)  # output pushes the idle limit, never the wall clock
    assert both.wait(104.0) == 1.0
    assert both.due(105.0) == "idle-timeout"
    both.output(105.0)
    both.output(108.0)
    assert both.wait(109.0) == 1.0  # the wall clock comes first now
    assert both.due(110.0) == "timeout"  # both reached: the wall clock is named


def test_env_settings_read_as_docker_reads_them() -> None:
    import pytest

    from codexexec.cli.env_vars import EnvVarError, parse_settings

    files = [("a.env", "# comment\nX=1\n\n  \nY= spaced \nZ=a=b\nFROMSHELL\nABSENT\n")]
    got = parse_settings(files, ["X=2", "EMPTY="], {"FROMSHELL": "s"})
    assert got == {"X": "2", "Y": " spaced ", "Z": "a=b", "FROMSHELL": "s", "EMPTY": ""}
    for bad in ("=v", "A B=1", "Y = spaced", "A\0=1", "A=\0"):
        with pytest.raises(EnvVarError):
            parse_settings([], [bad], {})


def test_handshake_gate_pauses_on_the_budget_and_resumes_on_a_fake_clock() -> None:
    """docs/relay-protocol.md §5: the 8th charged failure pauses every new handshake for the
    cool-down; the socket's other refusals are uncharged; after the pause the count restarts."""
    from codexexec.relay.admission import HandshakeGate, Refusal

    gate = HandshakeGate(budget=8, cooldown=10.0)
    assert gate.check(100.0, None, 0) is None
    assert gate.check(100.0, "active", 0) == Refusal("stream_active")
    assert gate.check(100.0, None, 127) is None  # waiting for a /validate slot is fine
    assert gate.check(100.0, None, 128) == Refusal("too_many_pending_handshakes")
    assert [gate.charge(100.0 + i) for i in range(8)] == [False] * 7 + [True]
    paused_at = 107.0
    assert gate.failures == 0 and gate.paused(paused_at)
    # Even a handshake that would pass everything else is refused, without a charge.
    assert gate.check(paused_at + 9.99, None, 0) == Refusal("cooldown")
    assert gate.failures == 0
    assert not gate.paused(paused_at + 10.0)
    assert gate.check(paused_at + 10.0, None, 0) is None
    assert gate.charge(paused_at + 11) is False  # one new failure does not pause again


def drain_body(framing: str, length: int, wire: bytes, **split: int) -> tuple[bytes, bytes]:
    """Feed ``wire`` to a BodyReader as a socket would deliver it: (forwarded, left over)."""
    from codexexec.http1.body import BodyReader

    reader = BodyReader(framing, length)  # type: ignore[arg-type]
    out, rest = b"", wire
    while (need := reader.need()) is not None:
        if need.kind == "line":
            end = rest.find(b"\r\n")
            take = len(rest) if end < 0 else end + 2
        elif need.kind == "exactly":
            take = need.limit
        else:
            take = min(need.limit, split.get("some", need.limit))
        piece, rest = rest[:take], rest[take:]
        out += reader.feed(piece)
    return out, rest


def test_http_body_reader_frames_bodies_without_sockets() -> None:
    import pytest

    from codexexec.http1.body import BodyError

    chunked = b"4\r\nWiki\r\n5;ext=1\r\npedia\r\n0\r\nX-Trailer: 1\r\n\r\nNEXT"
    assert drain_body("chunked", 0, chunked) == (chunked[:-4], b"NEXT")
    assert drain_body("length", 5, b"helloNEXT", some=2) == (b"hello", b"NEXT")
    assert drain_body("close", 0, b"all of it") == (b"all of it", b"")
    assert drain_body("none", 0, b"NEXT") == (b"", b"NEXT")
    for bad in (b"zz\r\nab\r\n", b"2\r\nabXY", b"-1\r\n", b"2\r\n"):
        with pytest.raises(BodyError):
            drain_body("chunked", 0, bad)
    with pytest.raises(BodyError, match="closed inside the body"):
        drain_body("length", 10, b"short")
    with pytest.raises(BodyError, match="trailer section too large"):
        drain_body("chunked", 0, b"0\r\n" + b"X-A: " + b"a" * 70000 + b"\r\n\r\n")


def socks_handshake(wire: bytes) -> tuple[object, bytes, bytes]:
    """(request, what was answered, bytes left unread) for a client that sent ``wire``."""
    from codexexec.network.socks5 import Socks5Handshake

    handshake, answered, rest = Socks5Handshake(), b"", wire
    while (count := handshake.need()) is not None:
        assert len(rest) >= count, "the parser asked for more than the client sent"
        answered += handshake.feed(rest[:count])
        rest = rest[count:]
    return handshake.request, answered, rest


def test_socks5_handshake_parses_without_sockets() -> None:
    import pytest

    from codexexec.network.socks5 import Request, SocksError

    connect = b"\x05\x01\x00" + b"\x05\x01\x00\x03\x0bexample.com\x01\xbb"
    assert socks_handshake(connect + b"DATA") == (
        Request(1, "example.com", 443, None),
        b"\x05\x00",
        b"DATA",
    )
    labelled = (
        b"\x05\x02\x00\x02" + b"\x01\x03tok\x02pw" + b"\x05\x03\x00\x01\x7f\x00\x00\x01\x00\x35"
    )
    assert socks_handshake(labelled) == (
        Request(3, "127.0.0.1", 53, "tok"),
        b"\x05\x02\x01\x00",
        b"",
    )
    assert socks_handshake(b"\x04\x01") == (None, b"", b"\x01")  # SOCKS4: closed unanswered
    assert socks_handshake(b"\x05\x01\x01") == (None, b"\x05\xff", b"")  # no method we take
    assert socks_handshake(b"\x05\x01\x02\x02\x00\x00")[1] == b"\x05\x02\x01\x01"  # bad sub-version
    for wire, code in (
        (b"\x05\x01\x00\x05\x02\x00\x01\x01\x02\x03\x04\x00\x50", 0x07),  # BIND
        (b"\x05\x01\x00\x05\x01\x00\x09", 0x08),  # unknown address type
        (b"\x05\x01\x00\x05\x01\x00\x03\x00", 0x04),  # empty name
    ):
        with pytest.raises(SocksError) as raised:
            socks_handshake(wire)
        assert raised.value.reply == code


async def test_output_reaches_an_in_process_peer_as_is_and_others_as_json() -> None:
    """An OutputMessage goes through the connection's outbox unencoded to the in-process
    transport, and as the very bytes of the wire format to any other (#17)."""
    from codexexec.protocol.jsonrpc import encode_json, parse_message
    from codexexec.protocol.output_notification import OutputMessage, encode
    from codexexec.rpc.outbox import Outbox
    from codexexec.transport.memory import memory_pair

    message = OutputMessage("p-1", encode_json("p-1"), 3, "stdout", b"\x00\xffdata")

    class Wire:
        peer = "test"

        def __init__(self) -> None:
            self.sent: list[bytes] = []

        async def send(self, data: bytes) -> None:
            self.sent.append(data)

        async def receive(self) -> None:
            return None

        async def close(self) -> None:
            pass

    wire = Wire()
    outbox = Outbox(wire)  # type: ignore[arg-type]
    outbox.post(message)
    await outbox.flush()
    assert wire.sent == [encode(message.quoted_id, 3, "stdout", b"\x00\xffdata")]
    outbox.close()

    client_end, server_end = memory_pair()
    local = Outbox(server_end)
    local.post(message)
    received = await client_end.receive()
    assert received is message
    notification = parse_message(received)
    assert notification.params == {  # type: ignore[union-attr]
        "processId": "p-1",
        "seq": 3,
        "stream": "stdout",
        "chunk": b"\x00\xffdata",
    }
    local.close()


def test_every_fs_method_has_its_params_and_its_handler() -> None:
    """The server decodes `fs/*` params from one table and dispatches from another: they
    must name the same methods."""
    from codexexec.protocol.fs_messages import METHOD_PARAMS
    from codexexec.sandbox.floor import SandboxSettings
    from codexexec.server.audit import NO_AUDIT
    from codexexec.server.fs.methods import FileSystemMethods

    files = FileSystemMethods(lambda *_: None, SandboxSettings(), NO_AUDIT)
    try:
        assert set(files.handlers()) == set(METHOD_PARAMS)
    finally:
        files.close()


async def test_a_pushing_producer_is_held_back_until_the_queue_falls_to_its_resume_mark() -> None:
    """Output callbacks cannot wait: they push, then pause while held back, and are let
    go once the queue has drained to its low-water mark, not at every message taken."""
    from codexexec.bounded_queue import BoundedQueue

    box: BoundedQueue[bytes] = BoundedQueue(100, 10, resume_bytes=4)
    resumed: list[str] = []
    for _ in range(4):
        box.push(b"abc")  # 12 bytes: past the bound, yet queued
    assert box.held_back() and box.queued_bytes == 12
    box.when_writable(lambda: resumed.append("go"))
    await box.get()
    await box.get()
    assert box.held_back() and resumed == []  # 6 bytes: below the bound, above the mark
    await box.get()
    assert not box.held_back() and resumed == ["go"]
    box.when_writable(lambda: resumed.append("at once"))
    assert resumed == ["go", "at once"]
    box.push(b"x" * 20)
    late: list[str] = []
    box.when_writable(lambda: late.append("released"))
    box.close(drain=False)  # closing lets every waiting producer go
    assert late == ["released"] and await box.get() is None


def test_shown_urls_never_carry_credentials_queries_or_fragments() -> None:
    from codexexec.shown_urls import origin, without_secrets

    secret = "https://user:pw@example.com:8443/v1/x?token=abc#frag"
    assert origin(secret) == "https://example.com:8443"
    assert without_secrets(secret) == "https://example.com:8443/v1/x"
    assert origin("nats://tok@[::1]:4222") == "nats://[::1]:4222"
    assert origin("/relative?sig=1") == "(relative URL)"
    assert without_secrets("http://h:99999/p") == "http://h/p"  # a bad port is left out
    assert without_secrets("http://[::1") == "<unparseable>"


async def test_a_large_reply_is_queued_while_output_keeps_coming() -> None:
    """A reply bigger than the queue's bounds goes out once producers may go on, not when
    the queue is empty: with output streaming it never is."""
    import asyncio

    from codexexec.rpc.outbox import HIGH_WATER_BYTES, Outbox

    class SlowWire:
        peer = "slow"

        async def send(self, data: bytes) -> None:
            await asyncio.sleep(0.001)

        async def receive(self) -> None:
            return None

        async def close(self) -> None:
            pass

    outbox = Outbox(SlowWire())  # type: ignore[arg-type]
    stop = asyncio.Event()

    async def producer() -> None:  # as a process's output: post, hold back while congested
        while not stop.is_set():
            outbox.post(b"o" * 65536)
            if outbox.congested():
                resumed = asyncio.Event()
                outbox.when_drained(resumed.set)
                await resumed.wait()
            await asyncio.sleep(0)

    producers = [asyncio.ensure_future(producer()) for _ in range(4)]
    try:
        await asyncio.wait_for(outbox.put(b"r" * (HIGH_WATER_BYTES + 1)), 5)
    finally:
        stop.set()
        for task in producers:
            task.cancel()
        outbox.close()


def test_a_relay_bundle_shows_no_signature() -> None:
    """Its URL is signed (whoever holds it may open the relay socket): a log line or a
    traceback that prints the bundle shows the relay's origin only."""
    from codexexec.remote.registry import RelayBundle

    bundle = RelayBundle("env-1", "ws://relay:9/relay?role=harness&sig=SIG-SECRET", "p", "reg")
    assert "SIG-SECRET" not in repr(bundle) and "ws://relay:9" in repr(bundle)
    assert bundle.url.endswith("SIG-SECRET")  # the value itself is intact
