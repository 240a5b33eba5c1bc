"""Many keeper clients on one exec-server connection (the stdio program the keeper holds).

Each client speaks the exec-server protocol to the keeper as it would to the server:
* its `initialize` is answered with the result of the keeper's one real initialize,
  so every client shares that session (its id is in every handle); its `initialized`
  is swallowed;
* its requests go out under the keeper's own ids (RpcPeer numbers them) and the
  answers come back under the client's ids; an answer for a client that is gone is
  dropped;
* every server notification goes to every initialized client (a client ignores
  processes it does not know);
* a server request (`network/policyRequest`) is asked of the client attached last.

Bounded: clients, requests in flight per client (its reader waits), bytes queued per
client. A client more than 4 MiB behind holds the keeper back from reading the server
(whose own flow control then pauses the processes' output, as over a direct
connection); one that stays behind for 5 s, or falls 16 MiB behind, is disconnected.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
from collections import deque
from collections.abc import Callable
from typing import Any

from codexexec.protocol import jsonrpc
from codexexec.protocol.jsonrpc import (
    INTERNAL_ERROR,
    INVALID_REQUEST,
    UNKNOWN_ID,
    ErrorResponse,
    MalformedMessage,
    Notification,
    Request,
    RequestId,
    Response,
    RpcError,
)
from codexexec.protocol.output_notification import OutputMessage
from codexexec.rpc.lifecycle import Lifecycle
from codexexec.rpc.peer import RpcPeer
from codexexec.transport.base import MessageTransport, TransportClosed

log = logging.getLogger(__name__)

MAX_CLIENTS = 32
MAX_IN_FLIGHT_PER_CLIENT = 64
# Above this the keeper stops reading the server until the client catches up...
CATCH_UP_BYTES = 4 * 1024 * 1024
# ...for this long at most; past either bound the client is dropped. (One larger
# message, e.g. a big answer, may still go to a client with nothing queued.)
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

    async def forward(self, request: Request) -> bytes:
        """The server's answer to a client's request, encoded under the client's id."""
        assert self.server is not None
        try:
            result = await self.server.call(request.method, request.params)
        except RpcError as exc:
            return jsonrpc.encode_error(request.id, exc.code, exc.message, exc.data)
        except (TransportClosed, ConnectionError):
            reason = await self.ended
            return jsonrpc.encode_error(request.id, INTERNAL_ERROR, reason)
        return jsonrpc.encode_response(request.id, result)


