"""`codexexec rendezvous`: environment registry and frame relay in one aiohttp service.

HTTP (JSON, Codex's request/response shapes; errors are ``{"error":{"code","message"}}``):

* ``POST /cloud/environment/{id}/register`` - executor bearer. Body
  ``{"security_profile":"noise_hybrid_ik_v1","executor_public_key":{…}}`` (the key is stored as
  opaque JSON), or no body / ``{}`` / ``{"security_profile":"legacy"}`` for the legacy cleartext
  relay. Answers ``{environment_id, url, security_profile, executor_registration_id}``; ``url`` is
  the executor's signed relay websocket URL (``role=environment``). A new registration replaces
  the environment's previous one (and closes a socket still connected under it).
* ``POST /cloud/environment/{id}/connect`` - harness bearer. Body ``{"harness_public_key":{…}}``
  (Noise) or empty (legacy). Answers the connect bundle ``{environment_id, url, security_profile,
  executor_registration_id, executor_public_key, harness_key_authorization}`` (the last two only
  for Noise); ``url`` is a short-lived signed ``role=harness`` URL and the authorization is
  single-use and short-lived. 404 ``environment_not_found`` when nothing is registered, 409
  ``environment_offline`` when the registered executor is not connected (Codex's harness retries
  that code), 429 ``too_many_authorizations`` when the environment already holds
  ``max_authorizations`` unexpired ones (a harness key over 4 KiB of JSON is refused).
* ``POST /cloud/environment/{id}/validate`` - executor bearer. Body ``{executor_registration_id,
  harness_public_key, harness_key_authorization}``; answers ``{"valid": true|false}`` and spends the
  authorization whatever the answer.
* ``GET /healthz`` - no auth; ``{"status":"ok", "store":"ok", …counts}`` (503 when the store
  does not answer or the node is stopping).
* ``GET /metrics`` - no auth; Prometheus text (``metrics.py``).
* ``POST /v1/agent/{runtime_id}/task/register`` - Agent Identity task registration for the agents
  in ``--agent-keys`` (``agent_auth.py``), so an executor started with
  ``--allow-agent-identity-auth`` can then authenticate with ``Authorization: AgentAssertion …``
  wherever a bearer is accepted.

Relay websocket ``GET /relay?role=…&environment_id=…&registration_id=…&expires=…&sig=…`` (the
signed query is the credential; expired → 401, forged → 403, stale registration → 401 so Codex's
executor re-registers and its harness fetches a fresh bundle):

* ``role=environment``: one socket per registered executor; a new one replaces (closes) the old.
* ``role=harness``: one socket per logical connection (at most ``max_harness_sockets`` per
  executor socket; beyond that 429), bound to the executor socket that was online when it
  connected; it is closed when that executor socket goes away (Noise streams never
  survive an executor reconnect).

Routing reads only each frame's ``stream_id`` and body kind; payloads (Noise ciphertext, or
cleartext JSON for the legacy profile) are forwarded byte for byte and never interpreted.

* harness → executor: forwarded as is. The first frame on a stream id claims it for that harness
  socket; a frame on an id another harness holds (or beyond the per-socket stream limit) is
  dropped and answered with a Reset to the sender only.
* executor → harness: by stream id to the claiming harness; unclaimed ids are dropped.
* A Reset in either direction is forwarded and releases the claim.
* Text messages and frames that do not decode/validate are dropped and counted; the socket stays.
* **Harness disconnect:** the rendezvous sends the executor a Reset for every stream the harness
  still held. This is a codexexec choice: what the real rendezvous does is unknown (verified §7),
  and a transparent relay leaves the executor's stream alive forever (verified §5), so without
  it every dropped harness would leak an executor stream slot (of 128).
* **Executor disconnect/replacement:** every harness bound to it gets a Reset for its streams and
  is then closed.

Backpressure: every socket has a bounded outbox (frames and bytes) drained by one writer task.
Harness → executor waits for room (the harness's reader stops, which pushes back over TCP); an
executor → harness frame that does not fit closes that harness (slow consumer) instead of stalling
every other stream on the executor socket. Messages are capped at 256 KiB.

Logs are ``event key=value`` lines on the ``codexexec.rendezvous`` logger: never a token, an
authorization, a public key, a signed URL (paths only) or a payload.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import logging
import re
import signal
import sys
import time
from collections import deque
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final
from urllib.parse import urlsplit

from aiohttp import WSMsgType, web
from aiohttp.typedefs import Handler

from codexexec.protocol.registry import LEGACY_PROFILE as SECURITY_PROFILE_LEGACY
from codexexec.protocol.registry import NOISE_PROFILE as SECURITY_PROFILE_NOISE
from codexexec.protocol.registry import NOISE_SUITES, STREAM_ID_HEADER
from codexexec.relay.frames import FrameError, body_kind, encode_reset, parse, stream_header
from codexexec.relay.limits import MAX_WEBSOCKET_MESSAGE_BYTES
from codexexec.rendezvous.agent_auth import AgentKeys, is_agent_assertion
from codexexec.rendezvous.auth import (
    AuthError,
    Principal,
    Role,
    TokenTable,
    create_dev_token_file,
    loosely_permitted,
    state_dir,
)
from codexexec.rendezvous.handshake_budget import HandshakeBudget
from codexexec.rendezvous.metrics import CONTENT_TYPE, RendezvousMetrics, TimedStore
from codexexec.rendezvous.router import Drop, Refuse, StreamRouter
from codexexec.rendezvous.signing import (
    RELAY_PATH,
    RelayRole,
    RelayTicket,
    RelayUrlSigner,
    SignatureError,
)
from codexexec.rendezvous.store import (
    AuthorizationLimit,
    Registration,
    RegistryStore,
    StoreUnavailable,
    ValidationOutcome,
    canonical_json,
    open_store,
)

__all__ = [
    "SECURITY_PROFILE_LEGACY",
    "SECURITY_PROFILE_NOISE",
    "RelayStats",
    "RendezvousOptions",
    "RunningRendezvous",
    "build_app",
    "parse_listen_url",
    "run_rendezvous",
    "start_rendezvous",
]

log = logging.getLogger("codexexec.rendezvous")

DB_FILENAME: Final = "rendezvous.sqlite3"

# Reset reasons the rendezvous itself sends (cleartext, unauthenticated: receivers never show
# them; Codex's harness substitutes "Noise relay stream reset", its executor ignores the text).
RESET_HARNESS_GONE: Final = "rendezvous_harness_disconnected"
RESET_EXECUTOR_GONE: Final = "rendezvous_executor_disconnected"

# Websocket close codes (4000-4999: private use).
CLOSE_GOING_AWAY: Final = 1001
CLOSE_REPLACED: Final = 4000
CLOSE_SUPERSEDED: Final = 4001
CLOSE_EXECUTOR_GONE: Final = 4002
CLOSE_TOO_SLOW: Final = 4003

_ENVIRONMENT_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,255}")
_HOST = re.compile(r"[A-Za-z0-9.-]+(:[0-9]{1,5})?|\[[0-9A-Fa-f:.]+\](:[0-9]{1,5})?")
_SIMPLE_VALUE = re.compile(r"[A-Za-z0-9._:/@+-]+")


@dataclass(frozen=True)
class RendezvousOptions:
    """Tunables (seconds and bytes); the defaults suit Codex 0.169.0."""

    public_url: str | None = None  # base for relay URLs; default: the Host the caller used
    environment_url_ttl: float = 24 * 3600.0
    harness_url_ttl: float = 120.0
    authorization_ttl: float = 120.0
    max_message_bytes: int = MAX_WEBSOCKET_MESSAGE_BYTES
    outbox_frames: int = 256
    outbox_bytes: int = 4 * 1024 * 1024
    max_streams_per_harness: int = 1
    heartbeat: float | None = 30.0
    close_timeout: float = 5.0
    max_body_bytes: int = 64 * 1024
    # What one harness-token holder can make the rendezvous keep: unexpired one-time
    # authorizations per environment, and harness relay sockets per executor socket (its
    # executor serves at most 128 streams, Codex's harness opens one socket per stream).
    max_authorizations: int = 1024
    max_harness_sockets: int = 256
    agent_keys: Path | None = None  # agents admitted by AgentAssertion (agent_auth.py)
    # Stop relaying the handshakes of a harness credential that keeps failing them
    # (handshake_budget.py), so it cannot pause an executor for everyone else.
    pause_failing_credentials: bool = True


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

    def as_json(self) -> dict[str, int]:
        return dict(self.__dict__)


class ApiError(Exception):
    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.extra: dict[str, str] = {}


_MAX_LOGGED_VALUE = 160
# A hybrid key's JSON is about 1.7 KB; a harness key is kept with every authorization.
MAX_HARNESS_KEY_JSON_BYTES: Final = 4096


def _fmt(value: object) -> str:
    text = str(value)
    if len(text) > _MAX_LOGGED_VALUE:  # peer-supplied strings (stream ids, headers) are bounded
        text = text[:_MAX_LOGGED_VALUE] + "…"
    if _SIMPLE_VALUE.fullmatch(text):
        return text
    return json.dumps(text)


def _event(level: int, event: str, **fields: object) -> None:
    if log.isEnabledFor(level):
        text = " ".join(f"{name}={_fmt(value)}" for name, value in fields.items())
        log.log(
            level,
            "%s %s",
            event,
            text,
            extra={"rendezvous_event": event, "rendezvous_fields": fields},
        )


def error_response(
    status: int,
    code: str,
    message: str,
    headers: dict[str, str] | None = None,
    extra: dict[str, str] | None = None,
) -> web.Response:
    return web.json_response(
        {"error": {"code": code, "message": message, **(extra or {})}},
        status=status,
        headers=headers,
    )


# -- outbox and peers ------------------------------------------------------------------------


# How long a harness may fail to drain its outbox before it is cut off.
SLOW_HARNESS_GRACE_SECONDS = 10.0
# /healthz answers within this even when the store hangs.
HEALTH_STORE_TIMEOUT_SECONDS = 2.0


class Outbox:
    """A bounded FIFO of outgoing websocket messages (frame count and byte budget).

    One oversized item is always admitted into an empty outbox, so a single frame can never
    wedge it.
    """

    def __init__(self, max_frames: int, max_bytes: int) -> None:
        self._items: deque[bytes] = deque()
        self._bytes = 0
        self._max_frames = max_frames
        self._max_bytes = max_bytes
        self._closed = False
        self._readable = asyncio.Event()
        self._writable = asyncio.Event()
        self._writable.set()

    @property
    def closed(self) -> bool:
        return self._closed

    def __len__(self) -> int:
        return len(self._items)

    def _fits(self, size: int) -> bool:
        if not self._items:
            return True
        return len(self._items) < self._max_frames and self._bytes + size <= self._max_bytes

    def _append(self, data: bytes) -> None:
        self._items.append(data)
        self._bytes += len(data)
        self._readable.set()

    def try_put(self, data: bytes) -> bool:
        if self._closed or not self._fits(len(data)):
            return False
        self._append(data)
        return True

    async def put(self, data: bytes) -> bool:
        """Wait for room; False if the outbox was closed first."""
        while not self._closed and not self._fits(len(data)):
            self._writable.clear()
            await self._writable.wait()
        if self._closed:
            return False
        self._append(data)
        return True

    async def get(self) -> bytes | None:
        """The next item, or None once closed and drained."""
        while not self._items:
            if self._closed:
                return None
            self._readable.clear()
            await self._readable.wait()
        data = self._items.popleft()
        self._bytes -= len(data)
        self._writable.set()
        return data

    def close(self, *, drain: bool) -> None:
        """Refuse new items; with ``drain`` the queued ones are still delivered."""
        self._closed = True
        if not drain:
            self._items.clear()
            self._bytes = 0
        self._readable.set()
        self._writable.set()


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
        self.outbox = Outbox(opts.outbox_frames, opts.outbox_bytes)
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
                await self.ws.send_bytes(data)
        except Exception as error:  # the socket broke under us: the reader will see it too
            _event(logging.DEBUG, "relay.write_failed", peer=self.label, error=type(error).__name__)
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
        self.router: StreamRouter[HarnessPeer] = StreamRouter(relay.options.max_streams_per_harness)
        self.harnesses: set[HarnessPeer] = set()


class HarnessPeer(Peer):
    role: RelayRole = "harness"

    def __init__(
        self,
        relay: Relay,
        ws: web.WebSocketResponse,
        request: web.Request,
        executor: ExecutorPeer,
        label: str,
        credential: str,
    ) -> None:
        super().__init__(relay, ws, request, executor.environment_id, label)
        self.executor = executor
        self.credential = credential


# -- the relay -------------------------------------------------------------------------------


class Relay:
    """Live sockets per environment and the stream-id routing between them."""

    def __init__(self, options: RendezvousOptions) -> None:
        self.options = options
        self.stats = RelayStats()
        self.executors: dict[str, ExecutorPeer] = {}
        self.peers: set[Peer] = set()
        self._tasks: set[asyncio.Task[Any]] = set()
        self._counter = 0
        self.shutting_down = False
        self.handshakes = HandshakeBudget()

    def spawn(self, coro: Coroutine[Any, Any, Any]) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def next_label(self, prefix: str) -> str:
        self._counter += 1
        return f"{prefix}-{self._counter}"

    def online(self, environment_id: str, registration_id: str) -> ExecutorPeer | None:
        peer = self.executors.get(environment_id)
        if peer is None or peer.closing or peer.registration_id != registration_id:
            return None
        return peer

    # executor lifecycle

    def attach_executor(self, peer: ExecutorPeer) -> None:
        old = self.executors.get(peer.environment_id)
        self.executors[peer.environment_id] = peer
        self.peers.add(peer)
        if old is not None:
            _event(
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
        ended = peer.router.executor_gone()
        for harness in list(peer.harnesses):
            self._end_harness_streams(harness, ended.get(harness, []))
            harness.finish(CLOSE_EXECUTOR_GONE, "executor disconnected", drain=True)
        peer.harnesses.clear()
        peer.finish(code, reason, drain=False)

    def supersede(self, environment_id: str, registration_id: str) -> None:
        """A new registration: an executor socket under an older one is closed."""
        peer = self.executors.get(environment_id)
        if peer is not None and peer.registration_id != registration_id:
            _event(
                logging.WARNING,
                "relay.executor_superseded",
                environment_id=environment_id,
                peer=peer.label,
            )
            self.detach_executor(peer, CLOSE_SUPERSEDED, "superseded by a newer registration")

    def _end_harness_streams(self, harness: HarnessPeer, streams: list[str]) -> None:
        """The executor is gone: tell the harness its streams are over."""
        for stream_id in streams:
            if harness.outbox.try_put(encode_reset(stream_header(stream_id), RESET_EXECUTOR_GONE)):
                self.stats.resets_sent += 1

    # harness lifecycle

    def attach_harness(self, peer: HarnessPeer) -> None:
        peer.executor.harnesses.add(peer)
        self.peers.add(peer)

    async def detach_harness(self, peer: HarnessPeer) -> None:
        executor = peer.executor
        executor.harnesses.discard(peer)
        for stream_id in executor.router.harness_gone(peer):
            # A codexexec choice (verified §7 leaves the real rendezvous's behaviour open):
            # without this Reset the executor would keep the stream alive forever.
            if await executor.outbox.put(
                encode_reset(stream_header(stream_id), RESET_HARNESS_GONE)
            ):
                self.stats.resets_sent += 1
                _event(
                    logging.DEBUG,
                    "relay.reset_sent",
                    to=executor.label,
                    stream_id=stream_id,
                    reason=RESET_HARNESS_GONE,
                )

    # frames

    def _decode(self, peer: Peer, data: bytes) -> tuple[str, str | None] | None:
        try:
            frame = parse(data, strict=False)
        except FrameError as error:
            self.stats.dropped_invalid += 1
            _event(logging.DEBUG, "relay.frame_dropped", peer=peer.label, reason=error.kind.value)
            return None
        return frame.stream_id, body_kind(frame)

    def drop_text(self, peer: Peer) -> None:
        self.stats.dropped_text += 1
        _event(logging.DEBUG, "relay.frame_dropped", peer=peer.label, reason="not_binary")

    def _refuse(self, harness: HarnessPeer, stream_id: str, reason: str) -> None:
        self.stats.refused_streams += 1
        _event(
            logging.WARNING,
            "relay.stream_refused",
            peer=harness.label,
            environment_id=harness.environment_id,
            reason=reason,
        )
        if harness.outbox.try_put(encode_reset(stream_header(stream_id), reason)):
            self.stats.resets_sent += 1

    async def from_harness(self, harness: HarnessPeer, data: bytes) -> None:
        decoded = self._decode(harness, data)
        if decoded is None:
            return
        stream_id, kind = decoded
        executor = harness.executor
        paused = (
            kind == "handshake"
            and self.options.pause_failing_credentials
            and self.handshakes.blocked_for(harness.credential, time.monotonic()) > 0
        )
        verdict = executor.router.from_harness(harness, stream_id, kind, handshakes_paused=paused)
        if isinstance(verdict, Refuse):
            self._refuse(harness, stream_id, verdict.reason)
            return
        if isinstance(verdict, Drop):  # a Reset for a stream it does not own
            self.stats.dropped_unrouted += 1
            return
        if verdict.claimed:
            _event(logging.DEBUG, "relay.stream_claimed", peer=harness.label, stream_id=stream_id)
        if await executor.outbox.put(data):
            self.stats.to_executor += 1
            self.stats.bytes_to_executor += len(data)
        else:
            self.stats.dropped_unrouted += 1

    def _failed_handshake(self, harness: HarnessPeer) -> None:
        """The executor refused a handshake this harness sent: its credential's failure."""
        self.stats.failed_handshakes += 1
        if not self.options.pause_failing_credentials:
            return
        if self.handshakes.charge(harness.credential, time.monotonic()):
            self.stats.paused_credentials += 1
            _event(
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
            _event(
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
        if harness.outbox.try_put(data):
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
                delivered = await harness.outbox.put(data)
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
        _event(
            logging.WARNING,
            "relay.harness_too_slow",
            peer=harness.label,
            environment_id=harness.environment_id,
        )
        harness.finish(CLOSE_TOO_SLOW, "harness not reading fast enough", drain=False)

    async def shutdown(self) -> None:
        self.shutting_down = True
        for peer in list(self.peers):
            peer.finish(CLOSE_GOING_AWAY, "rendezvous shutting down", drain=False)
        await asyncio.gather(
            *(peer.wait_closed() for peer in list(self.peers)), return_exceptions=True
        )
        if self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)


# -- the HTTP application ----------------------------------------------------------------------


@dataclass
class RendezvousState:
    tokens: TokenTable
    store: RegistryStore
    signer: RelayUrlSigner
    relay: Relay
    options: RendezvousOptions
    metrics: RendezvousMetrics
    agents: AgentKeys | None = None
    bound_netloc: str = ""
    started: float = field(default_factory=time.monotonic)


STATE: Final = web.AppKey("rendezvous_state", RendezvousState)


def _state(request: web.Request) -> RendezvousState:
    return request.app[STATE]


def _environment_id(request: web.Request) -> str:
    environment_id = request.match_info.get("environment_id", "")
    if not _ENVIRONMENT_ID.fullmatch(environment_id):
        raise ApiError(
            400,
            "invalid_environment_id",
            "environment id must be 1-256 characters of [A-Za-z0-9._-]",
        )
    return environment_id


def _authenticate(request: web.Request, role: Role, environment_id: str) -> Principal:
    state = _state(request)
    authorization = request.headers.get("Authorization")
    if authorization is not None and is_agent_assertion(authorization):
        return _agents(state).authenticate(authorization, role, environment_id)
    return state.tokens.authenticate(authorization, role, environment_id)


def _agents(state: RendezvousState) -> AgentKeys:
    if state.agents is None:
        raise AuthError(
            401,
            "agent_identity_not_accepted",
            "this rendezvous admits no Agent Identity (it runs without --agent-keys)",
        )
    return state.agents


async def handle_task_register(request: web.Request) -> web.Response:
    agents = _agents(_state(request))
    body = await _json_body(request, optional=False)
    runtime_id = request.match_info.get("runtime_id", "")
    task_id = agents.register_task(runtime_id, body.get("timestamp"), body.get("signature"))
    _event(logging.INFO, "agent.task_registered", agent=runtime_id)
    return web.json_response({"task_id": task_id})


async def _json_body(request: web.Request, *, optional: bool) -> dict[str, Any]:
    raw = await request.read()
    if not raw.strip():
        if optional:
            return {}
        raise ApiError(400, "invalid_request", "request body must be a JSON object")
    try:
        body = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        raise ApiError(400, "invalid_request", "request body is not valid JSON") from None
    if not isinstance(body, dict):
        raise ApiError(400, "invalid_request", "request body must be a JSON object")
    return body


def _ws_base(request: web.Request) -> str:
    state = _state(request)
    public = state.options.public_url
    if public:
        parts = urlsplit(public)
        scheme = {"https": "wss", "wss": "wss"}.get(parts.scheme, "ws")
        return f"{scheme}://{parts.netloc}"
    host = request.headers.get("Host", "")
    if not _HOST.fullmatch(host):
        host = state.bound_netloc
    return f"{'wss' if request.secure else 'ws'}://{host}"


def _relay_url(
    request: web.Request, role: RelayRole, registration: Registration, subject: str = ""
) -> str:
    state = _state(request)
    ttl = (
        state.options.environment_url_ttl
        if role == "environment"
        else (state.options.harness_url_ttl)
    )
    return state.signer.sign(
        _ws_base(request),
        role,
        registration.environment_id,
        registration.registration_id,
        ttl,
        subject,
    )


async def handle_register(request: web.Request) -> web.Response:
    state = _state(request)
    environment_id = _environment_id(request)
    principal = _authenticate(request, "executor", environment_id)
    body = await _json_body(request, optional=True)
    profile = body.get("security_profile", SECURITY_PROFILE_LEGACY)
    key = body.get("executor_public_key")
    if profile in NOISE_SUITES:
        if not isinstance(key, dict) or key.get("suite") != NOISE_SUITES[profile]:
            raise ApiError(
                400,
                "invalid_request",
                f"{profile} needs an executor_public_key object of suite {NOISE_SUITES[profile]}",
            )
    elif profile == SECURITY_PROFILE_LEGACY:
        if key is not None:
            raise ApiError(
                400, "invalid_request", "the legacy profile takes no executor_public_key"
            )
    else:
        raise ApiError(
            400,
            "unsupported_security_profile",
            "security_profile must be one of "
            + ", ".join(repr(name) for name in (*NOISE_SUITES, SECURITY_PROFILE_LEGACY)),
        )
    registration = await state.store.register(environment_id, profile, key, principal.label)
    state.relay.supersede(environment_id, registration.registration_id)
    _event(
        logging.INFO,
        "registry.register",
        outcome="ok",
        environment_id=environment_id,
        executor_registration_id=registration.registration_id,
        security_profile=profile,
        token=principal.label,
    )
    return web.json_response(
        {
            "environment_id": environment_id,
            "url": _relay_url(request, "environment", registration),
            "security_profile": profile,
            "executor_registration_id": registration.registration_id,
        }
    )


async def handle_connect(request: web.Request) -> web.Response:
    state = _state(request)
    environment_id = _environment_id(request)
    principal = _authenticate(request, "harness", environment_id)
    body = await _json_body(request, optional=True)
    registration = await state.store.current_registration(environment_id)
    if registration is None:
        raise ApiError(
            404,
            "environment_not_found",
            f"no executor has registered environment {environment_id!r}",
        )
    if state.relay.online(environment_id, registration.registration_id) is None:
        raise ApiError(
            409,
            "environment_offline",
            f"the executor for environment {environment_id!r} is not connected",
        )
    harness_key = body.get("harness_public_key")
    response: dict[str, Any] = {
        "environment_id": environment_id,
        # The credential rides in the signed URL: its failed handshakes are its own.
        "url": _relay_url(request, "harness", registration, principal.label),
        "security_profile": registration.security_profile,
        "executor_registration_id": registration.registration_id,
    }
    profile = registration.security_profile
    if profile in NOISE_SUITES:
        if not isinstance(harness_key, dict) or not harness_key:
            raise ApiError(
                400,
                "invalid_request",
                "harness_public_key (an object) is required for this environment",
            )
        if harness_key.get("suite") != NOISE_SUITES[profile]:
            raise _profile_mismatch(environment_id, profile)
        if len(canonical_json(harness_key).encode()) > MAX_HARNESS_KEY_JSON_BYTES:
            raise ApiError(400, "invalid_request", "harness_public_key is too large")
        response["executor_public_key"] = registration.executor_public_key
        try:
            response["harness_key_authorization"] = await state.store.issue_authorization(
                environment_id,
                registration.registration_id,
                harness_key,
                state.options.authorization_ttl,
                limit=state.options.max_authorizations,
            )
        except AuthorizationLimit:
            raise ApiError(
                429,
                "too_many_authorizations",
                f"too many unexpired harness authorizations for environment {environment_id!r}; "
                "retry later",
            ) from None
    elif harness_key is not None:
        raise _profile_mismatch(environment_id, profile)
    _event(
        logging.INFO,
        "registry.connect",
        outcome="ok",
        environment_id=environment_id,
        executor_registration_id=registration.registration_id,
        security_profile=registration.security_profile,
        token=principal.label,
    )
    return web.json_response(response)


def _profile_mismatch(environment_id: str, profile: str) -> ApiError:
    """The harness offered a key for another profile; the error names the right one so a
    harness that speaks it can ask again (a codexexec extension of the error body)."""
    error = ApiError(
        409,
        "security_profile_mismatch",
        f"environment {environment_id!r} uses the {profile} security profile",
    )
    error.extra["security_profile"] = profile
    return error


async def handle_validate(request: web.Request) -> web.Response:
    state = _state(request)
    environment_id = _environment_id(request)
    principal = _authenticate(request, "executor", environment_id)
    body = await _json_body(request, optional=False)
    registration_id = body.get("executor_registration_id")
    harness_key = body.get("harness_public_key")
    authorization = body.get("harness_key_authorization")
    if (
        not isinstance(registration_id, str)
        or not isinstance(authorization, str)
        or not authorization
        or harness_key is None
    ):
        raise ApiError(
            400,
            "invalid_request",
            "expected executor_registration_id, harness_public_key and harness_key_authorization",
        )
    outcome = await state.store.consume_authorization(
        environment_id, registration_id, harness_key, authorization
    )
    valid = outcome == ValidationOutcome.VALID
    state.metrics.validations.labels(outcome).inc()
    _event(
        logging.INFO if valid else logging.WARNING,
        "registry.validate",
        outcome=outcome,
        environment_id=environment_id,
        executor_registration_id=registration_id,
        stream_id=request.headers.get(STREAM_ID_HEADER, "-"),
        token=principal.label,
    )
    return web.json_response({"valid": valid})


async def handle_healthz(request: web.Request) -> web.Response:
    state = _state(request)
    relay = state.relay
    try:
        async with asyncio.timeout(HEALTH_STORE_TIMEOUT_SECONDS):
            await state.store.environment_count()
        store = "ok"
    except Exception as exc:  # any store failure is what this endpoint reports
        store = f"unavailable: {type(exc).__name__}"
    healthy = store == "ok" and not relay.shutting_down
    return web.json_response(
        {
            "status": "stopping" if relay.shutting_down else "ok" if healthy else "degraded",
            "store": store,
            "executors_online": len(relay.executors),
            "relay_sockets": len(relay.peers),
            "uptime_seconds": round(time.monotonic() - state.started, 3),
            "frames": relay.stats.as_json(),
        },
        status=200 if healthy else 503,
    )


async def handle_metrics(request: web.Request) -> web.Response:
    body = _state(request).metrics.render()
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE})


