"""The two ends of a link: one harness socket on one node, its executor socket on another.

At the executor's node a ``RemoteHarness`` stands in for the harness socket: the relay routes
to it as to a local one (``relay.py``), and it sends what it is given over the bus. At the
harness's node a ``RemoteExecutor`` stands in for the executor socket: the harness's frames go
to it unrouted (the executor's node owns the routing) and what comes back goes to the harness
socket. Flow control is ``credit.py``'s; a frame lost on the bus ends the link at both ends
with ``CLOSE_FRAMES_LOST`` (the executor gets its usual Resets), never a silent gap.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Coroutine
from typing import TYPE_CHECKING, Any, Protocol

from codexexec.relay.frames import encode_reset, stream_header
from codexexec.rendezvous.bus_wire import (
    Close,
    LinkKind,
    LinkMessage,
    decode_close,
    encode_close,
    encode_link,
    node_subject,
)
from codexexec.rendezvous.credit import ReceiveWindow, SendWindow
from codexexec.rendezvous.events import event
from codexexec.rendezvous.options import (
    CLOSE_EXECUTOR_GONE,
    CLOSE_FRAMES_LOST,
    CLOSE_GOING_AWAY,
    RESET_EXECUTOR_GONE,
)

if TYPE_CHECKING:
    from codexexec.rendezvous.peers import ExecutorPeer, HarnessPeer
    from codexexec.rendezvous.relay import Relay


class LinkHost(Protocol):
    """What a link needs of its node's bus."""

    async def publish(self, subject: str, data: bytes) -> bool: ...

    def spawn(self, coro: Coroutine[Any, Any, Any]) -> None: ...

    def forget(self, link: Link) -> None: ...


class Link:
    def __init__(self, host: LinkHost, link_id: str, node: str, environment_id: str) -> None:
        self.host = host
        self.id = link_id
        self.node = node  # the other end's node
        self.environment_id = environment_id
        self.closed = False
        self._to = node_subject(node)
        self._window = SendWindow()
        self._receive = ReceiveWindow()
        self._credit = asyncio.Event()
        self._inbox: deque[LinkMessage] = deque()
        self._readable = asyncio.Event()
        self._drain: asyncio.Task[None] | None = None
        self._handing_on = False  # the drain task is passing a frame on

    def start(self) -> None:
        self._drain = asyncio.create_task(self._drain_loop(), name=f"rendezvous-link-{self.id}")

    # sending

    async def offer(self, data: bytes | memoryview) -> bool:
        """Send now if the window has room; False (nothing sent) otherwise."""
        if self.closed or not self._window.admits(len(data)):
            return False
        seq = self._window.sent(len(data))
        return await self.host.publish(self._to, encode_link(LinkKind.FRAME, self.id, seq, 0, data))

    async def deliver(self, data: bytes | memoryview) -> bool:
        """Send once the window has room; False if the link ended first."""
        while not self.closed and not self._window.admits(len(data)):
            self._credit.clear()
            await self._credit.wait()
        return await self.offer(data)

    # receiving (called by the bus, in arrival order; waits for nothing)

    async def received(self, message: LinkMessage) -> None:
        if self.closed:
            return
        if message.kind == LinkKind.CREDIT:
            if not self._window.granted(message.first, message.second):
                self._lost("credit beyond the window")
            self._credit.set()
            return
        if message.kind == LinkKind.FRAME:
            verdict = self._receive.arrived(message.first, len(message.payload))
            if verdict != "ok":
                self._lost(verdict)
                return
            # With nothing queued ahead of it and room where it goes, a frame is passed on
            # at once (in order, and without waiting: the bus's other links share this call).
            if not self._inbox and not self._handing_on and self._room_for(len(message.payload)):
                await self._hand_on(message.payload)
                await self._handed_on(len(message.payload))
                return
        self._inbox.append(message)
        self._readable.set()

    async def _handed_on(self, size: int) -> None:
        grant = self._receive.handed_on(size)
        if grant is not None and not self.closed:
            await self.host.publish(
                self._to, encode_link(LinkKind.CREDIT, self.id, grant.frames, grant.nbytes, b"")
            )

    async def _drain_loop(self) -> None:
        try:
            while not self.closed:
                if not self._inbox:
                    self._readable.clear()
                    await self._readable.wait()
                    continue
                message = self._inbox.popleft()
                if message.kind == LinkKind.CLOSE:
                    self._end_here()
                    await self._closed_by_peer(decode_close(message))
                    return
                self._handing_on = True
                try:
                    await self._hand_on(message.payload)
                finally:
                    self._handing_on = False
                await self._handed_on(len(message.payload))
        except Exception as error:  # a bad Close from a peer node ends only this link
            event(logging.WARNING, "bus.link_failed", link=self.id, error=type(error).__name__)
            self.broken("link failed")

    # ending

    def _end_here(self) -> None:
        if not self.closed:
            self.closed = True
            self._credit.set()
            self._readable.set()
            self.host.forget(self)

    def end(self, close: Close) -> None:
        """End the link and tell the other end how."""
        if self.closed:
            return
        self._end_here()
        self.host.spawn(self.host.publish(self._to, encode_close(self.id, close)))

    def _lost(self, why: str) -> None:
        event(logging.WARNING, "bus.frames_lost", link=self.id, node=self.node, why=why)
        self.end(Close(CLOSE_FRAMES_LOST, "frames lost between rendezvous nodes"))
        self._gone_here(CLOSE_FRAMES_LOST, "frames lost between rendezvous nodes")

    def broken(self, reason: str) -> None:
        """The other end can no longer be reached (node silent, bus down)."""
        if self.closed:
            return
        self._end_here()
        self._gone_here(CLOSE_EXECUTOR_GONE, reason)

    def _room_for(self, size: int) -> bool:
        """Whether ``_hand_on`` of a frame this size would not wait."""
        raise NotImplementedError

    async def _hand_on(self, data: bytes | memoryview) -> None:
        raise NotImplementedError

    async def _closed_by_peer(self, close: Close) -> None:
        raise NotImplementedError

    def _gone_here(self, code: int, reason: str) -> None:
        raise NotImplementedError