class KeeperClient:
    """One connection to the keeper: its requests, its queue, its answers to the server."""

    def __init__(self, mux: Multiplexer, transport: MessageTransport) -> None:
        self._mux = mux
        self._transport = transport
        self._queue: deque[bytes] = deque()
        self._queued_bytes = 0
        self._wake = asyncio.Event()
        self._empty = asyncio.Event()
        self._empty.set()
        self._caught_up = asyncio.Event()
        self._caught_up.set()
        self._slots = asyncio.Semaphore(MAX_IN_FLIGHT_PER_CLIENT)
        self._requests: set[asyncio.Task[None]] = set()
        self._asked: dict[RequestId, asyncio.Future[Any]] = {}
        self._ask_ids = itertools.count(1)
        self._lifecycle = Lifecycle()
        self._closing: asyncio.Task[None] | None = None
        self.gone = False

    @property
    def initialized(self) -> bool:
        return self._lifecycle.initialized

    # -- outgoing -------------------------------------------------------------------

    def post(self, message: bytes) -> None:
        if self.gone:
            return
        if self._queued_bytes and self._queued_bytes + len(message) > MAX_QUEUED_BYTES_PER_CLIENT:
            log.warning("a client fell %d bytes behind; disconnected", self._queued_bytes)
            self._drop()
            return
        self._queue.append(message)
        self._queued_bytes += len(message)
        self._empty.clear()
        if self._queued_bytes > CATCH_UP_BYTES:
            self._caught_up.clear()
        self._wake.set()

    async def _write_loop(self) -> None:
        try:
            while True:
                while not self._queue:
                    self._empty.set()
                    self._wake.clear()
                    await self._wake.wait()
                message = self._queue[0]
                await self._transport.send(message)
                if self.gone:  # dropped meanwhile: the queue was cleared
                    return
                self._queue.popleft()
                self._queued_bytes -= len(message)
                if self._queued_bytes <= CATCH_UP_BYTES:
                    self._caught_up.set()
        except (TransportClosed, ConnectionError):
            self._drop()

    def _drop(self) -> None:
        """Forget this client: nothing more is queued, its transport is closed."""
        if self.gone:
            return
        self.gone = True
        self._lifecycle.initialized = False
        self._queue.clear()
        self._queued_bytes = 0
        self._empty.set()
        self._caught_up.set()
        for future in self._asked.values():
            if not future.done():
                future.set_exception(RpcError(INTERNAL_ERROR, "the client asked has gone"))
        # Closing ends the reader too (a slow client is dropped from a writer's call).
        self._closing = asyncio.create_task(self._transport.close())

    async def catch_up(self) -> None:
        """Wait until this client is less than 4 MiB behind; drop it after 5 s."""
        try:
            async with asyncio.timeout(CATCH_UP_SECONDS):
                await self._caught_up.wait()
        except TimeoutError:
            log.warning("a client stayed %d bytes behind; disconnected", self._queued_bytes)
            self._drop()

    async def ask(self, request: Request) -> Any:
        """Ask this client the server's ``request``; its answer is the server's answer."""
        ask_id = f"keeper-{next(self._ask_ids)}"
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._asked[ask_id] = future
        try:
            self.post(jsonrpc.encode_request(ask_id, request.method, request.params))
            if self.gone:
                raise RpcError(INTERNAL_ERROR, "the client asked has gone")
            async with asyncio.timeout(ANSWER_TIMEOUT_SECONDS):
                return await future
        except TimeoutError:
            raise RpcError(INTERNAL_ERROR, "the client did not answer in time") from None
        finally:
            self._asked.pop(ask_id, None)

    # -- incoming -------------------------------------------------------------------

    async def run(self) -> None:
        writer = asyncio.create_task(self._write_loop())
        try:
            while not self.gone and (raw := await self._transport.receive()) is not None:
                await self._handle(raw)
        finally:
            self._drop()
            for task in (*self._requests, writer):
                task.cancel()
            await asyncio.gather(*self._requests, writer, return_exceptions=True)
            if self._closing is not None:
                await self._closing

    async def close(self) -> None:
        """Flush what is queued (briefly), then disconnect."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(FLUSH_ON_CLOSE_SECONDS):
                await self._empty.wait()
        self._drop()

    async def _handle(self, raw: bytes | str | OutputMessage) -> None:
        try:
            if isinstance(raw, OutputMessage):  # only a server sends output, never a client
                raise MalformedMessage("a client cannot send process output")
            value = jsonrpc.decode_json(raw)
            if isinstance(value, list):
                raise MalformedMessage("the keeper does not relay batches")
            message = jsonrpc.classify(value)
        except MalformedMessage as exc:
            self._error(UNKNOWN_ID, INVALID_REQUEST, f"failed to parse JSON-RPC message: {exc}")
            return
        if isinstance(message, (Response, ErrorResponse)):
            self._answered(message)
        elif isinstance(message, Notification):
            await self._notified(message)
        elif message.method == "initialize":
            self._initialize(message)
        elif not self.initialized:
            try:
                self._lifecycle.check(message.method)
            except RpcError as exc:
                self._error(message.id, exc.code, exc.message)
        else:
            await self._slots.acquire()
            task = asyncio.create_task(self._relay(message))
            self._requests.add(task)
            task.add_done_callback(self._finished(task))

    def _finished(self, task: asyncio.Task[None]) -> Callable[[object], None]:
        def done(_: object) -> None:
            self._requests.discard(task)
            self._slots.release()

        return done

    async def _relay(self, request: Request) -> None:
        self.post(await self._mux.forward(request))

    def _initialize(self, request: Request) -> None:
        try:
            self._lifecycle.check_initialize()
            result = self._mux.initialize(request)
        except RpcError as exc:
            self._error(request.id, exc.code, exc.message)
            return
        self._lifecycle.initialize_answered()
        self.post(jsonrpc.encode_response(request.id, result))

    async def _notified(self, notification: Notification) -> None:
        if notification.method != "initialized":
            assert self._mux.server is not None
            with contextlib.suppress(TransportClosed, ConnectionError):
                await self._mux.server.notify(notification.method, notification.params)
        elif self._lifecycle.on_initialized():
            pass  # the keeper's own session with the server was initialized long ago
        else:
            log.info("a client sent `initialized` before `initialize`; disconnected")
            self._drop()

    def _answered(self, message: Response | ErrorResponse) -> None:
        future = self._asked.get(message.id)
        if future is None or future.done():
            return
        if isinstance(message, Response):
            future.set_result(message.result)
        else:
            future.set_exception(RpcError(message.code, message.message, message.data))

    def _error(self, request_id: RequestId, code: int, message: str) -> None:
        self.post(jsonrpc.encode_error(request_id, code, message))
