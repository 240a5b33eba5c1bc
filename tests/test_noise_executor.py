"""codexexec's executor over Noise: a real rendezvous, a real ExecServer, real handshakes.

The stack runs in this process (rendezvous, executor relay, server) so the frames the
rendezvous routes can be tapped and inspected; harnesses are codexexec's own client or a raw
harness built here from the protocol pieces, which can misbehave on purpose.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from websockets.asyncio.client import ClientConnection

from codexexec.client import ExecServerClient, ExecServerError, Exited, Output
from codexexec.noise.errors import NoiseError
from codexexec.noise.hybrid_ik import HybridIKInitiator, build_prologue
from codexexec.noise.keys import NoiseChannelPublicKey, StaticIdentity
from codexexec.noise.profiles import ClassicParty, HybridParty
from codexexec.noise.transport import NoiseTransport
from codexexec.relay.frames import (
    RelayMessageFrame,
    encode,
    encode_data,
    handshake_frame,
    parse,
    resume_frame,
    stream_header,
)
from codexexec.relay.framing import records
from codexexec.relay.limits import RESET_REASON
from codexexec.remote.registry import connect_harness_noise
from codexexec.rendezvous import RendezvousOptions, start_rendezvous
from codexexec.rendezvous.auth import TokenTable
from codexexec.rendezvous.store import Store
from codexexec.server.app import ExecServer
from codexexec.transport import relay as relay_transport
from codexexec.transport.base import MessageTransport
from codexexec.transport.noise_harness import connect_noise_harness
from codexexec.transport.relay import RELAY_MALFORMED_PREFIX, open_relay_socket
from codexexec.transport.relay_executor import ExecutorRelay

TOKEN = "noise-executor-test-token-5e1d"
OTHER_TOKEN = "noise-executor-test-token-other-77c2"
ENV = "devbox"


@dataclass
class Stack:
    url: str
    identity: StaticIdentity
    relay: ExecutorRelay
    routed: list[tuple[str, bytes]] = field(default_factory=list)
    core: Any = None  # the rendezvous's routing core (service.Relay)


@pytest.fixture
async def stack(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, request: pytest.FixtureRequest
) -> AsyncIterator[Stack]:
    (tmp_path / "tokens").write_text(f"{TOKEN}\n{OTHER_TOKEN}\n")
    store = Store(tmp_path / "rv.sqlite3")
    options = RendezvousOptions(
        heartbeat=None,
        close_timeout=2.0,
        max_streams_per_harness=32,
        **getattr(request, "param", {}),
    )
    running = await start_rendezvous(
        "http://127.0.0.1:0", TokenTable.load(tmp_path / "tokens"), store, options
    )
    routed: list[tuple[str, bytes]] = []
    relay_core = running.state.relay
    to_executor, to_harness = relay_core.from_harness, relay_core.from_executor

    async def tap_harness(peer: Any, data: bytes) -> None:
        routed.append(("harness", bytes(data)))
        await to_executor(peer, data)

    async def tap_executor(peer: Any, data: bytes) -> None:
        routed.append(("executor", bytes(data)))
        await to_harness(peer, data)

    relay_core.from_harness = tap_harness  # type: ignore[method-assign]
    relay_core.from_executor = tap_executor  # type: ignore[method-assign]

    server = ExecServer()

    async def serve(stream: MessageTransport) -> None:
        await server.serve(stream, malformed_prefix=RELAY_MALFORMED_PREFIX)

    ready = asyncio.Event()
    identity = StaticIdentity.generate()
    relay = ExecutorRelay(
        running.url, ENV, TOKEN, serve, on_ready=lambda _: ready.set(), party=HybridParty(identity)
    )
    task = asyncio.create_task(relay.run())
    monkeypatch.setenv("CODEXEXEC_REGISTRY_TOKEN", TOKEN)
    try:
        await asyncio.wait_for(ready.wait(), 10)
        await _until_online(running.url)
        yield Stack(running.url, identity, relay, routed, relay_core)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await server.aclose()
        await running.stop()
        store.close()


async def _until_online(url: str) -> None:
    for _ in range(100):
        try:
            await connect_harness_noise(
                url, ENV, TOKEN, StaticIdentity.generate().channel_public_key().to_json_obj()
            )
            return
        except Exception:
            await asyncio.sleep(0.05)
    raise AssertionError("the executor never came online")


# -- a raw harness that can misbehave ---------------------------------------------------------


@dataclass
class RawStream:
    ws: ClientConnection
    stream_id: str
    initiator: HybridIKInitiator
    message1: bytes
    authorization: str
    cipher: NoiseTransport | None = None
    next_seq: int = 0
    pending: bytearray = field(default_factory=bytearray)  # decrypted, not yet returned
    records: int = 0  # data frames received

    async def frame(self, timeout: float = 5.0) -> RelayMessageFrame:
        """The next frame of this stream (others on the socket are skipped)."""
        async with asyncio.timeout(timeout):
            while True:
                raw = await self.ws.recv()
                assert isinstance(raw, bytes)
                frame = parse(raw, strict=False)
                if frame.stream_id == self.stream_id:
                    return frame

    async def finish_handshake(self) -> None:
        frame = await self.frame()
        assert frame.WhichOneof("body") == "handshake", frame
        self.cipher = self.initiator.read_message2(frame.handshake.payload).transport

    async def send_record(self, plaintext: bytes, seq: int | None = None) -> bytes:
        assert self.cipher is not None
        ciphertext = self.cipher.encrypt(plaintext)
        await self.send_ciphertext(ciphertext, seq)
        return ciphertext

    async def send_ciphertext(self, ciphertext: bytes, seq: int | None = None) -> None:
        if seq is None:
            seq, self.next_seq = self.next_seq, self.next_seq + 1
        await self.ws.send(encode_data(stream_header(self.stream_id), seq, ciphertext))

    async def request(self, message: dict[str, Any]) -> None:
        for record in records([json.dumps(message).encode()]):
            await self.send_record(bytes(record))

    async def reply(self) -> dict[str, Any]:
        """Decrypt data frames until one whole JSON-RPC message is in (a record may hold
        more: they wait for the next call)."""
        assert self.cipher is not None
        while True:
            if len(self.pending) >= 4:
                size = int.from_bytes(self.pending[:4], "big")
                if len(self.pending) >= 4 + size:
                    decoded: dict[str, Any] = json.loads(self.pending[4 : 4 + size])
                    del self.pending[: 4 + size]
                    return decoded
            frame = await self.frame()
            assert frame.WhichOneof("body") == "data", frame
            self.records += 1
            self.pending += self.cipher.decrypt(frame.data.payload)

    async def expect_reset(self) -> None:
        frame = await self.frame()
        assert frame.WhichOneof("body") == "reset", frame
        assert frame.reset.reason == RESET_REASON


async def open_raw(
    stack: Stack,
    *,
    ws: ClientConnection | None = None,
    identity: StaticIdentity | None = None,
    authorize: StaticIdentity | None = None,
    pinned: StaticIdentity | None = None,
    stream_id: str | None = None,
    send: bool = True,
    token: str = TOKEN,
) -> RawStream:
    """Fetch a bundle (authorizing ``authorize``'s key), build message 1 as ``identity``
    for the executor key ``pinned`` (default: the one the registry returned), send it."""
    identity = identity or StaticIdentity.generate()
    authorized = authorize or identity
    bundle = await connect_harness_noise(
        stack.url, ENV, token, authorized.channel_public_key().to_json_obj()
    )
    executor_key = (
        pinned.public_key
        if pinned is not None
        else NoiseChannelPublicKey.from_json_obj(bundle["executor_public_key"]).decode()
    )
    if ws is None:
        ws = await open_relay_socket(bundle["url"], ENV)
    stream_id = stream_id or str(uuid.uuid4())
    prologue = build_prologue(ENV, bundle["executor_registration_id"], stream_id)
    initiator = HybridIKInitiator(identity, executor_key, prologue)
    authorization = bundle["harness_key_authorization"]
    message1 = initiator.write_message1(authorization.encode())
    raw = RawStream(ws, stream_id, initiator, message1, authorization)
    if send:
        await ws.send(encode(resume_frame(stream_id, 0)))
        await ws.send(encode(handshake_frame(stream_id, message1)))
    return raw


async def initialized(raw: RawStream) -> dict[str, Any]:
    await raw.finish_handshake()
    await raw.request({"id": 1, "method": "initialize", "params": {"clientName": "raw"}})
    reply = await raw.reply()
    await raw.request({"method": "initialized", "params": {}})
    return reply


# -- the happy path and what the relay sees ---------------------------------------------------


async def test_commands_run_over_noise_and_the_relay_routes_only_ciphertext(
    stack: Stack,
) -> None:
    client = await ExecServerClient.connect(f"{ENV}@{stack.url}")
    process = await client.start(
        # It reads its stdin first: a command that could exit before the write arrived
        # would make the write fail ("failed to write to process stdin"), as it should.
        [
            "sh",
            "-c",
            "read line; echo MARK-OUT-7f3a; head -c 200000 /dev/zero | tr '\\0' x; exit 4",
        ],
        cwd="/tmp",
        pipe_stdin=True,
    )
    await client.write(process.process_id, b"MARK-STDIN-c0de\n")
    output = b""
    exit_code = None
    async for event in process.events():
        if isinstance(event, Output):
            output += event.data
        elif isinstance(event, Exited):
            exit_code = event.exit_code
    await client.close()
    assert output.startswith(b"MARK-OUT-7f3a\n") and output.count(b"x") == 200_000
    assert exit_code == 4

    secrets = [
        b"MARK-OUT-7f3a",
        b"MARK-STDIN-c0de",
        base64.b64encode(b"MARK-STDIN-c0de\n"),
        base64.b64encode(b"MARK-OUT-7f3a\n")[:12],
        b"xxxxxxxxxxxx",
        b"process/start",
        b"initialize",
        b"sessionId",
        b'"method"',
    ]
    kinds: dict[tuple[str, str], int] = {}
    for direction, data in stack.routed:
        frame = parse(data, strict=False)
        kind = frame.WhichOneof("body")
        kinds[direction, kind] = kinds.get((direction, kind), 0) + 1
        for secret in secrets:
            assert secret not in data, (direction, kind, secret)
        if kind == "data":
            assert len(frame.data.payload) >= 17  # at least one byte plus the AES-GCM tag
    assert kinds["harness", "handshake"] == 1 and kinds["executor", "handshake"] == 1
    assert kinds["harness", "data"] >= 3 and kinds["executor", "data"] >= 5


async def test_an_exit_and_the_close_after_it_share_one_relay_frame(stack: Stack) -> None:
    """Messages queued together go out in one record (docs/relay-protocol.md §3.2): a
    command's exit and close cost one frame through the relay, not two."""
    raw = await open_raw(stack)
    await initialized(raw)
    params = {
        "processId": "p1",
        "argv": ["/bin/true"],
        "cwd": "file:///tmp",
        "env": {},
        "tty": False,
        "arg0": None,
    }
    await raw.request({"id": 2, "method": "process/start", "params": params})
    assert (await raw.reply())["id"] == 2
    before = raw.records
    exited, closed = await raw.reply(), await raw.reply()
    assert (exited["method"], exited["params"]["exitCode"]) == ("process/exited", 0)
    assert closed["method"] == "process/closed"
    assert raw.records - before == 1
    await raw.ws.close()


async def test_hundreds_of_requests_sent_at_once_are_all_answered(stack: Stack) -> None:
    """The client's outbox sends what is queued in shared records; a record of more messages
    than the executor's stream holds (256) would have reset the stream."""
    client = await ExecServerClient.connect(f"{ENV}@{stack.url}")
    params = {"path": "file:///tmp"}
    answers = await asyncio.gather(*(client.call("fs/getMetadata", params) for _ in range(600)))
    assert len(answers) == 600 and all(answer["isDirectory"] for answer in answers)
    await client.close()


async def test_a_stream_flooding_its_executor_is_reset_alone(
    stack: Stack, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What a stream's server has not read yet is bounded (transport/relay.py INBOX_*): past
    it, that stream is reset and the socket goes on serving the others."""
    monkeypatch.setattr(relay_transport, "INBOX_MESSAGES", 4)
    raw = await open_raw(stack)
    await initialized(raw)
    request = {"id": 9, "method": "fs/getMetadata", "params": {"path": "file:///tmp"}}
    (record,) = records([json.dumps(request).encode()] * 10)  # ten at once, one record
    await raw.send_record(record)
    await raw.expect_reset()
    other = await open_raw(stack)
    assert (await initialized(other))["id"] == 1


async def test_a_persisted_identity_keeps_its_public_key(tmp_path: Path) -> None:
    from codexexec.noise.identity_file import IdentityFileError, load_or_create_identity

    path = tmp_path / "executor.noise"
    first = load_or_create_identity(str(path))
    assert path.stat().st_mode & 0o777 == 0o600
    second = load_or_create_identity(str(path))
    assert first.channel_public_key() == second.channel_public_key()
    path.chmod(0o644)
    with pytest.raises(IdentityFileError, match="chmod 600"):
        load_or_create_identity(str(path))
    path.chmod(0o600)
    path.write_text("{}")
    with pytest.raises(IdentityFileError, match="not a codexexec identity"):
        load_or_create_identity(str(path))


# -- bad input: each resets only its own stream -----------------------------------------------


async def test_tampered_message1_is_reset_and_the_socket_keeps_serving(stack: Stack) -> None:
    bad = await open_raw(stack, send=False)
    tampered = bytearray(bad.message1)
    tampered[100] ^= 0x01
    await bad.ws.send(encode(resume_frame(bad.stream_id, 0)))
    await bad.ws.send(encode(handshake_frame(bad.stream_id, bytes(tampered))))
    await bad.expect_reset()
    good = await open_raw(stack, ws=bad.ws)
    assert "sessionId" in (await initialized(good))["result"]


async def test_wrong_pinned_executor_key_is_reset(stack: Stack) -> None:
    raw = await open_raw(stack, pinned=StaticIdentity.generate())
    await raw.expect_reset()


async def test_a_harness_key_the_registry_did_not_authorize_is_reset(stack: Stack) -> None:
    # The authorization was issued for another key: the handshake decrypts, /validate says no.
    raw = await open_raw(stack, authorize=StaticIdentity.generate())
    await raw.expect_reset()


async def test_replayed_message1_opens_nothing(stack: Stack) -> None:
    raw = await open_raw(stack)
    assert "result" in await initialized(raw)
    # The same message 1 on the same (live) stream, and on a fresh stream id.
    await raw.ws.send(encode(handshake_frame(raw.stream_id, raw.message1)))
    await raw.expect_reset()
    other = str(uuid.uuid4())
    replay = RawStream(raw.ws, other, raw.initiator, raw.message1, raw.authorization)
    await raw.ws.send(encode(handshake_frame(other, raw.message1)))
    await replay.expect_reset()


async def test_data_before_the_handshake_is_reset(stack: Stack) -> None:
    raw = await open_raw(stack, send=False)
    await raw.ws.send(encode(resume_frame(raw.stream_id, 0)))
    await raw.ws.send(encode_data(stream_header(raw.stream_id), 0, b"\x00" * 40))
    await raw.expect_reset()


async def test_replayed_and_reordered_records(stack: Stack) -> None:
    raw = await open_raw(stack)
    await raw.finish_handshake()
    message = records([b'{"id":1,"method":"initialize","params":{"clientName":"raw"}}'])
    first = await raw.send_record(bytes(next(iter(message))))
    await raw.send_ciphertext(first, seq=0)  # a replayed record: dropped, the stream lives
    assert "sessionId" in (await raw.reply())["result"]
    # Two requests sent out of order (seq 2 before seq 1) are decrypted in order.
    assert raw.cipher is not None
    second = raw.cipher.encrypt(_record({"method": "initialized", "params": {}}))
    third = raw.cipher.encrypt(_record({"id": 2, "method": "environment/info", "params": None}))
    await raw.send_ciphertext(third, seq=2)
    await raw.send_ciphertext(second, seq=1)
    assert "result" in await raw.reply()


async def test_tampered_record_resets_the_stream_only(stack: Stack) -> None:
    keep = await open_raw(stack)
    assert "result" in await initialized(keep)
    raw = await open_raw(stack, ws=keep.ws)
    await raw.finish_handshake()
    assert raw.cipher is not None
    ciphertext = bytearray(raw.cipher.encrypt(_record({"id": 1, "method": "initialize"})))
    ciphertext[3] ^= 0x80
    await raw.send_ciphertext(bytes(ciphertext))
    await raw.expect_reset()
    await keep.request({"id": 2, "method": "environment/info", "params": None})
    assert "result" in await keep.reply()


@pytest.mark.parametrize(
    "plaintext",
    [
        pytest.param(b"x" * 61_441, id="record-over-60KiB"),
        pytest.param(b"\x00\x00\x00\x00", id="length-0"),
        pytest.param((64 * 1024 * 1024 + 1).to_bytes(4, "big"), id="length-over-64MiB"),
    ],
)
async def test_bad_records_reset_the_stream(stack: Stack, plaintext: bytes) -> None:
    raw = await open_raw(stack)
    await raw.finish_handshake()
    assert raw.cipher is not None
    # encrypt() refuses an oversized record, so build that one with the raw cipher state.
    sealed = (
        raw.cipher._send.encrypt_with_ad(b"", plaintext)
        if len(plaintext) > 61_440
        else raw.cipher.encrypt(plaintext)
    )
    await raw.send_ciphertext(sealed)
    await raw.expect_reset()


async def test_truncated_record_resets_the_stream(stack: Stack) -> None:
    raw = await open_raw(stack)
    await raw.finish_handshake()
    assert raw.cipher is not None
    await raw.send_ciphertext(raw.cipher.encrypt(b"\x00\x00\x00\x10{}")[:-5])
    await raw.expect_reset()


async def test_second_handshake_on_a_live_stream_is_reset(stack: Stack) -> None:
    raw = await open_raw(stack)
    assert "result" in await initialized(raw)
    again = await open_raw(stack, ws=raw.ws, stream_id=raw.stream_id, send=False)
    await raw.ws.send(encode(handshake_frame(raw.stream_id, again.message1)))
    await raw.expect_reset()


# The executor's own budget, with the rendezvous relaying every failure.
@pytest.mark.parametrize("stack", [{"pause_failing_credentials": False}], indirect=True)
async def test_failure_budget_pauses_handshakes_but_keeps_streams(stack: Stack) -> None:
    live = await open_raw(stack)
    assert "result" in await initialized(live)
    for _ in range(8):
        bad = await open_raw(stack, ws=live.ws, pinned=StaticIdentity.generate())
        await bad.expect_reset()
    # Paused: even a valid handshake is reset, without reaching /validate.
    refused = await open_raw(stack, ws=live.ws)
    await refused.expect_reset()
    # The socket and the live stream are untouched.
    await live.request({"id": 2, "method": "environment/info", "params": None})
    assert "result" in await live.reply()


async def test_nothing_secret_reaches_the_logs(
    stack: Stack, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    caplog.set_level(logging.DEBUG)
    # As every codexexec process configures it (logs.configure_logging): websockets' DEBUG
    # records dump raw frames and request lines, so that library stays at INFO.
    monkeypatch.setattr(logging.getLogger("websockets"), "level", logging.INFO)
    raw = await open_raw(stack)
    assert "result" in await initialized(raw)
    bad = await open_raw(stack, ws=raw.ws, authorize=StaticIdentity.generate())
    await bad.expect_reset()
    client = await ExecServerClient.connect(f"{ENV}@{stack.url}")
    process = await client.start(["sh", "-c", "echo MARK-LOG-55aa"], cwd="/tmp")
    async for _ in process.events():
        pass
    await client.close()
    text = "\n".join(f"{record.name}: {record.getMessage()}" for record in caplog.records)
    assert "noise handshake" in text  # the lifecycle is logged...
    executor_key = stack.identity.channel_public_key().to_json_obj()
    for secret in (
        TOKEN,
        raw.authorization,
        bad.authorization,
        executor_key["x25519_public_key"][:16],
        executor_key["mlkem768_public_key"][:16],
        "sig=",
        "MARK-LOG-55aa",
    ):
        assert secret not in text, secret


async def test_registry_rejecting_the_executor_tells_the_harness(stack: Stack) -> None:
    # The registry stops accepting the executor's credentials: /validate answers 401, so
    # message 2 carries the "authentication rejected" payload and the stream is then reset.
    from codexexec.remote.registry import RegistryError
    from codexexec.transport.noise_harness import connect_noise_harness

    stack.relay._token = "revoked-executor-token"
    with pytest.raises(RegistryError) as caught:
        await connect_noise_harness(stack.url, ENV, TOKEN)
    assert caught.value.code == "registry_authentication_rejected"


# Every harness fails alike here (the executor's own provider breaks): the rendezvous would
# pause the credential; this is about the executor's validation slots.
@pytest.mark.parametrize("stack", [{"pause_failing_credentials": False}], indirect=True)
async def test_a_validation_that_fails_unexpectedly_resets_the_stream_and_frees_its_slot(
    stack: Stack, caplog: pytest.LogCaptureFixture
) -> None:
    """Whatever goes wrong while asking the registry (here the executor's credential
    provider raises), the stream is refused at once, not left pending holding one of the 32
    validation slots, and the error's text (which may quote a credential) is not logged."""
    from codexexec.remote.registry import RegistryError
    from codexexec.transport.noise_harness import connect_noise_harness

    class Broken:
        description = "a provider that breaks"

        async def headers(self) -> dict[str, str]:
            raise ValueError("header value with secret-abc123\n")

    real = stack.relay._token
    stack.relay._token = Broken()  # type: ignore[assignment]
    caplog.set_level(logging.DEBUG)
    for _ in range(3):
        with pytest.raises((RegistryError, ExecServerError)):
            await asyncio.wait_for(connect_noise_harness(stack.url, ENV, TOKEN), 5)
    assert "secret-abc123" not in caplog.text
    stack.relay._token = real
    transport = await asyncio.wait_for(connect_noise_harness(stack.url, ENV, TOKEN), 10)
    await transport.close()


# -- helpers --------------------------------------------------------------------------------


def _record(message: dict[str, Any]) -> bytes:
    body = json.dumps(message).encode()
    return len(body).to_bytes(4, "big") + body


async def test_cleartext_fallback_needs_an_explicit_opt_in(
    stack: Stack, monkeypatch: pytest.MonkeyPatch
) -> None:
    server = ExecServer()

    async def serve(stream: MessageTransport) -> None:
        await server.serve(stream, malformed_prefix=RELAY_MALFORMED_PREFIX)

    ready = asyncio.Event()
    relay = ExecutorRelay(stack.url, "plain", TOKEN, serve, on_ready=lambda _: ready.set())
    task = asyncio.create_task(relay.run())
    try:
        await asyncio.wait_for(ready.wait(), 10)
        await asyncio.sleep(0.1)
        with pytest.raises(ExecServerError, match="CODEXEXEC_ALLOW_CLEARTEXT_RELAY=1"):
            await ExecServerClient.connect(f"plain@{stack.url}")
        monkeypatch.setenv("CODEXEXEC_ALLOW_CLEARTEXT_RELAY", "1")
        client = await ExecServerClient.connect(f"plain@{stack.url}")
        await client.close()
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await server.aclose()


async def test_classic_profile_for_peers_without_mlkem(stack: Stack) -> None:
    # An executor registering noise_ik_v1: the harness offers its hybrid key first, the
    # rendezvous names the profile in its mismatch error, the harness asks again (classic).
    from codexexec.noise.classic_ik import ClassicIdentity

    server = ExecServer()

    async def serve(stream: MessageTransport) -> None:
        await server.serve(stream, malformed_prefix=RELAY_MALFORMED_PREFIX)

    ready = asyncio.Event()
    party = ClassicParty(ClassicIdentity.generate())
    relay = ExecutorRelay(stack.url, "classic", TOKEN, serve, lambda _: ready.set(), party)
    task = asyncio.create_task(relay.run())
    try:
        await asyncio.wait_for(ready.wait(), 10)
        await asyncio.sleep(0.1)
        client = await ExecServerClient.connect(f"classic@{stack.url}")
        process = await client.start(["sh", "-c", "echo MARK-CLASSIC-4b1d; exit 6"], cwd="/tmp")
        events = [event async for event in process.events()]
        await client.close()
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await server.aclose()
    assert b"".join(e.data for e in events if isinstance(e, Output)) == b"MARK-CLASSIC-4b1d\n"
    assert [e.exit_code for e in events if isinstance(e, Exited)] == [6]
    handshakes = [
        d for _, d in stack.routed if parse(d, strict=False).WhichOneof("body") == "handshake"
    ]
    assert [len(parse(d, strict=False).handshake.payload) for d in handshakes][
        1
    ] == 48  # classic msg 2
    assert not any(b"MARK-CLASSIC" in data or b"process/start" in data for _, data in stack.routed)


# -- property: no single-bit change to a frame gets anything decrypted ------------------------


def _cipher_pair() -> tuple[NoiseTransport, NoiseTransport]:
    executor = StaticIdentity.generate()
    harness = StaticIdentity.generate()
    prologue = build_prologue(ENV, "reg-1", "stream-1")
    from codexexec.noise.hybrid_ik import HybridIKResponder

    initiator = HybridIKInitiator(harness, executor.public_key, prologue)
    responder = HybridIKResponder(executor, prologue)
    responder.read_message1(initiator.write_message1(b"hka"))
    message2, executor_side = responder.write_message2()
    return initiator.read_message2(message2).transport, executor_side.transport


_SID = str(uuid.UUID(int=7))


@settings(max_examples=300, deadline=None)
@given(data=st.data())
def test_any_single_bit_flip_in_a_data_frame_is_rejected(data: st.DataObject) -> None:
    from codexexec.relay.frames import FrameError
    from codexexec.relay.streams import Action, Admission, StreamTable

    sender, receiver = _cipher_pair()
    sealed = sender.encrypt(b"\x00\x00\x00\x02{}")
    frame = bytearray(encode_data(stream_header(_SID), 0, sealed))
    bit = data.draw(st.integers(0, len(frame) * 8 - 1))
    frame[bit // 8] ^= 1 << (bit % 8)
    table: StreamTable[None] = StreamTable(admission=Admission.EXPLICIT)
    table.open(_SID)
    try:
        verdict = table.receive(parse(bytes(frame)))
    except FrameError:
        return  # undecodable or invalid: dropped
    if verdict.action is not Action.DELIVER:
        return  # another stream, a gap, or a reset: nothing is delivered
    with pytest.raises(NoiseError):
        for payload in verdict.payloads:
            receiver.decrypt(payload)


async def test_a_reset_reaches_the_user_as_one_fixed_message(stack: Stack) -> None:
    client = await ExecServerClient.connect(f"{ENV}@{stack.url}")
    # An unknown notification makes the server drop the connection (as Codex's does); over
    # the relay that is a Reset, which the harness reports without the peer's text.
    await client._peer.notify("codexexec/no-such-notification", {})
    with pytest.raises(ExecServerError, match="Noise relay stream reset"):
        await client.call("environment/info", None)
    await client.close()


async def test_a_refused_relay_url_is_retried_once_with_a_fresh_bundle(
    stack: Stack, monkeypatch: pytest.MonkeyPatch
) -> None:
    import codexexec.transport.noise_harness as noise_harness

    real_open = noise_harness.open_relay_socket
    urls: list[str] = []

    async def open_with_a_stale_first_url(url: str, environment_id: str) -> ClientConnection:
        urls.append(url)
        if len(urls) == 1:  # an unusable signed URL: the rendezvous answers 401
            url = _without_signature(url)
        return await real_open(url, environment_id)

    real_connect = noise_harness.connect_harness_noise
    bundles = 0

    async def counting_connect(*args: Any, **kwargs: Any) -> dict[str, Any]:
        nonlocal bundles
        bundles += 1
        return await real_connect(*args, **kwargs)

    monkeypatch.setattr(noise_harness, "open_relay_socket", open_with_a_stale_first_url)
    monkeypatch.setattr(noise_harness, "connect_harness_noise", counting_connect)
    transport = await noise_harness.connect_noise_harness(stack.url, ENV, TOKEN)
    await transport.send(
        _record({"id": 1, "method": "initialize", "params": {"clientName": "t"}})[4:]
    )
    assert b"sessionId" in (await transport.receive() or b"")
    await transport.close()
    assert len(urls) == 2 and bundles == 2  # one retry, with a fresh bundle


async def test_a_relay_that_keeps_refusing_fails_with_the_status(
    stack: Stack, monkeypatch: pytest.MonkeyPatch
) -> None:
    import codexexec.transport.noise_harness as noise_harness
    from codexexec.remote.registry import RegistryError

    real_open = noise_harness.open_relay_socket

    async def always_stale(url: str, environment_id: str) -> ClientConnection:
        return await real_open(_without_signature(url), environment_id)

    monkeypatch.setattr(noise_harness, "open_relay_socket", always_stale)
    with pytest.raises(RegistryError, match=r"refused the connection to `devbox` \(401\)"):
        await noise_harness.connect_noise_harness(stack.url, ENV, TOKEN)


def _without_signature(url: str) -> str:
    from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

    parts = urlsplit(url)
    query = urlencode([(k, v) for k, v in parse_qsl(parts.query) if k != "sig"])
    return urlunsplit(parts._replace(query=query))


async def test_a_failing_credential_cannot_lock_the_others_out(stack: Stack) -> None:
    """A harness whose handshakes the executor keeps refusing would pause the executor for
    everyone after 8 failures; the rendezvous stops relaying that credential's handshakes
    after 2, so a harness with another credential keeps connecting throughout."""
    reasons = []
    for _ in range(12):
        bad = await open_raw(stack, token=OTHER_TOKEN, pinned=StaticIdentity.generate())
        frame = await bad.frame()
        assert frame.WhichOneof("body") == "reset", frame
        reasons.append(frame.reset.reason)
        await bad.ws.close()
        good = await open_raw(stack)
        assert "result" in await initialized(good)
        await good.ws.close()
    # Two reached the executor (its generic reset); the rest stopped at the rendezvous.
    assert reasons == [RESET_REASON] * 2 + ["rendezvous_handshakes_paused"] * 10


class _SlowCredential:
    """The executor's credential, given only after ``delay`` (or never, until ``opened``)."""

    description = "a credential slow to give"

    def __init__(self, delay: float) -> None:
        self.delay = delay
        self.opened = asyncio.Event()

    async def headers(self) -> dict[str, str]:
        if self.delay < 0:
            await self.opened.wait()
        await asyncio.sleep(max(self.delay, 0))
        return {"Authorization": f"Bearer {TOKEN}"}


async def test_a_burst_of_streams_is_served_not_reset(stack: Stack) -> None:
    """A harness opening many streams at once: beyond the 32 /validate calls in flight, the
    handshakes wait their turn instead of being Reset (0.169.0 Resets them), so every stream
    is served, and none counts as a failed handshake that would pause the credential."""
    stack.relay._token = _SlowCredential(0.05)  # type: ignore[assignment]  # 33+ pending, surely

    async def one(index: int) -> bytes:
        async with await ExecServerClient.connect(f"{ENV}@{stack.url}") as client:
            process = await client.start(["echo", f"stream-{index}"], cwd="/tmp")
            return b"".join([e.data async for e in process.events() if isinstance(e, Output)])

    outputs = await asyncio.wait_for(asyncio.gather(*(one(i) for i in range(80))), 60)
    assert outputs == [f"stream-{i}\n".encode() for i in range(80)]
    stats = stack.core.stats
    assert (stats.failed_handshakes, stats.paused_credentials) == (0, 0)


async def test_handshakes_that_leave_while_waiting_give_their_slots_back(stack: Stack) -> None:
    """40 handshakes whose /validate never answers (32 asking, 8 waiting), then their harness
    goes: every slot is free again, so the next handshake is validated at once — with the
    stuck calls still stuck, only their cancellation can have freed them."""
    stuck = _SlowCredential(-1)
    stack.relay._token = stuck  # type: ignore[assignment]
    raws = [await open_raw(stack) for _ in range(40)]
    await asyncio.sleep(0.3)  # all 40 reached the executor
    for raw in raws:
        await raw.ws.close()
    await asyncio.sleep(0.3)
    stack.relay._token = TOKEN
    try:
        transport = await asyncio.wait_for(connect_noise_harness(stack.url, ENV, TOKEN), 5)
        await transport.close()
    finally:
        stuck.opened.set()


async def test_an_executor_gone_as_the_harness_connects_is_reported_offline(
    stack: Stack, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The executor's socket goes away between the harness's /connect and its first frame:
    the rendezvous closes the harness socket (4002), and connecting fails with
    environment_offline (which a caller tries again), not an uncaught ConnectionClosed."""
    from codexexec.remote.registry import RegistryError
    from codexexec.transport import noise_harness

    real = noise_harness.open_relay_socket

    async def open_then_lose_the_executor(url: str, environment_id: str) -> Any:
        ws = await real(url, environment_id)
        stack.core.detach_executor(stack.core.executors[ENV], 4000, "gone")
        await ws.wait_closed()
        return ws

    monkeypatch.setattr(noise_harness, "open_relay_socket", open_then_lose_the_executor)
    with pytest.raises(RegistryError) as caught:
        await noise_harness.connect_noise_harness(stack.url, ENV, TOKEN)
    assert caught.value.code == "environment_offline"
    assert "(4002); the executor may be reconnecting" in str(caught.value)


async def test_metrics_count_what_the_node_routed(stack: Stack) -> None:
    """`GET /metrics`: Prometheus text with the node's sockets, routed frames and bytes,
    validations by outcome and store latencies."""
    import aiohttp

    client = await ExecServerClient.connect(f"{ENV}@{stack.url}")
    process = await client.start(["sh", "-c", "head -c 100000 /dev/zero"], cwd="/tmp")
    async for _ in process.events():
        pass
    async with aiohttp.ClientSession() as http, http.get(f"{stack.url}/metrics") as response:
        assert response.status == 200
        assert response.headers["Content-Type"].startswith("text/plain; version=0.0.4")
        text = await response.text()
    await client.close()
    values = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            values[name] = float(value)
    assert values['codexexec_rendezvous_sockets{role="executor"}'] == 1
    assert values['codexexec_rendezvous_sockets{role="harness"}'] == 1
    assert values['codexexec_rendezvous_bytes_routed_total{direction="to_harness"}'] > 100_000
    assert values['codexexec_rendezvous_frames_routed_total{direction="to_executor"}'] >= 2
    assert values['codexexec_rendezvous_validations_total{outcome="valid"}'] == 1
    assert (
        values['codexexec_rendezvous_store_seconds_count{operation="consume_authorization"}'] == 1
    )