async def handle_relay(request: web.Request) -> web.StreamResponse:
    state = _state(request)
    relay = state.relay
    if relay.shutting_down:
        raise ApiError(503, "shutting_down", "the rendezvous is shutting down")
    try:
        ticket = state.signer.verify(request.query.items())
    except SignatureError as error:
        _event(logging.WARNING, "relay.upgrade_refused", reason=error.code, status=error.status)
        raise ApiError(error.status, error.code, error.message) from None
    registration = await state.store.current_registration(ticket.environment_id)
    if registration is None or registration.registration_id != ticket.registration_id:
        _event(
            logging.WARNING,
            "relay.upgrade_refused",
            reason="registration_superseded",
            environment_id=ticket.environment_id,
            role=ticket.role,
        )
        raise ApiError(
            401,
            "registration_superseded",
            "this relay URL belongs to a registration that is no longer current",
        )
    executor: ExecutorPeer | None = None
    if ticket.role == "harness":
        executor = relay.online(ticket.environment_id, ticket.registration_id)
        if executor is None:
            raise ApiError(
                409,
                "environment_offline",
                f"the executor for environment {ticket.environment_id!r} is not connected",
            )
        if len(executor.harnesses) >= state.options.max_harness_sockets:
            raise ApiError(
                429,
                "too_many_relay_sockets",
                f"environment {ticket.environment_id!r} has too many harness connections",
            )
    ws = web.WebSocketResponse(
        timeout=state.options.close_timeout,
        max_msg_size=state.options.max_message_bytes,
        heartbeat=state.options.heartbeat,
        compress=False,
        autoping=True,
    )
    await ws.prepare(request)
    peer: Peer
    if executor is None:
        peer = ExecutorPeer(relay, ws, request, ticket, relay.next_label("executor"))
        relay.attach_executor(peer)
    else:
        if executor.closing:  # it went away while we were upgrading
            await ws.close(code=CLOSE_EXECUTOR_GONE, message=b"executor disconnected")
            return ws
        peer = HarnessPeer(
            relay, ws, request, executor, relay.next_label("harness"), ticket.subject
        )
        relay.attach_harness(peer)
    peer.start()
    _event(
        logging.INFO,
        "relay.connected",
        peer=peer.label,
        role=ticket.role,
        environment_id=ticket.environment_id,
        executor_registration_id=ticket.registration_id,
    )
    outcome = "peer_close"
    try:
        async for message in ws:
            if message.type == WSMsgType.BINARY:
                if isinstance(peer, HarnessPeer):
                    await relay.from_harness(peer, message.data)
                else:
                    assert isinstance(peer, ExecutorPeer)
                    await relay.from_executor(peer, message.data)
            elif message.type == WSMsgType.TEXT:
                relay.drop_text(peer)
            elif message.type == WSMsgType.ERROR:
                outcome = "read_error"
                break
    finally:
        if isinstance(peer, HarnessPeer):
            await relay.detach_harness(peer)
            peer.finish(CLOSE_GOING_AWAY, "", drain=False)
        else:
            assert isinstance(peer, ExecutorPeer)
            relay.detach_executor(peer, CLOSE_GOING_AWAY, "")
        relay.peers.discard(peer)
        await peer.wait_closed()
        _event(
            logging.INFO,
            "relay.disconnected",
            peer=peer.label,
            role=ticket.role,
            environment_id=ticket.environment_id,
            reason=outcome,
            close_code=ws.close_code,
        )
    return ws


