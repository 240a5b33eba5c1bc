"""Harness side of the Noise relay: the encrypted stream Codex 0.169.0 executors speak.

/connect (with our static public key) returns the executor's key and a single-use
authorization; the stream is claimed with `resume`, message 1 (carrying the
authorization) and message 2 travel as Handshake frames, and then every record of the
4-byte-length message stream is one AES-GCM transport message in one Data frame.
"""

from __future__ import annotations

import contextlib
import uuid

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake

from codexexec.noise.hybrid_ik import HybridIKInitiator, build_prologue
from codexexec.noise.keys import NoiseChannelPublicKey, StaticIdentity
from codexexec.noise.transport import NoiseError, NoiseTransport
from codexexec.relay.frames import FrameError, encode, handshake_frame, parse, resume_frame
from codexexec.relay.framing import FramingError, MessageAssembler, records
from codexexec.relay.limits import MAX_WEBSOCKET_MESSAGE_BYTES
from codexexec.relay.streams import OutboundSequencer, ReorderBuffer, StreamError
from codexexec.remote.registry import RegistryError, connect_harness_noise
from codexexec.transport.base import TransportClosed

RESET_MESSAGE = "the executor reset the encrypted relay stream"


class NoiseHarnessTransport:
    def __init__(
        self, ws: ClientConnection, stream_id: str, noise: NoiseTransport, description: str
    ) -> None:
        self._ws = ws
        self._noise = noise
        self._stream_id = stream_id
        self._outbound = OutboundSequencer(stream_id)
        self._inbound = ReorderBuffer()
        self._assembler = MessageAssembler()
        self._ready: list[bytes] = []
        self._description = description

    @classmethod
    async def connect(
        cls, registry_url: str, environment_id: str, token: str | None
    ) -> NoiseHarnessTransport:
        identity = StaticIdentity.generate()
        bundle = await connect_harness_noise(
            registry_url, environment_id, token, identity.channel_public_key().to_json_obj()
        )
        try:
            executor_key = NoiseChannelPublicKey.from_json_obj(
                bundle["executor_public_key"]
            ).decode()
        except (KeyError, ValueError) as exc:
            raise RegistryError(
                f"environment registry returned an unusable executor key: {exc}"
            ) from None
        try:
            ws = await connect(
                bundle["url"],
                max_size=MAX_WEBSOCKET_MESSAGE_BYTES,
                compression=None,
                user_agent_header=None,
            )
        except (OSError, InvalidHandshake, TimeoutError) as exc:
            raise RegistryError(
                f"cannot open the relay for `{environment_id}`: {type(exc).__name__}"
            ) from None
        stream_id = str(uuid.uuid4())
        prologue = build_prologue(environment_id, bundle["executor_registration_id"], stream_id)
        initiator = HybridIKInitiator(identity, executor_key, prologue)
        message1 = initiator.write_message1(bundle["harness_key_authorization"].encode())
        await ws.send(encode(resume_frame(stream_id, 0)))
        await ws.send(encode(handshake_frame(stream_id, message1)))
        try:
            while True:
                raw = await ws.recv()
                if isinstance(raw, str):
                    continue
                frame = parse(raw, strict=False)
                if frame.stream_id != stream_id:
                    continue
                kind = frame.WhichOneof("body")
                if kind == "reset":
                    raise RegistryError(RESET_MESSAGE)
                if kind == "handshake":
                    result = initiator.read_message2(frame.handshake.payload)
                    break
        except (ConnectionClosed, FrameError, NoiseError) as exc:
            await ws.close()
            raise RegistryError(
                f"Noise handshake with `{environment_id}` failed: {type(exc).__name__}"
            ) from None
        return cls(ws, stream_id, result.transport, f"{environment_id} via {registry_url} (Noise)")

    @property
    def peer(self) -> str:
        return self._description

    async def receive(self) -> bytes | None:
        while not self._ready:
            try:
                raw = await self._ws.recv()
            except ConnectionClosed:
                return None
            if isinstance(raw, str):
                continue
            try:
                frame = parse(raw, strict=False)
            except FrameError:
                continue
            if frame.stream_id != self._stream_id:
                continue
            kind = frame.WhichOneof("body")
            if kind == "reset":
                await self._ws.close()
                return None
            if kind != "data":
                continue
            try:
                for ciphertext in self._inbound.push(frame.data.seq, frame.data.payload) or ():
                    self._ready.extend(self._assembler.feed(self._noise.decrypt(ciphertext)))
            except (StreamError, FramingError, NoiseError):
                await self._ws.close()
                return None
        return self._ready.pop(0)

    async def send(self, message: bytes) -> None:
        try:
            for record in records(message):
                await self._ws.send(self._outbound.encode_data(self._noise.encrypt(record)))
        except ConnectionClosed as exc:
            raise TransportClosed(f"relay to {self._description} closed") from exc
        except (StreamError, FramingError, NoiseError) as exc:
            raise TransportClosed(str(exc)) from None

    async def close(self) -> None:
        with contextlib.suppress(Exception):
            await self._ws.send(self._outbound.encode_reset())
        await self._ws.close()
