"""A rendezvous node's own NATS connection for link messages (``bus.py``, docs/cluster.md).

nats-py, which carries the rest of the bus, hands every message it receives through two tasks
(its reader's, then the subscription's) and every one it sends through a third (its
flusher's); under load on two cores those hops and its parsing were most of what a cross-node
round trip adds. Link messages are nearly all of the bus's traffic, so they have a connection
of their own: read as they arrive (``nats_wire.py``), handed on in order by one task, sent
with one write.

Losing the connection ends every link (a frame may have gone with it, and the harnesses
reconnect); it connects again by itself, as nats-py does.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import ssl
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any, cast
from urllib.parse import urlsplit

from codexexec.rendezvous.bus_wire import BusUnavailable
from codexexec.rendezvous.events import event
from codexexec.rendezvous.nats_wire import (
    PING,
    PONG,
    Info,
    Message,
    NatsWireError,
    Ping,
    Pong,
    ServerError,
    ServerStream,
    connect_command,
    pub_command,
    sub_command,
)
from codexexec.shown_urls import origin

_SUBJECT = re.compile(r"[!-~]{1,512}")  # printable ASCII and no space: one NATS subject
CONNECT_TIMEOUT_SECONDS = 2.0
# Messages a subscription may hold before it drops (as NATS does for a slow consumer); links
# keep far less in flight (``credit.py``), so only a flood that is not ours reaches it. The
# same bounds serve nats-py's subscriptions (bus.py).
PENDING_MESSAGES = 65536
PENDING_BYTES = 64 * 1024 * 1024
RECONNECT_WAIT_SECONDS = 0.5
PING_INTERVAL_SECONDS = 2.0
MAX_SERVERS = 32  # the URL's and those announced
MAX_OUTSTANDING_PINGS = 2


class LinkConnection:
    """Subscribed to ``subject``; ``deliver`` gets each message's payload in order, ``lost``
    is called when a connection that was up goes away."""

    def __init__(
        self,
        url: str,
        subject: str,
        name: str,
        deliver: Callable[[bytes], Awaitable[None]],
        lost: Callable[[], None],
    ) -> None:
        parts = urlsplit(url)
        # The URL's server first, then others a NATS cluster announces (INFO connect_urls),
        # tried in turn when the connection is lost, as nats-py does.
        self._servers: list[tuple[str, int]] = [(parts.hostname or "127.0.0.1", parts.port or 4222)]
        self._turn = 0
        self._tls = parts.scheme == "tls"
        # Credentials as nats-py takes them from the same URL: as written, a user without a
        # password being a token.
        self._auth: dict[str, str] = {}
        if parts.username is not None and parts.password is None:
            self._auth = {"auth_token": parts.username}
        elif parts.username is not None:
            self._auth = {"user": parts.username, "pass": parts.password or ""}
        self._shown = origin(url)
        self._subject = subject
        self._name = name
        self._deliver = deliver
        self._lost = lost
        self._wire: _Wire | None = None
        self._inbox: deque[bytes] = deque()
        self._inbox_bytes = 0
        self.dropped = 0  # messages past the inbox's bounds
        self._readable = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._closing = False

    @property
    def connected(self) -> bool:
        return self._wire is not None and self._wire.ready

    async def start(self) -> None:
        """Connect once (BusUnavailable if that fails), then keep connected."""
        self._wire = await self._connect()
        self._tasks = [
            asyncio.create_task(self._keep_connected(), name="rendezvous-link-conn"),
            asyncio.create_task(self._hand_on(), name="rendezvous-link-inbox"),
        ]

    async def close(self) -> None:
        self._closing = True
        for task in self._tasks:
            task.cancel()
        if self._tasks:
            await asyncio.wait(self._tasks, timeout=CONNECT_TIMEOUT_SECONDS)
        if self._wire is not None:
            self._wire.close()

    def publish(self, subject: str, data: bytes) -> bool:
        """Send one message at once; False when not connected (the link then ends)."""
        wire = self._wire
        if (
            wire is None
            or not wire.ready
            or len(data) > wire.stream.max_payload
            or not _SUBJECT.fullmatch(subject)  # node ids come from other nodes
        ):
            return False
        try:
            wire.transport.writelines(pub_command(subject, data))
        except (OSError, RuntimeError):  # uvloop: RuntimeError once the socket is gone
            return False
        return True

    # -- inside

    def _received(self, payload: bytes) -> None:
        # Links keep far less than this in flight (credit.py); past it, messages are dropped
        # as NATS drops them for a slow consumer, and the link that misses one ends.
        if len(self._inbox) >= PENDING_MESSAGES or self._inbox_bytes > PENDING_BYTES:
            self.dropped += 1
            if self.dropped == 1 or self.dropped % 1000 == 0:
                event(logging.WARNING, "bus.link_messages_dropped", dropped=self.dropped)
            return
        self._inbox.append(payload)
        self._inbox_bytes += len(payload)
        self._readable.set()

    async def _hand_on(self) -> None:
        inbox = self._inbox
        while True:
            if not inbox:
                self._readable.clear()
                await self._readable.wait()
                continue
            payload = inbox.popleft()
            self._inbox_bytes -= len(payload)
            try:
                await self._deliver(payload)
            except Exception as error:  # one bad message must not stop the others
                event(logging.WARNING, "bus.link_message_failed", error=type(error).__name__)

    async def _keep_connected(self) -> None:
        while not self._closing:
            wire = self._wire
            assert wire is not None
            await self._watch(wire)
            if self._closing:
                return
            event(logging.WARNING, "bus.link_connection_lost", url=self._shown)
            self._inbox.clear()
            self._inbox_bytes = 0
            try:
                self._lost()
            except Exception as error:  # the links' ending must not stop the reconnecting
                event(logging.ERROR, "bus.link_loss_failed", error=type(error).__name__)
            while not self._closing:
                self._turn += 1
                server = self._servers[self._turn % len(self._servers)]
                if self._turn % len(self._servers) == 0:
                    await asyncio.sleep(RECONNECT_WAIT_SECONDS)  # after a round of them all
                try:
                    self._wire = await self._connect(server)
                except BusUnavailable:
                    continue
                event(logging.INFO, "bus.link_connection_restored", url=self._shown)
                break

    async def _watch(self, wire: _Wire) -> None:
        """Until ``wire`` closes; it is cut when the server stops answering pings."""
        while not wire.closed.done():
            # Not wait_for: on 3.11 it can swallow a cancel that meets the future's end.
            await asyncio.wait({wire.closed}, timeout=PING_INTERVAL_SECONDS)
            if wire.closed.done():
                return
            if wire.outstanding_pings >= MAX_OUTSTANDING_PINGS or wire.transport.is_closing():
                wire.transport.abort()
                await wire.closed
                return
            wire.outstanding_pings += 1
            with contextlib.suppress(OSError, RuntimeError):
                wire.transport.write(PING)

    def _announced(self, info: Info) -> None:
        urls = info.fields.get("connect_urls")
        if not isinstance(urls, list):
            return
        for url in urls:
            if len(self._servers) >= MAX_SERVERS:
                return
            try:
                parts = urlsplit(f"nats://{url}")
                host, port = parts.hostname, parts.port or 4222
            except (TypeError, ValueError):
                continue
            if host and (host, port) not in self._servers:
                self._servers.append((host, port))

    async def _connect(self, server: tuple[str, int] | None = None) -> _Wire:
        host, port = server or self._servers[0]
        loop = asyncio.get_running_loop()
        wire = _Wire(self._received, self._announced)
        try:
            async with asyncio.timeout(CONNECT_TIMEOUT_SECONDS):
                await loop.create_connection(lambda: wire, host, port)
                info = await wire.info
                if self._tls or info.fields.get("tls_required"):
                    upgraded = await loop.start_tls(
                        wire.transport,
                        wire,
                        ssl.create_default_context(),
                        server_hostname=host,
                    )
                    if upgraded is None:
                        raise OSError("TLS was not set up")
                    wire.transport = upgraded
                options = {
                    "verbose": False,
                    "pedantic": False,
                    "tls_required": self._tls,
                    "name": self._name,
                    "lang": "python",
                    "version": "codexexec",
                    "protocol": 1,
                    **self._auth,
                }
                # The PONG comes after the server has handled both: a refused CONNECT or SUB
                # (an -ERR) is known by then.
                wire.transport.write(
                    connect_command(options) + sub_command(self._subject, "1") + PING
                )
                await wire.answered
                if wire.refusal is not None:
                    raise ConnectionError(wire.refusal)
        except (OSError, TimeoutError, NatsWireError, ssl.SSLError) as error:
            wire.close()
            raise BusUnavailable(
                f"cannot open the link connection to the bus at {self._shown}: "
                f"{wire.refusal or type(error).__name__}"
            ) from None
        except BaseException:
            wire.close()
            raise
        if wire.closed.done():
            raise BusUnavailable(f"the bus at {self._shown} closed the link connection")
        wire.ready = True
        return wire


class _Wire(asyncio.Protocol):
    """One connection's I/O: events from ``nats_wire`` acted on as they arrive."""

    def __init__(
        self, received: Callable[[bytes], None], announced: Callable[[Info], None]
    ) -> None:
        loop = asyncio.get_running_loop()
        self._received = received
        self._announced = announced
        self.stream = ServerStream()
        self.transport: asyncio.Transport
        self.info: asyncio.Future[Info] = loop.create_future()
        self.answered: asyncio.Future[None] = loop.create_future()  # first PONG
        for waiter in (self.info, self.answered):  # a failure nobody waited for is no news
            waiter.add_done_callback(_retrieved)
        self.closed: asyncio.Future[None] = loop.create_future()
        self.ready = False
        self.outstanding_pings = 0
        self.refusal: str | None = None
        self.errors = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast("asyncio.Transport", transport)  # uvloop's is not a subclass

    def data_received(self, data: bytes) -> None:
        try:
            events = self.stream.feed(data)
        except NatsWireError as error:
            event(logging.WARNING, "bus.link_connection_unreadable", error=str(error))
            self.transport.abort()
            return
        for item in events:
            if isinstance(item, Message):
                self._received(item.payload)
            elif isinstance(item, Ping):
                self.transport.write(PONG)
            elif isinstance(item, Pong):
                self.outstanding_pings = 0
                if not self.answered.done():
                    self.answered.set_result(None)
            elif isinstance(item, Info):
                self._announced(item)
                if not self.info.done():
                    self.info.set_result(item)
            elif isinstance(item, ServerError):
                # e.g. 'Authorization Violation' (then the server closes the connection).
                if not self.answered.done():
                    self.refusal = self.refusal or f"the bus said: {item.text[:200]}"
                self.errors += 1
                if self.errors == 1 or self.errors % 1000 == 0:
                    event(
                        logging.WARNING,
                        "bus.link_connection_error",
                        error=item.text[:200],
                        count=self.errors,
                    )

    def connection_lost(self, exc: Exception | None) -> None:
        self.ready = False
        for waiter in (self.info, self.answered):
            if not waiter.done():
                waiter.set_exception(ConnectionError(self.refusal or "connection closed"))
        if not self.closed.done():
            self.closed.set_result(None)

    def close(self) -> None:
        self.ready = False
        transport = getattr(self, "transport", None)
        if transport is not None:
            transport.close()


def _retrieved(future: asyncio.Future[Any]) -> None:
    if not future.cancelled():
        future.exception()
