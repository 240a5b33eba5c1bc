"""The relay as a transport: many virtual JSON-RPC streams over one websocket.

Executor side: one outbound websocket to the rendezvous; each harness stream (by
`stream_id`) becomes its own MessageTransport served by the shared ExecServer, so a
stream's failure or reset never touches the others, and a dropped socket only
detaches sessions. Harness side: one websocket per logical connection, a fresh UUIDv4
stream claimed with `resume`, then JSON-RPC over Data frames.

Streams carry codexexec's cleartext record framing (relay/framing.py); the Noise
layer (a later issue) encrypts the same records.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import Awaitable, Callable, Coroutine

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus

from codexexec.noise.transport import NoiseError, NoiseTransport
from codexexec.relay.frames import FrameError, encode, parse, resume_frame
from codexexec.relay.framing import FramingError, MessageAssembler, records
from codexexec.relay.limits import MAX_WEBSOCKET_MESSAGE_BYTES
from codexexec.relay.streams import (
    Action,
    Admission,
    OutboundSequencer,
    RelayStream,
    ReorderBuffer,
    StreamError,
    StreamTable,
)
from codexexec.remote.registry import RegistryError, connect_harness, register_executor
from codexexec.transport.base import TransportClosed

log = logging.getLogger(__name__)

INBOX_MESSAGES = 256
PING_INTERVAL_SECONDS = 30.0
PONG_TIMEOUT_SECONDS = 60.0
RELAY_MALFORMED_PREFIX = "failed to parse JSON-RPC message from exec-server relay"
BACKOFF_FIRST, BACKOFF_MAX = 1.0, 30.0


class _VirtualStream:
    """One harness stream, seen by the server as an ordinary connection."""

    def __init__(
        self,
        stream: RelayStream[None],
        send_frame: Callable[[bytes], Awaitable[None]],
        on_close: Callable[[_VirtualStream], None],
    ) -> None:
        self.stream = stream
        self._send_frame = send_frame
        self._on_close = on_close
        self._inbox: asyncio.Queue[bytes | None] = asyncio.Queue(INBOX_MESSAGES + 1)
        self._assembler = MessageAssembler()
        self.closed = False

    @property
    def peer(self) -> str:
        return f"relay stream {self.stream.stream_id[:8]}"

    def feed(self, record: bytes) -> None:
        """Raises FramingError or asyncio.QueueFull: the caller resets this stream only."""
        for message in self._assembler.feed(record):
            if self._inbox.qsize() >= INBOX_MESSAGES:
                raise asyncio.QueueFull
            self._inbox.put_nowait(message)

    async def receive(self) -> bytes | None:
        if self.closed and self._inbox.empty():
            return None
        return await self._inbox.get()

    async def send(self, message: bytes) -> None:
        if self.closed:
            raise TransportClosed(f"{self.peer} is closed")
        try:
            for record in records(message):
                await self._send_frame(self.stream.outbound.encode_data(record))
        except (StreamError, FramingError) as exc:
            raise TransportClosed(f"{self.peer}: {exc}") from None

    def end(self) -> None:
        """Closed from the relay's side (reset, socket gone): no Reset is sent back."""
        if not self.closed:
            self.closed = True
            with contextlib.suppress(asyncio.QueueFull):
                self._inbox.put_nowait(None)

    async def close(self) -> None:
        if not self.closed:
            self.end()
            self._on_close(self)


Serve = Callable[[_VirtualStream], Coroutine[object, object, None]]