class RemoteHarness(Link):
    """At the executor's node: a harness socket held by node ``node``."""

    def __init__(
        self,
        host: LinkHost,
        link_id: str,
        node: str,
        relay: Relay,
        executor: ExecutorPeer,
        label: str,
        credential: str,
    ) -> None:
        super().__init__(host, link_id, node, executor.environment_id)
        self.relay = relay
        self.executor = executor
        self.label = label
        self.credential = credential

    @property
    def closing(self) -> bool:
        return self.closed

    def _room_for(self, size: int) -> bool:
        return self.executor.outbox.has_room(size)

    async def _hand_on(self, data: bytes | memoryview) -> None:
        await self.relay.from_harness(self, data)

    async def _closed_by_peer(self, close: Close) -> None:
        await self.relay.detach_harness(self)

    def _gone_here(self, code: int, reason: str) -> None:
        self.host.spawn(self.relay.detach_harness(self))

    def finish(self, code: int, reason: str, *, drain: bool) -> None:
        """Close the harness socket at its node; its streams end at the executor."""
        del drain  # the harness's node drains what it already has
        self.end(Close(code, reason))
        self._gone_here(code, reason)

    def executor_gone(self, streams: list[str]) -> None:
        self.end(
            Close(CLOSE_EXECUTOR_GONE, "executor disconnected", tuple(streams), RESET_EXECUTOR_GONE)
        )


class RemoteExecutor(Link):
    """At the harness's node: the executor socket ``socket`` held by node ``node``."""

    def __init__(
        self,
        host: LinkHost,
        link_id: str,
        node: str,
        environment_id: str,
        registration_id: str,
        socket: str,
    ) -> None:
        super().__init__(host, link_id, node, environment_id)
        self.registration_id = registration_id
        self.socket = socket
        self.harness: HarnessPeer | None = None
        self._ended: tuple[int, str] | None = None

    @property
    def closing(self) -> bool:
        return self.closed

    def bind(self, harness: HarnessPeer) -> bool:
        """The harness socket is up; False if the link ended while it was upgrading."""
        self.harness = harness
        return not self.closed

    async def forward(self, data: bytes | memoryview) -> bool:
        return await self.deliver(data)

    def _room_for(self, size: int) -> bool:
        return self.harness is not None and self.harness.outbox.has_room(size)

    async def _hand_on(self, data: bytes | memoryview) -> None:
        if self.harness is not None:
            await self.harness.outbox.put(data)

    async def _closed_by_peer(self, close: Close) -> None:
        harness = self.harness
        if harness is None:
            return
        for stream_id in close.resets:
            if harness.outbox.try_put(encode_reset(stream_header(stream_id), close.reset_reason)):
                harness.relay.stats.resets_sent += 1
        harness.finish(close.code, close.reason, drain=True)

    def _gone_here(self, code: int, reason: str) -> None:
        if self.harness is not None:
            self.harness.finish(code, reason, drain=code != CLOSE_FRAMES_LOST)

    def harness_gone(self) -> None:
        """The harness socket ended: its streams end at the executor."""
        self.end(Close(CLOSE_GOING_AWAY, "harness disconnected"))
