"""Live relay sockets per environment and the routing of frames between them (the I/O
around ``router.py``'s decisions)."""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

from codexexec.relay.frames import (
    FrameError,
    body_kind,
    data_stream_id,
    encode_reset,
    parse,
    stream_header,
)
from codexexec.rendezvous.events import event
from codexexec.rendezvous.handshake_budget import HandshakeBudget
from codexexec.rendezvous.links import RemoteHarness
from codexexec.rendezvous.options import (
    CLOSE_GOING_AWAY,
    CLOSE_REPLACED,
    CLOSE_SUPERSEDED,
    CLOSE_TOO_SLOW,
    RESET_HARNESS_GONE,
    RendezvousOptions,
)
from codexexec.rendezvous.peers import (
    SLOW_HARNESS_GRACE_SECONDS,
    ExecutorPeer,
    HarnessEnd,
    HarnessPeer,
    Peer,
)
from codexexec.rendezvous.router import Drop, Refuse
from codexexec.tasks import TaskSet

if TYPE_CHECKING:
    from codexexec.rendezvous.bus import NatsBus
    from codexexec.rendezvous.bus_wire import ExecutorLocation


@dataclass
class RelayStats:
    to_executor: int = 0
    to_harness: int = 0
    dropped_text: int = 0
    dropped_invalid: int = 0
    dropped_unrouted: int = 0
    refused_streams: int = 0
    resets_sent: int = 0
    slow_harnesses: int = 0
    failed_handshakes: int = 0
    paused_credentials: int = 0
    bytes_to_executor: int = 0
    bytes_to_harness: int = 0
    # Across the bus (``bus.py``): link messages sent and received, and links ended because
    # frames were lost or the other node could not be reached.
    bus_messages_out: int = 0
    bus_messages_in: int = 0
    bus_bytes_out: int = 0
    bus_bytes_in: int = 0
    bus_dropped_invalid: int = 0
    bus_links_broken: int = 0

    def as_json(self) -> dict[str, int]:
        return dict(self.__dict__)


