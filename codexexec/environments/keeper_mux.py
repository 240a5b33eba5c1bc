"""Many keeper clients on one exec-server connection (the stdio program the keeper holds).

Each client speaks the exec-server protocol to the keeper as it would to the server:
* its `initialize` is answered with the result of the keeper's one real initialize,
  so every client shares that session (its id is in every handle); its `initialized`
  is swallowed;
* its requests go out under the keeper's own ids and the answers come back under the
  client's ids (each side is an RpcPeer); an answer for a client that is gone is
  dropped;
* every server notification goes to every initialized client (a client ignores
  processes it does not know);
* a server request (`network/policyRequest`) is asked of the client attached last.

Bounded: clients, requests in flight per client (its reader waits), bytes queued per
client. A client more than 4 MiB behind holds the keeper back from reading the server
(whose own flow control then pauses the processes' output, as over a direct
connection) until it is back to 1 MiB; one that stays behind for 5 s, or has 16 MiB
waiting, is disconnected.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

from codexexec.protocol import jsonrpc
from codexexec.protocol.jsonrpc import (
    INTERNAL_ERROR,
    INVALID_REQUEST,
    UNKNOWN_ID,
    Notification,
    Request,
    RpcError,
)
from codexexec.rpc.lifecycle import INITIALIZED_TOO_EARLY, Lifecycle
from codexexec.rpc.peer import CloseConnection, RpcPeer
from codexexec.transport.base import MessageTransport, TransportClosed

log = logging.getLogger(__name__)

MAX_CLIENTS = 32
MAX_IN_FLIGHT_PER_CLIENT = 64
# Once a client's outbox is congested (rpc/outbox.py: above 4 MiB) the keeper stops
# reading the server until the client is back to 1 MiB, for this long at most; past it,
# or past the byte bound, the client is dropped. (One larger message, e.g. a big answer,
# may still go to a client with nothing queued.)
CATCH_UP_SECONDS = 5.0
MAX_QUEUED_BYTES_PER_CLIENT = 16 * 1024 * 1024
# How long a client may take to answer a server request (a person may be asked).
ANSWER_TIMEOUT_SECONDS = 300.0
FLUSH_ON_CLOSE_SECONDS = 1.0


class Multiplexer:
    def __init__(self, label: str) -> None:
        self._label = label
        # The result of the one real `initialize` (set once it is done): every client gets it.
        self.session: dict[str, Any] = {}
        self.server: RpcPeer | None = None
        self.clients: list[KeeperClient] = []
        # Set on every attach and detach (the idle watch waits on it).
        self.changed = asyncio.Event()
        # The keeper is ending: new clients are turned away.
        self.closing = False
        # Why the exec-server connection ended, once it has: pending requests fail with it.
        self.ended: asyncio.Future[str] = asyncio.get_running_loop().create_future()

    @property
    def session_id(self) -> str:
        return str(self.session.get("sessionId", ""))

    # -- the exec-server side ---------------------------------------------------------

    async def on_server_notification(self, notification: Notification) -> None:
        message = jsonrpc.encode_notification(notification.method, notification.params)
        for client in self.clients:
            if client.initialized:
                client.post(message)
        # Posted first, so the order holds; then no more reading while someone is behind.
        for client in list(self.clients):
            await client.catch_up()

    async def on_server_request(self, request: Request) -> Any:
        attached = [c for c in self.clients if c.initialized]
        if not attached:
            raise RpcError(INTERNAL_ERROR, f"no client is attached to `{self._label}` to answer")
        return await attached[-1].ask(request)

    # -- the clients' side ------------------------------------------------------------

    async def serve_client(self, transport: MessageTransport) -> None:
        if self.closing:
            await transport.close()
            return
        if len(self.clients) >= MAX_CLIENTS:
            refusal = f"the keeper of `{self._label}` has {MAX_CLIENTS} clients attached already"
            with contextlib.suppress(TransportClosed, ConnectionError):
                await transport.send(jsonrpc.encode_error(UNKNOWN_ID, INTERNAL_ERROR, refusal))
            await transport.close()
            return
        client = KeeperClient(self, transport)
        self.clients.append(client)
        self.changed.set()
        try:
            await client.run()
        finally:
            self.clients.remove(client)
            self.changed.set()

    async def close_clients(self) -> None:
        await asyncio.gather(*(client.close() for client in list(self.clients)))

    def initialize(self, request: Request) -> dict[str, Any]:
        params = request.params if isinstance(request.params, dict) else {}
        wanted = params.get("resumeSessionId")
        if wanted and wanted != self.session_id:
            raise RpcError(
                INVALID_REQUEST,
                f"unknown session id {wanted} (the keeper of `{self._label}` holds "
                f"{self.session_id}: the one that held yours has ended)",
            )
        return self.session

    async def forward(self, request: Request) -> Any:
        """The server's answer to a client's request (its RpcPeer puts the client's id
        on it)."""
        assert self.server is not None
        try:
            return await self.server.call(request.method, request.params)
        except (TransportClosed, ConnectionError):
            raise RpcError(INTERNAL_ERROR, await self.ended) from None


class KeeperClient:
    """One connection to the keeper, spoken over its own RpcPeer: its requests go to the
    server, its outbox carries the server's notifications, it answers the server's
    requests when asked."""

    def __init__(self, mux: Multiplexer, transport: MessageTransport) -> None:
        self._mux = mux
        self._lifecycle = Lifecycle()
        self.peer = RpcPeer(
            transport,
            on_request=self._on_request,
            on_notification=self._on_notification,
            concurrency=MAX_IN_FLIGHT_PER_CLIENT,
        )
        self._closing: asyncio.Task[None] | None = None
        self.gone = False

    @property
    def initialized(self) -> bool:
        return self._lifecycle.initialized and not self.gone

    # -- outgoing -------------------------------------------------------------------

    def post(self, message: bytes) -> None:
        if self.gone:
            return
        behind = self.peer.outbox.queued_bytes
        if behind and behind + len(message) > MAX_QUEUED_BYTES_PER_CLIENT:
            log.warning("a client fell %d bytes behind; disconnected", behind)
            self._drop()
            return
        self.peer.outbox.post(message)

    def _drop(self) -> None:
        """Forget this client: nothing more is queued, its transport is closed."""
        if self.gone:
            return
        self.gone = True
        self.peer.outbox.close()
        # Closing ends the reader too (a slow client is dropped from a writer's call).
        self._closing = asyncio.create_task(self.peer.transport.close())

    async def catch_up(self) -> None:
        """Wait until this client's outbox is no longer congested (back to 1 MiB); drop it
        after 5 s."""
        try:
            async with asyncio.timeout(CATCH_UP_SECONDS):
                await self.peer.outbox.drained()
        except TimeoutError:
            log.warning(
                "a client stayed %d bytes behind; disconnected", self.peer.outbox.queued_bytes
            )
            self._drop()

    async def ask(self, request: Request) -> Any:
        """Ask this client the server's ``request``; its answer is the server's answer."""
        try:
            return await self.peer.call(request.method, request.params, ANSWER_TIMEOUT_SECONDS)
        except TimeoutError:
            raise RpcError(INTERNAL_ERROR, "the client did not answer in time") from None
        except (TransportClosed, ConnectionError):
            raise RpcError(INTERNAL_ERROR, "the client asked has gone") from None

    # -- incoming -------------------------------------------------------------------

    async def run(self) -> None:
        try:
            await self.peer.run()
        finally:
            self._drop()
            if self._closing is not None:
                await self._closing

    async def close(self) -> None:
        """Flush what is queued (briefly), then disconnect."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(FLUSH_ON_CLOSE_SECONDS):
                await self.peer.outbox.flush()
        self._drop()

    async def _on_request(self, request: Request) -> Any:
        if request.method == "initialize":
            self._lifecycle.check_initialize()
            session = self._mux.initialize(request)
            self._lifecycle.initialize_answered()
            return session
        self._lifecycle.check(request.method)
        return await self._mux.forward(request)

    async def _on_notification(self, notification: Notification) -> None:
        if notification.method == "initialized":
            # The keeper's own session with the server was initialized long ago.
            if not self._lifecycle.on_initialized():
                raise CloseConnection(INITIALIZED_TOO_EARLY)
            return
        assert self._mux.server is not None
        with contextlib.suppress(TransportClosed, ConnectionError):
            await self._mux.server.notify(notification.method, notification.params)
