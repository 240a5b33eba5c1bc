"""`http/request`: HTTP from the executor's network position, buffered or streamed.

A buffered request answers with the whole body (capped, so a response that never ends
cannot exhaust memory). A streamed one answers with status and headers first, then
sends the body as `http/request/bodyDelta` notifications (seq from 1, at most 1 MiB
each, a final `done: true` delta that may carry an `error`); the connection's outbox
applies backpressure, so a slow client slows the download instead of growing memory.
A `requestId` stays reserved until its terminal delta is sent.

Routing: when the operator gave the executor a network policy (`serve --network-policy`)
every hop goes through the executor's managed proxy under that policy; otherwise the
executor's own HTTP(S)_PROXY / NO_PROXY apply, as they do for Codex.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from codexexec.protocol import messages as m
from codexexec.protocol.base64_codec import Base64Error, base64_json, decode_base64
from codexexec.protocol.jsonrpc import INTERNAL_ERROR, INVALID_PARAMS, RpcError
from codexexec.rpc.peer import ReplyThen
from codexexec.server.http_wire import (
    BODY_ERROR,
    MAX_DELTA_BYTES,
    BodyFailed,
    HttpCall,
    InvalidRequest,
    SendFailed,
    check_method,
    parse_url,
    request_headers,
    with_url_credentials,
)
from codexexec.server.managed_network import ExecutorNetwork
from codexexec.transport.base import TransportClosed

if TYPE_CHECKING:
    from codexexec.server.http_exchange import Exchange

BODY_DELTA_METHOD = "http/request/bodyDelta"
# Each active stream holds a socket; a connection may not hold more than this many.
MAX_ACTIVE_STREAMS = 128

# codexexec frames the body itself; a caller's framing headers could desync the socket.
_FRAMING_HEADERS = frozenset({"content-length", "transfer-encoding"})

Notify = Callable[[str, Any], Awaitable[None]]


class HttpRequests:
    """The http/request state of one connection: its active body streams."""

    def __init__(self, network: ExecutorNetwork, notify: Notify) -> None:
        self._network = network
        self._notify = notify
        self._streams: dict[str, asyncio.Task[None]] = {}
        self._reserved: set[str] = set()

    async def request(self, params: m.HttpRequestParams) -> dict[str, Any] | ReplyThen:
        try:
            body = decode_base64(params.body_base64) if params.body_base64 is not None else None
        except Base64Error as exc:
            raise RpcError(INVALID_PARAMS, str(exc)) from None
        request_id = params.request_id if params.stream_response else None
        if request_id is not None:
            self._reserve(request_id)
        try:
            call = _first_call(params, body)
            # aiohttp costs ~10 MB of RSS: an executor that never proxies HTTP never loads it.
            from codexexec.server.http_exchange import Exchange, deadline_after

            exchange = await Exchange.open(
                call,
                params.redirect_policy == "follow",
                deadline_after(params.timeout_ms),
                self._network,
            )
        except BaseException as exc:
            if request_id is not None:
                self._reserved.discard(request_id)
            if isinstance(exc, InvalidRequest):
                raise RpcError(INVALID_PARAMS, str(exc)) from None
            if isinstance(exc, SendFailed):
                raise RpcError(INTERNAL_ERROR, f"http/request failed: {exc}") from None
            raise
        result = {"status": exchange.status, "headers": exchange.headers, "bodyBase64": ""}
        if request_id is None:
            try:
                result["bodyBase64"] = base64_json(await exchange.read_all())
            except BodyFailed as exc:
                raise RpcError(
                    INTERNAL_ERROR, f"failed to read http/request response body: {exc}"
                ) from None
            finally:
                await exchange.close()
            return result
        replied = asyncio.Event()
        self._streams[request_id] = asyncio.create_task(
            self._stream(request_id, exchange, replied), name=f"http-body-{request_id}"
        )
        # The body follows the response: the task starts sending once the reply is queued.
        return ReplyThen(result, replied.set)

    def close(self) -> None:
        """The connection ended: abort every body stream."""
        for task in self._streams.values():
            task.cancel()

    def _reserve(self, request_id: str) -> None:
        if request_id in self._reserved:
            raise RpcError(
                INVALID_PARAMS,
                f"http/request streamResponse requestId `{request_id}` is already active",
            )
        if len(self._reserved) >= MAX_ACTIVE_STREAMS:
            raise RpcError(
                INVALID_PARAMS,
                f"at most {MAX_ACTIVE_STREAMS} http/request streams may be active per connection",
            )
        self._reserved.add(request_id)

    async def _stream(self, request_id: str, exchange: Exchange, replied: asyncio.Event) -> None:
        try:
            await replied.wait()
            seq, error = 1, None
            try:
                while chunk := await exchange.read(MAX_DELTA_BYTES):
                    await self._delta(request_id, seq, chunk, done=False, error=None)
                    seq += 1
            except BodyFailed:
                error = BODY_ERROR
            await self._delta(request_id, seq, b"", done=True, error=error)
        except TransportClosed:
            pass  # the connection is gone; nobody is left to tell
        finally:
            await exchange.close()
            self._streams.pop(request_id, None)
            self._reserved.discard(request_id)

    async def _delta(
        self, request_id: str, seq: int, chunk: bytes, *, done: bool, error: str | None
    ) -> None:
        await self._notify(
            BODY_DELTA_METHOD,
            {
                "requestId": request_id,
                "seq": seq,
                "deltaBase64": base64_json(chunk),
                "done": done,
                "error": error,
            },
        )


def _first_call(params: m.HttpRequestParams, body: bytes | None) -> HttpCall:
    method = check_method(params.method)
    url = parse_url(params.url)
    headers = [(n, v) for n, v in request_headers(params.headers) if n not in _FRAMING_HEADERS]
    return HttpCall(method, url, with_url_credentials(headers, url), body)