class ExecutorRelay:
    """Register, hold one websocket to the rendezvous, serve every stream on it; reconnect."""

    def __init__(
        self,
        registry_url: str,
        environment_id: str,
        token: str | None,
        serve: Serve,
        on_ready: Callable[[str], None] | None = None,
    ) -> None:
        self._registry_url = registry_url
        self._environment_id = environment_id
        self._token = token
        self._serve = serve
        self._on_ready = on_ready
        self.connections = 0

    async def run(self) -> None:
        backoff = BACKOFF_FIRST
        bundle = None
        while True:
            if bundle is None:
                bundle = await register_executor(
                    self._registry_url, self._environment_id, self._token
                )
            try:
                async with connect(
                    bundle.url,
                    max_size=MAX_WEBSOCKET_MESSAGE_BYTES,
                    compression=None,
                    ping_interval=PING_INTERVAL_SECONDS,
                    ping_timeout=PONG_TIMEOUT_SECONDS,
                    user_agent_header=None,
                ) as ws:
                    self.connections += 1
                    backoff = BACKOFF_FIRST
                    if self._on_ready is not None:
                        self._on_ready(self._environment_id)
                    await self._serve_socket(ws)
            except InvalidStatus as exc:
                if 400 <= exc.response.status_code < 500:
                    bundle = None  # the relay URL expired or was refused: register again
                log.warning("relay connection refused (%s)", exc.response.status_code)
            except (OSError, InvalidHandshake, TimeoutError) as exc:
                log.warning("relay connection failed: %s", type(exc).__name__)
            except ConnectionClosed:
                pass
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, BACKOFF_MAX)

    async def _serve_socket(self, ws: ClientConnection) -> None:
        table: StreamTable[None] = StreamTable(admission=Admission.IMPLICIT)
        streams: dict[str, _VirtualStream] = {}
        tasks: set[asyncio.Task[None]] = set()

        async def send_frame(frame: bytes) -> None:
            try:
                await ws.send(frame)
            except ConnectionClosed as exc:
                raise TransportClosed("relay socket closed") from exc

        def closed_by_server(virtual: _VirtualStream) -> None:
            streams.pop(virtual.stream.stream_id, None)
            reply = table.close(virtual.stream.stream_id, virtual.stream.instance)
            if reply is not None:
                task: asyncio.Task[None] = asyncio.create_task(_quietly(send_frame(reply)))
                tasks.add(task)
                task.add_done_callback(tasks.discard)

        def open_stream(stream: RelayStream[None]) -> _VirtualStream:
            virtual = _VirtualStream(stream, send_frame, closed_by_server)
            streams[stream.stream_id] = virtual
            task = asyncio.create_task(self._serve(virtual))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
            return virtual

        try:
            async for message in ws:
                if isinstance(message, str):
                    continue  # the relay speaks binary protobuf frames only
                try:
                    frame = parse(message)
                except FrameError:
                    continue
                verdict = table.receive(frame)
                if verdict.stream is not None and verdict.opened:
                    open_stream(verdict.stream)
                virtual = streams.get(verdict.stream_id)
                if verdict.action is Action.DELIVER and virtual is not None:
                    try:
                        for payload in verdict.payloads:
                            virtual.feed(payload)
                    except (FramingError, asyncio.QueueFull):
                        streams.pop(verdict.stream_id, None)
                        virtual.end()
                        reply = table.close(verdict.stream_id)
                        if reply is not None:
                            await send_frame(reply)
                elif verdict.action in (Action.RESET, Action.CLOSED):
                    if virtual is not None:
                        streams.pop(verdict.stream_id, None)
                        virtual.end()
                    if verdict.reply is not None:
                        await send_frame(verdict.reply)
        finally:
            for virtual in list(streams.values()):
                virtual.end()
            table.close_all()


async def _quietly(awaitable: Coroutine[object, object, None]) -> None:
    with contextlib.suppress(TransportClosed, ConnectionClosed):
        await awaitable


async def open_relay_socket(url: str, environment_id: str) -> ClientConnection:
    """The harness's websocket to a relay URL from the registry."""
    try:
        return await connect(
            url,
            max_size=MAX_WEBSOCKET_MESSAGE_BYTES,
            compression=None,
            ping_interval=PING_INTERVAL_SECONDS,
            ping_timeout=PONG_TIMEOUT_SECONDS,
            user_agent_header=None,
        )
    except (OSError, InvalidHandshake, TimeoutError) as exc:
        raise RegistryError(
            f"cannot open the relay for `{environment_id}`: {type(exc).__name__}"
        ) from None


class HarnessRelayTransport:
    """One logical connection to an executor through the rendezvous.

    With a ``cipher`` (a completed Noise handshake) every record is one AES-GCM transport
    message; without one the records travel in clear (codexexec's cleartext profile).
    """

    def __init__(
        self,
        ws: ClientConnection,
        stream_id: str,
        description: str,
        cipher: NoiseTransport | None = None,
    ) -> None:
        self._ws = ws
        self._cipher = cipher
        self._outbound = OutboundSequencer(stream_id)
        self._inbound = ReorderBuffer()
        self._assembler = MessageAssembler()
        self._ready: list[bytes] = []
        self._stream_id = stream_id
        self._description = description

    @classmethod
    async def connect(
        cls, registry_url: str, environment_id: str, token: str | None
    ) -> HarnessRelayTransport:
        """The cleartext profile: claim a fresh stream with `resume`, then talk."""
        bundle = await connect_harness(registry_url, environment_id, token)
        ws = await open_relay_socket(bundle.url, environment_id)
        stream_id = str(uuid.uuid4())
        await ws.send(encode(resume_frame(stream_id, 0)))
        return cls(ws, stream_id, f"{environment_id} via {registry_url}")

    @property
    def peer(self) -> str:
        return self._description

    async def receive(self) -> bytes | None:
        while not self._ready:
            try:
                message = await self._ws.recv()
            except ConnectionClosed:
                return None
            if isinstance(message, str):
                continue
            try:
                frame = parse(message, strict=False)
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
                for record in self._inbound.push(frame.data.seq, frame.data.payload) or ():
                    if self._cipher is not None:
                        record = self._cipher.decrypt(record)
                    self._ready.extend(self._assembler.feed(record))
            except (StreamError, FramingError, NoiseError):
                await self._ws.close()
                return None
        return self._ready.pop(0)

    async def send(self, message: bytes) -> None:
        try:
            for record in records(message):
                if self._cipher is not None:
                    record = self._cipher.encrypt(record)
                await self._ws.send(self._outbound.encode_data(record))
        except ConnectionClosed as exc:
            raise TransportClosed(f"relay to {self._description} closed") from exc
        except (StreamError, FramingError, NoiseError) as exc:
            raise TransportClosed(str(exc)) from None

    async def close(self) -> None:
        with contextlib.suppress(Exception):
            await self._ws.send(self._outbound.encode_reset())
        await self._ws.close()
