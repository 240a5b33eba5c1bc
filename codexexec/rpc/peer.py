"""One JSON-RPC peer over one transport, for either side of a connection.

The reader decodes each message and feeds an ordered, bounded work queue, so a slow
handler slows the sender down instead of growing memory; requests run one at a time
(Codex's default) or up to ``concurrency`` at once. Responses to our own calls resolve
their futures directly from the reader, so a blocked handler never blocks a reply.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import msgspec

from codexexec.protocol import jsonrpc
from codexexec.protocol.errors import ProtocolError
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
from codexexec.protocol.limits import CONNECTION_QUEUE_CAPACITY, MAX_BATCH_REQUESTS
from codexexec.rpc.outbox import Outbox
from codexexec.transport.base import MessageTransport, TransportClosed

log = logging.getLogger(__name__)

RequestHandler = Callable[[Request], Awaitable[Any]]
NotificationHandler = Callable[[Notification], Awaitable[None]]


class CloseConnection(ProtocolError):
    """Raised by a handler when the protocol says the connection must end."""


class ReplyThen(msgspec.Struct):
    """A handler result plus work to do once the reply is queued ahead of anything else."""

    result: Any
    then: Callable[[], None]


async def _no_requests(request: Request) -> Any:
    raise RpcError(jsonrpc.METHOD_NOT_FOUND, f"unexpected request `{request.method}`")


async def _ignore_notification(notification: Notification) -> None:
    return None


class RpcPeer:
    def __init__(
        self,
        transport: MessageTransport,
        *,
        on_request: RequestHandler = _no_requests,
        on_notification: NotificationHandler = _ignore_notification,
        concurrency: int = 1,
        malformed_prefix: str = "failed to parse JSON-RPC message",
        strict_responses: bool = False,
    ) -> None:
        self.transport = transport
        self._on_request = on_request
        self._on_notification = on_notification
        self._concurrency = max(1, concurrency)
        self._malformed_prefix = malformed_prefix
        # A server closes the connection on a response it never asked for (Codex does).
        self._strict_responses = strict_responses
        self._ids = itertools.count(1)
        self._pending: dict[RequestId, asyncio.Future[Any]] = {}
        self._work: asyncio.Queue[Any] = asyncio.Queue(CONNECTION_QUEUE_CAPACITY)
        self.outbox = Outbox(transport)
        self.closed = asyncio.Event()
        self.close_reason: str | None = None

    # -- outgoing -------------------------------------------------------------------

    async def send(self, message: bytes) -> None:
        await self.outbox.put(message)

    async def notify(self, method: str, params: Any) -> None:
        await self.outbox.put(jsonrpc.encode_notification(method, params))

    async def call(self, method: str, params: Any, timeout: float | None = None) -> Any:
        if self.closed.is_set():
            raise TransportClosed(self.close_reason or "connection closed")
        request_id = next(self._ids)
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._pending[request_id] = future
        try:
            await self.outbox.put(jsonrpc.encode_request(request_id, method, params))
            return await asyncio.wait_for(future, timeout)
        finally:
            self._pending.pop(request_id, None)

    # -- incoming -------------------------------------------------------------------

    async def run(self) -> None:
        """Serve until the transport closes or the protocol demands a close."""
        workers = [asyncio.create_task(self._worker()) for _ in range(self._concurrency)]
        try:
            await self._read_loop()
        except CloseConnection as exc:
            self.close_reason = str(exc) or "closed by protocol"
        except (TransportClosed, ConnectionError) as exc:
            self.close_reason = str(exc) or "transport closed"
        finally:
            for worker in workers:
                worker.cancel()
            for worker in workers:
                with contextlib.suppress(asyncio.CancelledError, CloseConnection):
                    await worker
            self._finish()
            self.outbox.close()
            await self.transport.close()

    def _finish(self) -> None:
        self.closed.set()
        reason = self.close_reason or "connection closed"
        for future in self._pending.values():
            if not future.done():
                future.set_exception(TransportClosed(reason))
        self._pending.clear()

    async def _read_loop(self) -> None:
        while True:
            raw = await self.transport.receive()
            if raw is None:
                # A transport may know why it ended (e.g. a relay stream reset).
                self.close_reason = self.close_reason or getattr(
                    self.transport, "close_reason", None
                )
                return
            try:
                message = jsonrpc.parse_message(raw)
                if isinstance(message, list):
                    await self._work.put(message)
                    continue
            except MalformedMessage as exc:
                await self._send_malformed(str(exc))
                continue
            if isinstance(message, (Response, ErrorResponse)):
                self._resolve(message)
            else:
                await self._work.put(message)

    async def _send_malformed(self, reason: str) -> None:
        await self.outbox.put(
            jsonrpc.encode_error(UNKNOWN_ID, INVALID_REQUEST, f"{self._malformed_prefix}: {reason}")
        )

    def _resolve(self, message: Response | ErrorResponse) -> None:
        future = self._pending.get(message.id)
        if future is None:
            if self._strict_responses:
                raise CloseConnection(f"unexpected response for id {message.id!r}")
            return
        if future.done():
            return
        if isinstance(message, Response):
            future.set_result(message.result)
        else:
            future.set_exception(RpcError(message.code, message.message, message.data))

    async def _worker(self) -> None:
        while True:
            item = await self._work.get()
            try:
                if isinstance(item, list):
                    await self._run_batch(item)
                elif isinstance(item, Request):
                    await self._reply(item)
                else:
                    await self._on_notification(item)
            except CloseConnection as exc:
                # Closing the transport ends the reader, and with it the connection.
                self.close_reason = str(exc) or "closed by protocol"
                await self.transport.close()
                return
            except (TransportClosed, ConnectionError):
                return

    async def _reply(self, request: Request) -> None:
        reply, then = await self._answer(request)
        await self.outbox.put(reply)
        if then is not None:
            then()

    async def _answer(self, request: Request) -> tuple[bytes, Callable[[], None] | None]:
        try:
            result = await self._on_request(request)
        except RpcError as exc:
            return jsonrpc.encode_error(request.id, exc.code, exc.message, exc.data), None
        except CloseConnection:
            raise
        except Exception as exc:  # a handler bug must not take the connection down
            log.exception("handler for %s failed", request.method)
            return jsonrpc.encode_error(
                request.id, INTERNAL_ERROR, f"internal error: {type(exc).__name__}"
            ), None
        if isinstance(result, ReplyThen):
            return jsonrpc.encode_response(request.id, result.result), result.then
        return jsonrpc.encode_response(request.id, result), None

    async def _run_batch(self, entries: list[Any]) -> None:
        """Codex runs a batch's requests in order and answers with one array."""
        if not entries:
            await self._send_batch_error("JSON-RPC batch must not be empty")
            return
        if len(entries) > MAX_BATCH_REQUESTS:
            await self._send_batch_error(
                f"JSON-RPC batch contains {len(entries)} requests; maximum is {MAX_BATCH_REQUESTS}"
            )
            return
        replies: list[bytes] = []
        follow_ups: list[Callable[[], None]] = []
        for entry in entries:
            try:
                message = jsonrpc.classify(entry)
            except MalformedMessage as exc:
                replies.append(
                    jsonrpc.encode_error(
                        UNKNOWN_ID, INVALID_REQUEST, f"{self._malformed_prefix}: {exc}"
                    )
                )
                continue
            if isinstance(message, Request):
                reply, then = await self._answer(message)
                replies.append(reply)
                if then is not None:
                    follow_ups.append(then)
            elif isinstance(message, Notification):
                replies.append(
                    jsonrpc.encode_error(
                        UNKNOWN_ID,
                        INVALID_REQUEST,
                        "notifications cannot be sent in a JSON-RPC batch",
                    )
                )
            else:
                replies.append(
                    jsonrpc.encode_error(
                        message.id, INVALID_REQUEST, "responses cannot be sent in a JSON-RPC batch"
                    )
                )
        await self.outbox.put(b"[" + b",".join(replies) + b"]")
        for then in follow_ups:
            then()

    async def _send_batch_error(self, message: str) -> None:
        await self.outbox.put(jsonrpc.encode_error(UNKNOWN_ID, INVALID_REQUEST, message))