@web.middleware
async def _errors_and_access_log(request: web.Request, handler: Handler) -> web.StreamResponse:
    started = time.monotonic()
    status = 500
    try:
        response = await handler(request)
        status = response.status
        return response
    except ApiError as error:
        status = error.status
        return error_response(error.status, error.code, error.message, extra=error.extra)
    except AuthError as error:
        status = error.status
        _event(
            logging.WARNING,
            "registry.auth_refused",
            code=error.code,
            method=request.method,
            path=request.path,
            peer=request.remote or "-",
        )
        headers = {"WWW-Authenticate": 'Bearer realm="codexexec-rendezvous"'}
        return error_response(
            error.status, error.code, error.message, headers if error.status == 401 else None
        )
    except StoreUnavailable as error:
        status = 503
        _event(logging.ERROR, "registry.store_unavailable", path=request.path, error=str(error))
        return error_response(
            503, "store_unavailable", "the registry store is unavailable; retry later"
        )
    except web.HTTPException as error:
        status = error.status
        if error.status < 400:
            raise
        code = {404: "not_found", 405: "method_not_allowed", 413: "request_too_large"}.get(
            error.status, "http_error"
        )
        return error_response(error.status, code, error.reason)
    except Exception as error:  # never leak internals (or request data) to the caller
        _event(
            logging.ERROR,
            "http.internal_error",
            method=request.method,
            path=request.path,
            error=type(error).__name__,
        )
        return error_response(500, "internal_error", "internal rendezvous error")
    finally:
        _event(
            logging.DEBUG,
            "http.request",
            method=request.method,
            path=request.path,
            status=status,
            ms=round((time.monotonic() - started) * 1000, 1),
            peer=request.remote or "-",
        )


