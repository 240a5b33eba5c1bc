"""One relay websocket each: a bounded outbox drained by one writer task, and how it closes."""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, cast

from aiohttp import web

from codexexec.bounded_queue import BoundedQueue
from codexexec.relay.frames import encode_reset, stream_header
from codexexec.rendezvous.events import event
from codexexec.rendezvous.links import RemoteExecutor, RemoteHarness
from codexexec.rendezvous.options import CLOSE_EXECUTOR_GONE, CLOSE_GOING_AWAY, RESET_EXECUTOR_GONE
from codexexec.rendezvous.router import StreamRouter
from codexexec.rendezvous.signing import RelayRole, RelayTicket

if TYPE_CHECKING:
    from codexexec.rendezvous.relay import Relay


# How long a harness may fail to drain its outbox before it is cut off.
SLOW_HARNESS_GRACE_SECONDS = 10.0


class Peer:
    """One relay websocket: its outbox, writer task and close bookkeeping."""

    role: RelayRole

    def __init__(
        self,
        relay: Relay,
        ws: web.WebSocketResponse,
        request: web.Request,
        environment_id: str,
        label: str,
    ) -> None:
        self.relay = relay
        self.ws = ws
        self.request = request
        self.environment_id = environment_id
        self.label = label
        opts = relay.options
        # Frames as received: from a link, a view into its bus message (not copied again).
        self.outbox: BoundedQueue[bytes | memoryview] = BoundedQueue(
            opts.outbox_frames, opts.outbox_bytes
        )
        self.closing = False
        self._close_code = CLOSE_GOING_AWAY
        self._close_message = b""
        self._writer: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._writer = asyncio.create_task(
            self._write_loop(), name=f"rendezvous-writer-{self.label}"
        )

    async def _write_loop(self) -> None:
        try:
            while True:
                data = await self.outbox.get()
                if data is None:
                    break
                # aiohttp sends any bytes-like payload; its annotation names only bytes.
                await self.ws.send_bytes(cast("bytes", data))
        except Exception as error:  # the socket broke under us: the reader will see it too
            event(logging.DEBUG, "relay.write_failed", peer=self.label, error=type(error).__name__)
        finally:
            self.outbox.close(drain=False)
            await self._close_socket()

    async def _close_socket(self) -> None:
        if self.ws.closed:
            return
        try:
            await asyncio.wait_for(
                self.ws.close(code=self._close_code, message=self._close_message),
                self.relay.options.close_timeout,
            )
        except Exception:  # a peer that will not close cleanly is cut off
            transport = self.request.transport
            if transport is not None:
                transport.abort()

    def finish(self, code: int, reason: str, *, drain: bool) -> None:
        """Close this socket: after the queued frames (``drain``) or at once."""
        if self.closing:
            return
        self.closing = True
        self._close_code = code
        self._close_message = reason.encode("utf-8")
        self.outbox.close(drain=drain)
        if drain:
            self.relay.spawn(self._close_if_not_drained())
        else:
            self.relay.spawn(self._close_socket())

    async def _close_if_not_drained(self) -> None:
        """A peer that does not take its last frames in time is closed anyway."""
        writer = self._writer
        if writer is not None:
            try:
                await asyncio.wait_for(asyncio.shield(writer), self.relay.options.close_timeout)
                return
            except TimeoutError:
                pass
        await self._close_socket()

    async def wait_closed(self) -> None:
        writer = self._writer
        if writer is None:
            return
        if not self.closing:
            self.finish(CLOSE_GOING_AWAY, "", drain=False)
        try:
            await asyncio.wait_for(asyncio.shield(writer), self.relay.options.close_timeout * 2)
        except TimeoutError:
            writer.cancel()


class ExecutorPeer(Peer):
    role: RelayRole = "environment"

    def __init__(
        self,
        relay: Relay,
        ws: web.WebSocketResponse,
        request: web.Request,
        ticket: RelayTicket,
        label: str,
    ) -> None:
        super().__init__(relay, ws, request, ticket.environment_id, label)
        self.registration_id = ticket.registration_id
        # Unique across the cluster: other nodes address this socket by it.
        self.socket_id = f"{relay.node_id}/{label}"
        self.router: StreamRouter[HarnessEnd] = StreamRouter(relay.options.max_streams_per_harness)
        self.harnesses: set[HarnessEnd] = set()


class HarnessPeer(Peer):
    role: RelayRole = "harness"

    def __init__(
        self,
        relay: Relay,
        ws: web.WebSocketResponse,
        request: web.Request,
        executor: ExecutorPeer | RemoteExecutor,
        label: str,
        credential: str,
    ) -> None:
        super().__init__(relay, ws, request, executor.environment_id, label)
        self.executor = executor
        self.credential = credential

    async def offer(self, data: bytes | memoryview) -> bool:
        return self.outbox.try_put(data)

    async def deliver(self, data: bytes | memoryview) -> bool:
        return await self.outbox.put(data)

    def executor_gone(self, streams: list[str]) -> None:
        """The executor socket went away: Resets for the harness's streams, then close."""
        for stream_id in streams:
            if self.outbox.try_put(encode_reset(stream_header(stream_id), RESET_EXECUTOR_GONE)):
                self.relay.stats.resets_sent += 1
        self.finish(CLOSE_EXECUTOR_GONE, "executor disconnected", drain=True)


# A harness socket as the executor's node routes to it: here, or on another node.
HarnessEnd = HarnessPeer | RemoteHarness
