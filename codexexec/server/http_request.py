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
import contextlib
import time
import urllib.request
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
import yarl

from codexexec.protocol import messages as m
from codexexec.protocol.base64_codec import Base64Error, decode_base64, encode_base64
from codexexec.protocol.jsonrpc import INTERNAL_ERROR, INVALID_PARAMS, RpcError
from codexexec.rpc.peer import ReplyThen
from codexexec.server.http_wire import (
    REDIRECT_STATUSES,
    HttpCall,
    InvalidRequest,
    RedirectError,
    Url,
    check_method,
    follow_redirect,
    parse_url,
    request_headers,
    response_headers,
    with_url_credentials,
)
from codexexec.server.managed_network import ExecutorNetwork
from codexexec.transport.base import TransportClosed

BODY_DELTA_METHOD = "http/request/bodyDelta"
MAX_DELTA_BYTES = 1024 * 1024
# A buffered body larger than this is refused (its base64 must fit one 64 MiB message).
MAX_BUFFERED_BODY_BYTES = 32 * 1024 * 1024
# Each active stream holds a socket; a connection may not hold more than this many.
MAX_ACTIVE_STREAMS = 128
# Codex's words for a body that broke off, timed out or was cut short.
BODY_ERROR = "error decoding response body"

# aiohttp would add these itself; Codex's client sends none of them.
_SKIP_AUTO_HEADERS = ("User-Agent", "Accept-Encoding", "Content-Type")
# codexexec frames the body itself; a caller's framing headers could desync the socket.
_FRAMING_HEADERS = frozenset({"content-length", "transfer-encoding"})

Notify = Callable[[str, Any], Awaitable[None]]


class _SendFailed(Exception):
    """The request could not be completed; ``str()`` follows "http/request failed: "."""


class _BodyFailed(Exception):
    """The response body broke off, timed out or was too large."""


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
            deadline = _deadline(params.timeout_ms)
            exchange = await _Exchange.open(
                call, params.redirect_policy == "follow", deadline, self._network
            )
        except BaseException as exc:
            if request_id is not None:
                self._reserved.discard(request_id)
            if isinstance(exc, InvalidRequest):
                raise RpcError(INVALID_PARAMS, str(exc)) from None
            if isinstance(exc, _SendFailed):
                raise RpcError(INTERNAL_ERROR, f"http/request failed: {exc}") from None
            raise
        result = {"status": exchange.status, "headers": exchange.headers, "bodyBase64": ""}
        if request_id is None:
            try:
                result["bodyBase64"] = encode_base64(await exchange.read_all())
            except _BodyFailed as exc:
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

    async def _stream(self, request_id: str, exchange: _Exchange, replied: asyncio.Event) -> None:
        try:
            await replied.wait()
            seq, error = 1, None
            try:
                while chunk := await exchange.read(MAX_DELTA_BYTES):
                    await self._delta(request_id, seq, chunk, done=False, error=None)
                    seq += 1
            except _BodyFailed:
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
                "deltaBase64": encode_base64(chunk),
                "done": done,
                "error": error,
            },
        )


def _first_call(params: m.HttpRequestParams, body: bytes | None) -> HttpCall:
    method = check_method(params.method)
    url = parse_url(params.url)
    headers = [(n, v) for n, v in request_headers(params.headers) if n not in _FRAMING_HEADERS]
    return HttpCall(method, url, with_url_credentials(headers, url), body)


def _deadline(timeout_ms: int | None) -> float | None:
    """Omitted or null means no timeout (Codex 0.169.0); 0 times out at once."""
    return None if timeout_ms is None else time.monotonic() + timeout_ms / 1000


def _remaining(deadline: float | None) -> float | None:
    return None if deadline is None else max(0.0, deadline - time.monotonic())