def build_app(
    tokens: TokenTable, store: RegistryStore, options: RendezvousOptions | None = None
) -> web.Application:
    opts = options or RendezvousOptions()
    app = web.Application(middlewares=[_errors_and_access_log], client_max_size=opts.max_body_bytes)
    relay = Relay(opts)
    metrics = RendezvousMetrics(relay)
    app[STATE] = RendezvousState(
        tokens=tokens,
        store=TimedStore(store, metrics),
        signer=RelayUrlSigner(store.signing_key),
        relay=relay,
        options=opts,
        metrics=metrics,
        agents=(
            None if opts.agent_keys is None else AgentKeys.load(opts.agent_keys, store.signing_key)
        ),
    )
    base = "/cloud/environment/{environment_id}"
    app.router.add_post(f"{base}/register", handle_register)
    app.router.add_post(f"{base}/connect", handle_connect)
    app.router.add_post(f"{base}/validate", handle_validate)
    app.router.add_post("/v1/agent/{runtime_id}/task/register", handle_task_register)
    app.router.add_get("/healthz", handle_healthz)
    app.router.add_get("/metrics", handle_metrics)
    app.router.add_get(RELAY_PATH, handle_relay)

    async def _on_shutdown(app: web.Application) -> None:
        await app[STATE].relay.shutdown()

    app.on_shutdown.append(_on_shutdown)
    return app


