"""A rendezvous node's connection to the other nodes of its cluster, over NATS (``--bus``).

An executor's socket is held by the node it reached; a harness may reach any node. The
executor's node stays the one place that routes that executor's streams (``router.py``), so
its limits hold for the whole cluster; a harness socket on another node is a link to it
(``links.py``). What goes over NATS (``bus_wire.py``):

* where an executor socket is: the node holding it answers ``where`` requests for its
  registration, and no answer at all ("no responders") means no node holds it;
* a harness node opening a link, and the executor's node accepting or refusing it with the
  error it would have given a harness socket of its own;
* the frames of each link, with credit flow control, and how a link ended — on a
  connection of the node's own (``link_conn.py``), not nats-py's;
* "executor attached" and "registered" events, so a socket elsewhere that a newer one
  replaces or a newer registration supersedes is closed wherever it is;
* heartbeats, so links with a node that died are ended within ``bus_node_timeout``.

While the bus is down every link ends (their harnesses see the executor go and reconnect),
sockets held here keep working, and requests that need another node answer 503
``bus_unavailable``; both connections reconnect (and re-subscribe) by themselves.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Coroutine
from typing import TYPE_CHECKING, Any

import nats
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.errors import Error as NatsError
from nats.errors import NoRespondersError

from codexexec.relay.limits import MAX_WEBSOCKET_MESSAGE_BYTES
from codexexec.rendezvous.bus_wire import (
    LINK_OVERHEAD,
    SUBJECT_ALIVE,
    SUBJECT_EVENTS,
    BusRefused,
    BusUnavailable,
    BusWireError,
    ExecutorLocation,
    decode_control,
    decode_link,
    encode_control,
    node_subject,
    open_subject,
    text_field,
    where_subject,
)
from codexexec.rendezvous.events import event
from codexexec.rendezvous.link_conn import PENDING_BYTES, PENDING_MESSAGES, LinkConnection
from codexexec.rendezvous.links import Link, RemoteExecutor, RemoteHarness
from codexexec.rendezvous.membership import Membership
from codexexec.rendezvous.options import CLOSE_REPLACED
from codexexec.shown_urls import origin

if TYPE_CHECKING:
    from codexexec.rendezvous.peers import ExecutorPeer
    from codexexec.rendezvous.relay import Relay

BUS_START_TIMEOUT_SECONDS = 10.0
# Links held at once by one node, both ends counted.
MAX_LINKS = 65536


class NatsBus:
    def __init__(self, url: str, relay: Relay, observe: Callable[[str, float], None]) -> None:
        self.url = url
        # What logs and errors show: a NATS URL may carry user:password or a token.
        self.shown_url = origin(url)
        self.relay = relay
        self.node = relay.node_id
        self.options = relay.options
        self.links: dict[str, Link] = {}
        self.membership = Membership(self.options.bus_node_timeout)
        self._observe = observe
        self._nc: Client | None = None
        self._where: dict[str, Subscription] = {}  # executor socket id -> its where subscription
        self._heartbeat: asyncio.Task[None] | None = None
        self._link_conn: LinkConnection | None = None
        self._counter = 0
        self._announcing = True

    # -- lifecycle

    async def start(self) -> None:
        # The client retries without end once configured to reconnect: a bus that is not
        # there at start-up must be an error to report, not a wait that never ends.
        try:
            async with asyncio.timeout(BUS_START_TIMEOUT_SECONDS):
                self._nc = await nats.connect(
                    self.url,
                    name=f"codexexec-rendezvous-{self.node}",
                    connect_timeout=2,
                    allow_reconnect=True,
                    max_reconnect_attempts=-1,
                    reconnect_time_wait=0.5,
                    ping_interval=2,
                    max_outstanding_pings=2,
                    disconnected_cb=self._disconnected,
                    reconnected_cb=self._reconnected,
                    error_cb=self._error,
                )
        except TimeoutError:
            raise BusUnavailable(f"cannot reach the bus at {self.shown_url}: no answer") from None
        except (NatsError, OSError) as error:
            raise BusUnavailable(
                f"cannot reach the bus at {self.shown_url}: {type(error).__name__}"
            ) from None
        nc = self._nc
        if nc.max_payload < MAX_WEBSOCKET_MESSAGE_BYTES + LINK_OVERHEAD:
            await nc.close()
            raise BusUnavailable(
                f"the bus at {self.shown_url} takes messages of at most {nc.max_payload} bytes; "
                f"relay frames need {MAX_WEBSOCKET_MESSAGE_BYTES + LINK_OVERHEAD} "
                "(raise max_payload in nats-server's configuration)"
            )
        for subject, callback in (
            (open_subject(self.node), self._on_open),
            (SUBJECT_EVENTS, self._on_event),
            (SUBJECT_ALIVE, self._on_alive),
        ):
            await nc.subscribe(
                subject,
                cb=callback,
                pending_msgs_limit=PENDING_MESSAGES,
                pending_bytes_limit=PENDING_BYTES,
            )
        await nc.flush()
        self._link_conn = LinkConnection(
            self.url,
            node_subject(self.node),
            f"codexexec-rendezvous-{self.node}-links",
            self._on_link,
            self._link_conn_lost,
        )
        try:
            await self._link_conn.start()
        except BusUnavailable:
            await nc.close()
            raise
        self._heartbeat = asyncio.create_task(self._heartbeat_loop(), name="rendezvous-heartbeat")
        event(logging.INFO, "bus.connected", node=self.node, url=self.shown_url)

    def stop_announcing(self) -> None:
        """The node is draining: answer no more ``where`` requests, so harnesses go elsewhere."""
        self._announcing = False
        for subscription in list(self._where.values()):
            self.spawn(self._unsubscribe(subscription))
        self._where.clear()

    async def close(self) -> None:
        if self._heartbeat is not None:
            self._heartbeat.cancel()
        for link in list(self.links.values()):
            link.broken("rendezvous node stopping")
        if self._link_conn is not None:
            await self._link_conn.close()
        nc = self._nc
        if nc is not None and not nc.is_closed:
            try:
                await asyncio.wait_for(nc.drain(), self.options.close_timeout)
            except Exception as error:  # a bus already gone (uvloop: RuntimeError) or slow
                event(logging.DEBUG, "bus.drain_failed", error=type(error).__name__)
                with contextlib.suppress(Exception):
                    await nc.close()

    @property
    def connected(self) -> bool:
        return (
            self._nc is not None
            and self._nc.is_connected
            and self._link_conn is not None
            and self._link_conn.connected
        )

    def status(self) -> str:
        return "ok" if self.connected else "unavailable: not connected"

    # -- LinkHost

    def spawn(self, coro: Coroutine[Any, Any, Any]) -> None:
        self.relay.spawn(coro)

    async def publish(self, subject: str, data: bytes) -> bool:
        """A link message, on the link connection."""
        if self._link_conn is None or not self._link_conn.publish(subject, data):
            return False
        stats = self.relay.stats
        stats.bus_messages_out += 1
        stats.bus_bytes_out += len(data)
        return True

    def forget(self, link: Link) -> None:
        if self.links.get(link.id) is link:
            del self.links[link.id]

    # -- executor sockets held here

    async def executor_attached(self, peer: ExecutorPeer) -> None:
        """Answer ``where`` for this socket, and close any older one on other nodes."""
        nc = self._nc
        if nc is None or not self._announcing:
            return
        subject = where_subject(peer.environment_id, peer.registration_id)
        reply = encode_control(node=self.node, socket=peer.socket_id)

        async def answer(msg: Msg) -> None:
            if not peer.closing:
                await _respond(msg, reply)

        try:
            self._where[peer.socket_id] = await nc.subscribe(subject, cb=answer)
            await self._broadcast(
                "attached",
                environment_id=peer.environment_id,
                registration_id=peer.registration_id,
                socket=peer.socket_id,
            )
        except (NatsError, OSError) as error:
            # Reached from this node only until the bus is back (NATS re-subscribes then).
            event(
                logging.WARNING, "bus.announce_failed", peer=peer.label, error=type(error).__name__
            )

    def executor_detached(self, peer: ExecutorPeer) -> None:
        subscription = self._where.pop(peer.socket_id, None)
        if subscription is not None:
            self.spawn(self._unsubscribe(subscription))

    async def _unsubscribe(self, subscription: Subscription) -> None:
        # If the connection is gone, the subscription went with it.
        with contextlib.suppress(NatsError, OSError):
            await subscription.unsubscribe()

    async def registered(self, environment_id: str, registration_id: str) -> None:
        """A registration was made here: sockets under older ones close on every node."""
        try:
            await self._broadcast(
                "registered", environment_id=environment_id, registration_id=registration_id
            )
        except (NatsError, OSError) as error:
            event(
                logging.WARNING,
                "bus.announce_failed",
                environment_id=environment_id,
                error=type(error).__name__,
            )

    async def _broadcast(self, kind: str, **fields: str) -> None:
        nc = self._nc
        if nc is not None:
            await nc.publish(SUBJECT_EVENTS, encode_control(kind=kind, node=self.node, **fields))

    # -- asking other nodes

    async def _request(self, operation: str, subject: str, payload: bytes) -> Msg:
        nc = self._nc
        if nc is None or not nc.is_connected:
            raise BusUnavailable("the rendezvous bus is unavailable")
        started = time.perf_counter()
        try:
            return await nc.request(subject, payload, timeout=self.options.bus_request_timeout)
        finally:
            self._observe(operation, time.perf_counter() - started)

    async def where(self, environment_id: str, registration_id: str) -> ExecutorLocation | None:
        """The node holding the executor socket of this registration; None if no node does."""
        try:
            msg = await self._request("where", where_subject(environment_id, registration_id), b"")
        except NoRespondersError:
            return None
        except (TimeoutError, NatsError, OSError):
            raise BusUnavailable(
                "no answer from the rendezvous node holding the executor"
            ) from None
        try:
            body = decode_control(msg.data)
            return ExecutorLocation(text_field(body, "node"), text_field(body, "socket"))
        except BusWireError:
            raise BusUnavailable("an unreadable answer on the rendezvous bus") from None

    async def open_link(
        self,
        location: ExecutorLocation,
        environment_id: str,
        registration_id: str,
        credential: str,
    ) -> RemoteExecutor:
        """A link for one harness socket here to the executor socket at ``location``."""
        if len(self.links) >= MAX_LINKS:
            raise BusRefused(503, "too_many_links", "this rendezvous node holds too many links")
        if not self.connected:  # a link's frames would go nowhere
            raise BusUnavailable("the rendezvous bus is unavailable")
        self._counter += 1
        link = RemoteExecutor(
            self,
            f"{self.node}.{self._counter}",
            location.node,
            environment_id,
            registration_id,
            location.socket,
        )
        payload = encode_control(
            link=link.id,
            node=self.node,
            socket=location.socket,
            environment_id=environment_id,
            registration_id=registration_id,
            credential=credential,
        )
        self.links[link.id] = link
        self.membership.heard(location.node, time.monotonic())
        try:
            msg = await self._request("open", open_subject(location.node), payload)
            body = decode_control(msg.data)
        except NoRespondersError:
            self.forget(link)
            raise BusRefused(
                409,
                "environment_offline",
                f"the executor for environment {environment_id!r} is not connected",
            ) from None
        except (TimeoutError, NatsError, OSError, BusWireError):
            self.forget(link)
            raise BusUnavailable(
                "no answer from the rendezvous node holding the executor"
            ) from None
        error = body.get("error")
        if isinstance(error, dict):
            self.forget(link)
            raise BusRefused(
                int(error.get("status", 502)),
                str(error.get("code", "bus_error")),
                str(error.get("message", "")),
            )
        link.start()
        return link

    # -- subscriptions

    async def _on_open(self, msg: Msg) -> None:
        try:
            body = decode_control(msg.data)
            fields = {
                name: text_field(body, name)
                for name in (
                    "link",
                    "node",
                    "socket",
                    "environment_id",
                    "registration_id",
                    "credential",
                )
            }
        except BusWireError:
            self.relay.stats.bus_dropped_invalid += 1
            return
        answer = self._accept_link(**fields)
        if not await _respond(msg, encode_control(**answer)) and "ok" in answer:
            remote = self.links.get(fields["link"])
            if remote is not None:  # nobody will use it
                self._broken(remote, "link request unanswerable")

    def _accept_link(
        self,
        link: str,
        node: str,
        socket: str,
        environment_id: str,
        registration_id: str,
        credential: str,
    ) -> dict[str, Any]:
        if not self.connected:  # a link's frames would go nowhere
            return _refusal(503, "bus_unavailable", "the rendezvous bus is unavailable")
        relay = self.relay
        executor = relay.online(environment_id, registration_id)
        if relay.shutting_down or executor is None or executor.socket_id != socket:
            return _refusal(
                409,
                "environment_offline",
                f"the executor for environment {environment_id!r} is not connected",
            )
        if len(executor.harnesses) >= self.options.max_harness_sockets:
            return _refusal(
                429,
                "too_many_relay_sockets",
                f"environment {environment_id!r} has too many harness connections",
            )
        if len(self.links) >= MAX_LINKS or link in self.links:
            return _refusal(
                503,
                "too_many_links",
                "the rendezvous node holding the executor holds too many links",
            )
        remote = RemoteHarness(self, link, node, relay, executor, link, credential)
        self.links[link] = remote
        self.membership.heard(node, time.monotonic())
        executor.harnesses.add(remote)
        remote.start()
        event(logging.INFO, "bus.link_opened", link=link, node=node, executor=executor.label)
        return {"ok": True}

    async def _on_link(self, data: bytes) -> None:
        stats = self.relay.stats
        stats.bus_messages_in += 1
        stats.bus_bytes_in += len(data)
        try:
            message = decode_link(data)
        except BusWireError:
            stats.bus_dropped_invalid += 1
            return
        link = self.links.get(message.link)
        if link is not None:  # else it ended here already
            await link.received(message)

    async def _on_event(self, msg: Msg) -> None:
        try:
            body = decode_control(msg.data)
            node = text_field(body, "node")
            kind = text_field(body, "kind")
            environment_id = text_field(body, "environment_id")
            registration_id = text_field(body, "registration_id")
        except BusWireError:
            self.relay.stats.bus_dropped_invalid += 1
            return
        if node == self.node:
            return
        relay = self.relay
        socket = body.get("socket")
        if kind == "registered":
            relay.supersede(environment_id, registration_id)
        elif kind == "attached":
            local = relay.executors.get(environment_id)
            if local is not None and local.socket_id != socket:
                relay.detach_executor(
                    local, CLOSE_REPLACED, "replaced by a newer executor connection"
                )
        else:
            return
        for link in list(self.links.values()):
            if not isinstance(link, RemoteExecutor) or link.environment_id != environment_id:
                continue
            if kind == "registered" and link.registration_id != registration_id:
                self._broken(link, "executor superseded")
            elif kind == "attached" and link.socket != socket:
                self._broken(link, "executor replaced")

    async def _on_alive(self, msg: Msg) -> None:
        try:
            node = text_field(decode_control(msg.data), "node")
        except BusWireError:
            self.relay.stats.bus_dropped_invalid += 1
            return
        if node != self.node:
            self.membership.heard(node, time.monotonic())

    async def _heartbeat_loop(self) -> None:
        beat = encode_control(node=self.node)
        while True:
            nc = self._nc
            if nc is not None and nc.is_connected:
                with contextlib.suppress(NatsError, OSError, RuntimeError):
                    await nc.publish(SUBJECT_ALIVE, beat)
            for node in self.membership.expired(time.monotonic()):
                event(logging.WARNING, "bus.node_silent", node=node)
                for link in list(self.links.values()):
                    if link.node == node:
                        self._broken(link, "rendezvous node unreachable")
            await asyncio.sleep(self.options.bus_heartbeat)

    def _broken(self, link: Link, reason: str) -> None:
        self.relay.stats.bus_links_broken += 1
        link.broken(reason)

    # -- NATS connection events

    async def _disconnected(self) -> None:
        event(logging.WARNING, "bus.disconnected", node=self.node)
        self._link_conn_lost()

    def _link_conn_lost(self) -> None:
        for link in list(self.links.values()):
            self._broken(link, "rendezvous bus unavailable")

    async def _reconnected(self) -> None:
        event(logging.INFO, "bus.reconnected", node=self.node)

    async def _error(self, error: Exception) -> None:
        # While reconnecting, every failed attempt reports here; the outage was logged once.
        level = logging.WARNING if self.connected else logging.DEBUG
        event(level, "bus.error", node=self.node, error=type(error).__name__)


def _refusal(status: int, code: str, message: str) -> dict[str, Any]:
    return {"error": {"status": status, "code": code, "message": message}}


async def _respond(msg: Msg, data: bytes) -> bool:
    """Answer a request; False if it cannot be (no reply subject: not ours; or bus down)."""
    try:
        await msg.respond(data)
    except (NatsError, OSError, RuntimeError):
        return False
    return True