class _Exchange:
    """One request through its redirects, and the final response's body."""

    def __init__(self, deadline: float | None, network: ExecutorNetwork) -> None:
        self._deadline = deadline
        self._network = network
        self._token: str | None = None
        self._proxy: str | None = None
        self._session = aiohttp.ClientSession(
            auto_decompress=False,
            skip_auto_headers=_SKIP_AUTO_HEADERS,
            cookie_jar=aiohttp.DummyCookieJar(),
            timeout=aiohttp.ClientTimeout(total=None),
        )
        self._response: aiohttp.ClientResponse | None = None

    @classmethod
    async def open(
        cls, call: HttpCall, follow: bool, deadline: float | None, network: ExecutorNetwork
    ) -> _Exchange:
        exchange = cls(deadline, network)
        try:
            await exchange._send(call, follow)
        except BaseException:
            await exchange.close()
            raise
        return exchange

    @property
    def status(self) -> int:
        assert self._response is not None
        return self._response.status

    @property
    def headers(self) -> list[dict[str, str]]:
        assert self._response is not None
        return response_headers(self._response.raw_headers)

    async def _send(self, call: HttpCall, follow: bool) -> None:
        while True:
            response = await self._hop(call)
            location = response.headers.get("location")
            if not (follow and response.status in REDIRECT_STATUSES and location is not None):
                self._response = response
                return
            response.release()
            try:
                call = follow_redirect(call, response.status, location)
            except RedirectError as exc:
                raise _SendFailed(str(exc)) from None

    async def _hop(self, call: HttpCall) -> aiohttp.ClientResponse:
        proxy = await self._proxy_for(call.url)
        try:
            async with asyncio.timeout(_remaining(self._deadline)):
                response = await self._session.request(
                    call.method,
                    yarl.URL(str(call.url), encoded=True),
                    headers=call.headers,
                    data=call.body,
                    allow_redirects=False,
                    proxy=proxy,
                )
        except TimeoutError:
            raise _SendFailed("route-aware request timed out") from None
        except (aiohttp.ClientError, OSError, ValueError) as exc:
            self._raise_if_denied()
            raise _SendFailed(f"error sending request for url ({call.url})") from exc
        if response.status == 403:
            self._raise_if_denied()
        return response

    async def _proxy_for(self, url: Url) -> str | None:
        """The managed proxy under the operator's policy, else the executor's env proxy."""
        baseline = self._network.baseline
        if baseline is None:
            host = url.host.strip("[]")
            if urllib.request.proxy_bypass(host):
                return None
            return urllib.request.getproxies_environment().get(url.scheme)
        if self._token is None:
            prepared = await self._network.prepare(
                "http/request", baseline, lambda _: None, None, set()
            )
            self._token = prepared.token
            self._proxy = prepared.env["HTTP_PROXY"]
        return self._proxy

    def _raise_if_denied(self) -> None:
        if self._token is None:
            return
        for decision in self._network.decisions(self._token):
            raise _SendFailed(
                f"blocked by the executor's network policy: {decision['host']} "
                f"({decision['reason']})"
            )

    async def read(self, limit: int) -> bytes:
        assert self._response is not None
        try:
            async with asyncio.timeout(_remaining(self._deadline)):
                return await self._response.content.read(limit)
        except (TimeoutError, aiohttp.ClientError, OSError) as exc:
            raise _BodyFailed(BODY_ERROR) from exc

    async def read_all(self) -> bytes:
        body = bytearray()
        while chunk := await self.read(MAX_DELTA_BYTES):
            body += chunk
            if len(body) > MAX_BUFFERED_BODY_BYTES:
                raise _BodyFailed(
                    f"response body exceeds {MAX_BUFFERED_BODY_BYTES} bytes; use streamResponse"
                )
        return bytes(body)

    async def close(self) -> None:
        if self._response is not None:
            self._response.close()
        with contextlib.suppress(Exception):
            await self._session.close()
        if self._token is not None:
            self._network.release(self._token)
            self._token = None