# -- running ---------------------------------------------------------------------------------


def parse_listen_url(url: str) -> tuple[str, int]:
    """``http://IP:PORT`` (IPv4, ``[IPv6]`` or ``localhost``; port 0 = ephemeral)."""
    parts = urlsplit(url.strip())
    if parts.scheme != "http":
        raise ValueError(f"listen URL must be http://IP:PORT, got {url!r}")
    if parts.path not in ("", "/") or parts.query or parts.fragment or parts.username:
        raise ValueError(f"listen URL must be http://IP:PORT with nothing after the port: {url!r}")
    try:
        port = parts.port
    except ValueError:
        raise ValueError(f"listen URL has an invalid port: {url!r}") from None
    if port is None:
        raise ValueError(f"listen URL needs a port (0 for any free one): {url!r}")
    host = parts.hostname or ""
    if host == "localhost":
        return "127.0.0.1", port
    try:
        ipaddress.ip_address(host)
    except ValueError:
        raise ValueError(f"listen URL host must be an IP address, got {host!r}") from None
    return host, port


def _netloc(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


@dataclass
class RunningRendezvous:
    url: str  # http://IP:PORT actually bound
    app: web.Application
    runner: web.AppRunner

    @property
    def state(self) -> RendezvousState:
        return self.app[STATE]

    async def stop(self) -> None:
        await self.runner.cleanup()


async def start_rendezvous(
    listen_url: str,
    tokens: TokenTable,
    store: RegistryStore,
    options: RendezvousOptions | None = None,
) -> RunningRendezvous:
    host, port = parse_listen_url(listen_url)
    app = build_app(tokens, store, options)
    runner = web.AppRunner(app, access_log=None, handle_signals=False, shutdown_timeout=5.0)
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    try:
        await site.start()
    except BaseException:
        await runner.cleanup()
        raise
    bound = runner.addresses[0]
    netloc = _netloc(str(bound[0]), int(bound[1]))
    app[STATE].bound_netloc = netloc
    _event(logging.INFO, "rendezvous.listening", address=netloc)
    return RunningRendezvous(url=f"http://{netloc}", app=app, runner=runner)


def resolve_tokens(token_file: Path | None, *, notice: Callable[[str], None]) -> TokenTable:
    """Load ``token_file``; without one, use (creating if needed) the development token file."""
    if token_file is None:
        path, created = create_dev_token_file(state_dir())
        if created:
            notice(
                f"codexexec rendezvous: no --token-file given; created a development token in "
                f"{path} (grants the executor and harness roles for every environment)"
            )
        token_file = path
    if loosely_permitted(token_file):
        _event(logging.WARNING, "rendezvous.token_file_readable", path=str(token_file))
    return TokenTable.load(token_file)


async def serve_rendezvous(
    listen_url: str,
    tokens: TokenTable,
    store: RegistryStore,
    options: RendezvousOptions | None = None,
    *,
    on_ready: Callable[[str], None] | None = None,
    stop: asyncio.Event | None = None,
) -> None:
    """Serve until ``stop`` is set, SIGINT or SIGTERM; then shut down gracefully."""
    running = await start_rendezvous(listen_url, tokens, store, options)
    stop_event = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    installed: list[signal.Signals] = []
    for signum in (signal.SIGINT, signal.SIGTERM):
        try:
            loop.add_signal_handler(signum, stop_event.set)
            installed.append(signum)
        except (NotImplementedError, RuntimeError, ValueError):
            pass
    try:
        if on_ready is not None:
            on_ready(running.url)
        await stop_event.wait()
        _event(logging.INFO, "rendezvous.stopping")
    finally:
        for signum in installed:
            loop.remove_signal_handler(signum)
        await running.stop()
        _event(logging.INFO, "rendezvous.stopped")


def run_rendezvous(
    listen_url: str,
    token_file: Path | None,
    db: str | None,
    options: RendezvousOptions | None = None,
) -> None:
    """Run the service until SIGINT/SIGTERM.

    ``db``: an SQLite file (default: one under the state directory) or a ``postgresql://``
    URL. Prints the bound ``http://IP:PORT`` as the first line on stdout; when it had to
    create the development token file it then says where on stderr (never the token). Raises
    ValueError for a bad listen URL, ``auth.TokenFileError`` for an unusable token file and
    ``pg_store.StoreUnavailable`` when PostgreSQL cannot be used.
    """
    parse_listen_url(listen_url)  # fail before touching any file
    notices: list[str] = []
    tokens = resolve_tokens(token_file, notice=notices.append)

    def ready(url: str) -> None:
        print(url, flush=True)
        for text in notices:
            print(text, file=sys.stderr, flush=True)

    async def main() -> None:
        store = await open_store(db if db is not None else str(state_dir() / DB_FILENAME))
        try:
            await serve_rendezvous(listen_url, tokens, store, options, on_ready=ready)
        finally:
            await store.aclose()

    asyncio.run(main())
