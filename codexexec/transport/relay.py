"""The relay as a transport: JSON-RPC streams as records in relay Data frames.

``VirtualStream`` is one harness stream as the executor's server sees it (relay_executor.py
multiplexes them on one socket); ``HarnessRelayTransport`` is the harness's end: one websocket
per logical connection, a fresh UUIDv4 stream claimed with `resume`, then Data frames. Both
carry the same record framing (relay/framing.py); under Noise every record is one AES-GCM
transport message, otherwise (codexexec's explicit cleartext profile) it travels as is.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus, InvalidURI

from codexexec.noise.errors import NoiseError
from codexexec.relay.frames import FrameError, data_fields, encode, parse, resume_frame
from codexexec.relay.framing import FramingError, MessageAssembler, records
from codexexec.relay.limits import (
    MAX_WEBSOCKET_MESSAGE_BYTES,
    PING_INTERVAL_SECONDS,
    PONG_TIMEOUT_SECONDS,
)
from codexexec.relay.streams import (
    OutboundSequencer,
    RelayStream,
    ReorderBuffer,
    StreamError,
)
from codexexec.remote.registry import Credential, RegistryError, connect_harness
from codexexec.transport.base import TransportClosed

if TYPE_CHECKING:
    from codexexec.noise.profiles import RecordCipher

log = logging.getLogger(__name__)

# What one relay stream may hold that its server has not read yet. The relay has no flow
# control per stream and the socket is shared, so a stream past these is reset rather than
# the socket paused; they leave room for a client that pipelines hundreds of requests.
INBOX_MESSAGES = 4096
INBOX_BYTES = 8 * 1024 * 1024
RELAY_MALFORMED_PREFIX = "failed to parse JSON-RPC message from exec-server relay"


class VirtualStream:
    """One harness stream, seen by the server as an ordinary connection."""

    def __init__(
        self,
        stream: RelayStream[None],
        send_frame: Callable[[bytes], Awaitable[None]],
        on_close: Callable[[VirtualStream], None],
        cipher: RecordCipher | None = None,
    ) -> None:
        self.stream = stream
        self._send_frame = send_frame
        self._on_close = on_close
        self._cipher = cipher
        self._inbox: asyncio.Queue[bytes | None] = asyncio.Queue(INBOX_MESSAGES + 1)
        self._inbox_bytes = 0
        self._assembler = MessageAssembler()
        self.closed = False

    @property
    def peer(self) -> str:
        return f"relay stream {self.stream.stream_id[:8]}"

    def feed(self, record: bytes) -> None:
        """Raises FramingError, NoiseError or asyncio.QueueFull: the caller resets this
        stream only."""
        if self._cipher is not None:
            record = self._cipher.decrypt(record)
        for message in self._assembler.feed(record):
            if self._inbox.qsize() >= INBOX_MESSAGES or self._inbox_bytes >= INBOX_BYTES:
                raise asyncio.QueueFull
            self._inbox.put_nowait(message)
            self._inbox_bytes += len(message)

    async def receive(self) -> bytes | None:
        if self.closed and self._inbox.empty():
            return None
        message = await self._inbox.get()
        if message is not None:
            self._inbox_bytes -= len(message)
        return message

    async def send(self, message: bytes) -> None:
        await self.send_batch([message])

    async def send_batch(self, messages: list[bytes]) -> None:
        """Send ``messages`` in order, sharing records (and so relay frames)."""
        if self.closed:
            raise TransportClosed(f"{self.peer} is closed")
        try:
            for record in records(messages):
                if self._cipher is not None:
                    record = self._cipher.encrypt(record)
                await self._send_frame(self.stream.outbound.encode_data(record))
        except (StreamError, FramingError, NoiseError) as exc:
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
            # Direct, as the registry's own requests are (remote/http.py); the proxy lookup
            # websockets makes otherwise read the whole environment for every stream.
            proxy=None,
        )
    except InvalidStatus as exc:
        status = exc.response.status_code
        raise RegistryError(
            f"the relay refused the connection to `{environment_id}` ({status})", status=status
        ) from None
    except (OSError, InvalidHandshake, InvalidURI, TimeoutError) as exc:
        # InvalidURI's text quotes the URL, whose signed query is a credential.
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
        cipher: RecordCipher | None = None,
    ) -> None:
        self._ws = ws
        self._cipher = cipher
        self._outbound = OutboundSequencer(stream_id)
        self._inbound = ReorderBuffer()
        self._assembler = MessageAssembler()
        self._ready: list[bytes] = []
        self._stream_id = stream_id
        self._description = description
        self.close_reason: str | None = None

    @classmethod
    async def connect(
        cls, registry_url: str, environment_id: str, token: Credential
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
            fields = data_fields(message)
            if fields is None:
                try:
                    frame = parse(message, strict=False)
                except FrameError:
                    continue
                if frame.stream_id != self._stream_id:
                    continue
                kind = frame.WhichOneof("body")
                if kind == "reset":  # the peer's reason is unauthenticated: never shown
                    self.close_reason = (
                        "Noise relay stream reset" if self._cipher else "relay stream reset"
                    )
                    await self._ws.close()
                    return None
                if kind != "data":
                    continue
                fields = frame.stream_id, frame.data.seq, frame.data.payload
            stream_id, seq, payload = fields
            if stream_id != self._stream_id:
                continue
            try:
                for record in self._inbound.push(seq, payload) or ():
                    if self._cipher is not None:
                        record = self._cipher.decrypt(record)
                    self._ready.extend(self._assembler.feed(record))
            except (StreamError, FramingError, NoiseError):
                self.close_reason = "malformed or undecryptable relay record"
                await self._ws.close()
                return None
        return self._ready.pop(0)

    async def send(self, message: bytes) -> None:
        await self.send_batch([message])

    async def send_batch(self, messages: list[bytes]) -> None:
        """Send ``messages`` in order, sharing records (and so relay frames)."""
        try:
            for record in records(messages):
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