class Relay:
    """Live sockets per environment and the stream-id routing between them."""

    def __init__(self, options: RendezvousOptions, node_id: str = "local") -> None:
        self.options = options
        self.node_id = node_id
        # Set when this node is one of a cluster (``bus.py``).
        self.bus: NatsBus | None = None
        self.stats = RelayStats()
        self.executors: dict[str, ExecutorPeer] = {}
        self.peers: set[Peer] = set()
        self._tasks = TaskSet()
        self.spawn = self._tasks.spawn
        self._counter = 0
        self.shutting_down = False
        self.handshakes = HandshakeBudget()

    def next_label(self, prefix: str) -> str:
        self._counter += 1
        return f"{prefix}-{self._counter}"

    def online(self, environment_id: str, registration_id: str) -> ExecutorPeer | None:
        peer = self.executors.get(environment_id)
        if peer is None or peer.closing or peer.registration_id != registration_id:
            return None
        return peer

    async def locate(
        self, environment_id: str, registration_id: str
    ) -> ExecutorPeer | ExecutorLocation | None:
        """The executor socket of this registration: here, on another node, or nowhere.

        Raises ``BusUnavailable`` when other nodes could not be asked."""
        local = self.online(environment_id, registration_id)
        if local is not None or self.bus is None:
            return local
        return await self.bus.where(environment_id, registration_id)

    async def registered(self, environment_id: str, registration_id: str) -> None:
        """A new registration: sockets under older ones close, here and on every node."""
        self.supersede(environment_id, registration_id)
        if self.bus is not None:
            await self.bus.registered(environment_id, registration_id)

    async def announce(self, peer: ExecutorPeer) -> None:
        """The executor socket is attached: other nodes can now find it."""
        if self.bus is not None:
            await self.bus.executor_attached(peer)

    # executor lifecycle

    def attach_executor(self, peer: ExecutorPeer) -> None:
        old = self.executors.get(peer.environment_id)
        self.executors[peer.environment_id] = peer
        self.peers.add(peer)
        if old is not None:
            event(
                logging.INFO,
                "relay.executor_replaced",
                environment_id=peer.environment_id,
                old=old.label,
                new=peer.label,
            )
            self.detach_executor(old, CLOSE_REPLACED, "replaced by a newer executor connection")

    def detach_executor(self, peer: ExecutorPeer, code: int, reason: str) -> None:
        if self.executors.get(peer.environment_id) is peer:
            del self.executors[peer.environment_id]
            if self.bus is not None:
                self.bus.executor_detached(peer)
        ended = peer.router.executor_gone()
        for harness in list(peer.harnesses):
            harness.executor_gone(ended.get(harness, []))
        peer.harnesses.clear()
        peer.finish(code, reason, drain=False)

    def supersede(self, environment_id: str, registration_id: str) -> None:
        """A new registration: an executor socket under an older one is closed."""
        peer = self.executors.get(environment_id)
        if peer is not None and peer.registration_id != registration_id:
            event(
                logging.WARNING,
                "relay.executor_superseded",
                environment_id=environment_id,
                peer=peer.label,
            )
            self.detach_executor(peer, CLOSE_SUPERSEDED, "superseded by a newer registration")

    # harness lifecycle

    def attach_harness(self, peer: HarnessPeer) -> None:
        if isinstance(peer.executor, ExecutorPeer):
            peer.executor.harnesses.add(peer)
        self.peers.add(peer)

    async def detach_harness(self, peer: HarnessEnd) -> None:
        executor = peer.executor
        if not isinstance(executor, ExecutorPeer):  # held by another node: it resets them
            executor.harness_gone()
            return
        executor.harnesses.discard(peer)
        for stream_id in executor.router.harness_gone(peer):
            # A codexexec choice (docs/relay-protocol.md §9 leaves the real rendezvous's
            # behaviour open):
            # without this Reset the executor would keep the stream alive forever.
            if await executor.outbox.put(
                encode_reset(stream_header(stream_id), RESET_HARNESS_GONE)
            ):
                self.stats.resets_sent += 1
                event(
                    logging.DEBUG,
                    "relay.reset_sent",
                    to=executor.label,
                    stream_id=stream_id,
                    reason=RESET_HARNESS_GONE,
                )

    # frames

    def _decode(
        self, peer: Peer | RemoteHarness, data: bytes | memoryview
    ) -> tuple[str, str | None] | None:
        stream_id = data_stream_id(data)
        if stream_id is not None:
            return stream_id, "data"
        try:
            frame = parse(data, strict=False)
        except FrameError as error:
            self.stats.dropped_invalid += 1
            event(logging.DEBUG, "relay.frame_dropped", peer=peer.label, reason=error.kind.value)
            return None
        return frame.stream_id, body_kind(frame)

    def drop_text(self, peer: Peer) -> None:
        self.stats.dropped_text += 1
        event(logging.DEBUG, "relay.frame_dropped", peer=peer.label, reason="not_binary")

    async def _refuse(self, harness: HarnessEnd, stream_id: str, reason: str) -> None:
        self.stats.refused_streams += 1
        event(
            logging.WARNING,
            "relay.stream_refused",
            peer=harness.label,
            environment_id=harness.environment_id,
            reason=reason,
        )
        if await harness.offer(encode_reset(stream_header(stream_id), reason)):
            self.stats.resets_sent += 1

    async def from_harness(self, harness: HarnessEnd, data: bytes | memoryview) -> None:
        executor = harness.executor
        if not isinstance(executor, ExecutorPeer):
            # Held by another node, which decodes, routes and counts it.
            if await executor.forward(data):
                self.stats.to_executor += 1
                self.stats.bytes_to_executor += len(data)
            else:
                self.stats.dropped_unrouted += 1
            return
        decoded = self._decode(harness, data)
        if decoded is None:
            return
        stream_id, kind = decoded
        paused = (
            kind == "handshake"
            and self.options.pause_failing_credentials
            and self.handshakes.blocked_for(harness.credential, time.monotonic()) > 0
        )
        verdict = executor.router.from_harness(harness, stream_id, kind, handshakes_paused=paused)
        if isinstance(verdict, Refuse):
            await self._refuse(harness, stream_id, verdict.reason)
            return
        if isinstance(verdict, Drop):  # a Reset for a stream it does not own
            self.stats.dropped_unrouted += 1
            return
        if verdict.claimed:
            event(logging.DEBUG, "relay.stream_claimed", peer=harness.label, stream_id=stream_id)
        if await executor.outbox.put(data):
            self.stats.to_executor += 1
            self.stats.bytes_to_executor += len(data)
        else:
            self.stats.dropped_unrouted += 1

    def _failed_handshake(self, harness: HarnessEnd) -> None:
        """The executor refused a handshake this harness sent: its credential's failure."""
        self.stats.failed_handshakes += 1
        if not self.options.pause_failing_credentials:
            return
        if self.handshakes.charge(harness.credential, time.monotonic()):
            self.stats.paused_credentials += 1
            event(
                logging.WARNING,
                "relay.handshakes_paused",
                peer=harness.label,
                environment_id=harness.environment_id,
                credential=harness.credential,
                seconds=self.handshakes.blocked_for(harness.credential, time.monotonic()),
            )

    async def from_executor(self, executor: ExecutorPeer, data: bytes) -> None:
        decoded = self._decode(executor, data)
        if decoded is None:
            return
        stream_id, kind = decoded
        verdict = executor.router.from_executor(stream_id, kind)
        if isinstance(verdict, Drop):
            self.stats.dropped_unrouted += 1
            event(
                logging.DEBUG,
                "relay.frame_unrouted",
                peer=executor.label,
                stream_id=stream_id,
                kind=kind,
            )
            return
        harness = verdict.harness
        if verdict.handshake == "refused":
            self._failed_handshake(harness)
        elif verdict.handshake == "answered":
            self.handshakes.succeeded(harness.credential)
        if await harness.offer(data):
            self.stats.to_harness += 1
            self.stats.bytes_to_harness += len(data)
            return
        if harness.closing:
            self.stats.dropped_unrouted += 1
            return
        # A harness reading slower than its executor writes gets backpressure (nothing is
        # lost); one that makes no progress for a while must not stall every other stream
        # on this executor socket, so it is cut.
        try:
            async with asyncio.timeout(SLOW_HARNESS_GRACE_SECONDS):
                delivered = await harness.deliver(data)
        except TimeoutError:
            delivered = False
        if delivered:
            self.stats.to_harness += 1
            self.stats.bytes_to_harness += len(data)
            return
        if harness.closing:
            self.stats.dropped_unrouted += 1
            return
        self.stats.slow_harnesses += 1
        event(
            logging.WARNING,
            "relay.harness_too_slow",
            peer=harness.label,
            environment_id=harness.environment_id,
        )
        harness.finish(CLOSE_TOO_SLOW, "harness not reading fast enough", drain=False)

    async def shutdown(self) -> None:
        self.shutting_down = True
        if self.bus is not None:
            self.bus.stop_announcing()
        for peer in list(self.peers):
            peer.finish(CLOSE_GOING_AWAY, "rendezvous shutting down", drain=False)
        await asyncio.gather(
            *(peer.wait_closed() for peer in list(self.peers)), return_exceptions=True
        )
        await self._tasks.wait()
