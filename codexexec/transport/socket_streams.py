"""The streams of one executor relay socket, whichever security profile admitted them: the
virtual streams served by the exec-server, and the cleartext profile's admission (the Noise
profile's is ``noise_admission.py``)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Coroutine
from typing import TYPE_CHECKING, Protocol

from websockets.asyncio.client import ClientConnection
from websockets.exceptions import ConnectionClosed

from codexexec.noise.errors import NoiseError
from codexexec.relay.frames import RelayMessageFrame
from codexexec.relay.framing import FramingError
from codexexec.relay.streams import Action, RelayStream, StreamTable, Verdict
from codexexec.tasks import TaskSet
from codexexec.transport.base import TransportClosed
from codexexec.transport.relay import VirtualStream

if TYPE_CHECKING:
    from codexexec.noise.profiles import RecordCipher

log = logging.getLogger(__name__)

Serve = Callable[[VirtualStream], Coroutine[object, object, None]]


class SocketStreams:
    """The virtual streams of one physical socket, whichever profile admitted them."""

    def __init__(self, table: StreamTable[None], serve: Serve, ws: ClientConnection) -> None:
        self.table = table
        self._serve = serve
        self._ws = ws
        self.streams: dict[str, VirtualStream] = {}
        self._tasks = TaskSet()
        self.spawn = self._tasks.spawn

    async def send_frame(self, frame: bytes) -> None:
        try:
            await self._ws.send(frame)
        except ConnectionClosed as exc:
            raise TransportClosed("relay socket closed") from exc

    def send_later(self, frame: bytes) -> None:
        """Send from synchronous code (a stream closing itself); failures are moot then."""
        self.spawn(_quietly(self.send_frame(frame)))

    def open(self, stream: RelayStream[None], cipher: RecordCipher | None = None) -> None:
        virtual = VirtualStream(stream, self.send_frame, self._closed_by_server, cipher)
        self.streams[stream.stream_id] = virtual
        self.spawn(self._serve(virtual))

    def _closed_by_server(self, virtual: VirtualStream) -> None:
        self.streams.pop(virtual.stream.stream_id, None)
        reply = self.table.close(virtual.stream.stream_id, virtual.stream.instance)
        if reply is not None:
            self.send_later(reply)

    async def apply(self, verdict: Verdict[None]) -> None:
        """Carry out the stream table's verdict on one frame."""
        virtual = self.streams.get(verdict.stream_id)
        if verdict.action is Action.DELIVER and virtual is not None:
            try:
                for payload in verdict.payloads:
                    virtual.feed(payload)
            except (FramingError, NoiseError, asyncio.QueueFull) as exc:
                # Undecryptable, malformed or flooding: this stream alone ends, with a Reset.
                log.debug("relay stream %s reset: %s", verdict.stream_id[:8], type(exc).__name__)
                self.streams.pop(verdict.stream_id, None)
                virtual.end()
                reply = self.table.close(verdict.stream_id)
                if reply is not None:
                    await self.send_frame(reply)
        elif verdict.action in (Action.RESET, Action.CLOSED):
            if virtual is not None:
                self.streams.pop(verdict.stream_id, None)
                virtual.end()
            if verdict.reply is not None:
                await self.send_frame(verdict.reply)

    def end_all(self) -> None:
        for virtual in list(self.streams.values()):
            virtual.end()
        self.streams.clear()
        self.table.close_all()


class StreamProfile(Protocol):
    """How one security profile admits streams on a socket and routes their frames."""

    async def receive(self, frame: RelayMessageFrame) -> None: ...

    async def receive_data(self, stream_id: str, seq: int, payload: bytes) -> None:
        """``receive`` of a Data frame, given its fields (``frames.data_fields``)."""
        ...

    def close(self) -> None: ...


class CleartextStreams:
    """The legacy profile: a Resume or Data frame for a new id opens the stream."""

    def __init__(self, streams: SocketStreams) -> None:
        self._streams = streams

    async def receive(self, frame: RelayMessageFrame) -> None:
        await self._open_and_apply(self._streams.table.receive(frame))

    async def receive_data(self, stream_id: str, seq: int, payload: bytes) -> None:
        await self._open_and_apply(self._streams.table.receive_data(stream_id, seq, payload))

    async def _open_and_apply(self, verdict: Verdict[None]) -> None:
        if verdict.stream is not None and verdict.opened:
            self._streams.open(verdict.stream)
        await self._streams.apply(verdict)

    def close(self) -> None:
        pass


async def _quietly(awaitable: Coroutine[object, object, None]) -> None:
    with contextlib.suppress(TransportClosed, ConnectionClosed):
        await awaitable
