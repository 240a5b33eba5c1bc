"""HTTP from the executor's network position: `http/request`, buffered or streamed.

    response = await client.http.request("GET", "https://example.com/")
    async with await client.http.stream("GET", url) as stream:
        print(stream.status)
        async for chunk in stream:
            ...

Stream ids are generated here (`http-<n>`), never taken from callers, and registered
before the request is sent: the executor may send body deltas right after its response.
Deltas for ids nobody waits for (a stream closed early) are dropped.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Literal

from codexexec.client.errors import ExecServerError
from codexexec.protocol.base64_codec import decode_base64, encode_base64

# Deltas buffered per stream (each at most 1 MiB) before the stream fails as overrun.
MAX_QUEUED_DELTAS = 256
# Queued after the last delta when the connection ends.
_LOST: dict[str, Any] = {}

Call = Callable[[str, Any], Awaitable[Any]]


@dataclass(frozen=True, slots=True)
class Header:
    """A request header; with ``value_env_var`` the executor appends that variable's value
    to ``value`` (e.g. ``Header("authorization", "Bearer ", "API_TOKEN")``)."""

    name: str
    value: str
    value_env_var: str | None = None

    def to_json(self) -> dict[str, str]:
        data = {"name": self.name, "value": self.value}
        if self.value_env_var is not None:
            data["valueEnvVar"] = self.value_env_var
        return data


HeaderLike = Header | tuple[str, str]


@dataclass(frozen=True, slots=True)
class HttpResponse:
    status: int
    headers: list[tuple[str, str]]  # wire order, names lowercase, repeats kept
    body: bytes

    def header(self, name: str) -> str | None:
        name = name.lower()
        return next((v for n, v in self.headers if n == name), None)


class HttpBodyStream:
    """A streamed response: status and headers now, the body as it arrives."""

    def __init__(self, request_id: str, release: Callable[[str], None]) -> None:
        self.request_id = request_id
        self.status = 0
        self.headers: list[tuple[str, str]] = []
        self._release = release
        self._queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue(MAX_QUEUED_DELTAS)
        self._next_seq = 1
        self._finished = False
        self.overrun = False
        # Set when the connection ended: no more deltas can come for this stream.
        self._lost: str | None = None

    def deliver(self, delta: dict[str, Any]) -> None:
        if self.overrun:
            return
        try:
            self._queue.put_nowait(delta)
        except asyncio.QueueFull:
            self.overrun = True  # reported once the queued deltas are consumed

    def connection_lost(self, reason: str) -> None:
        """The executor aborts a stream whose connection ended; say so to the reader
        once it has what arrived before."""
        self._lost = reason
        with contextlib.suppress(asyncio.QueueFull):  # else seen once the queue drains
            self._queue.put_nowait(_LOST)

    def __aiter__(self) -> AsyncIterator[bytes]:
        return self._chunks()

    async def _chunks(self) -> AsyncIterator[bytes]:
        while not self._finished:
            if self.overrun and self._queue.empty():
                self.close()
                raise ExecServerError(
                    f"http/request body stream {self.request_id} fell more than "
                    f"{MAX_QUEUED_DELTAS} deltas behind and was dropped"
                )
            if self._lost is not None and self._queue.empty():
                delta = _LOST
            else:
                delta = await self._queue.get()
            if delta is _LOST:
                self.close()
                raise ExecServerError(
                    f"http/request body stream {self.request_id} ended with its connection: "
                    f"{self._lost}"
                )
            if delta.get("seq") != self._next_seq:
                self.close()
                raise ExecServerError(
                    f"http/request body stream {self.request_id} skipped from seq "
                    f"{self._next_seq} to {delta.get('seq')}"
                )
            self._next_seq += 1
            chunk = decode_base64(str(delta.get("deltaBase64", "")))
            if chunk:
                yield chunk
            if delta.get("done"):
                self.close()
                if delta.get("error"):
                    raise ExecServerError(f"http/request body failed: {delta['error']}")

    async def read(self) -> bytes:
        """The rest of the body."""
        return b"".join([chunk async for chunk in self])

    def close(self) -> None:
        """Stop listening; later deltas for this id are dropped."""
        self._finished = True
        self._release(self.request_id)

    async def __aenter__(self) -> HttpBodyStream:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


class HttpClient:
    """`http/request` for one ExecServerClient."""

    def __init__(self, call: Call) -> None:
        self._call = call
        self._streams: dict[str, HttpBodyStream] = {}
        self._prefix = uuid.uuid4().hex[:8]
        self._ids = itertools.count(1)

    async def request(
        self,
        method: str,
        url: str,
        *,
        headers: Sequence[HeaderLike] = (),
        body: bytes | None = None,
        timeout_ms: int | None = None,
        redirects: Literal["follow", "stop"] = "follow",
    ) -> HttpResponse:
        """One request; the executor buffers the whole body (codexexec caps it at 32 MiB)."""
        params = self._params(method, url, headers, body, timeout_ms, redirects, stream=False)
        result = await self._call("http/request", params)
        return HttpResponse(
            int(result["status"]),
            _headers(result),
            decode_base64(str(result.get("bodyBase64", ""))),
        )

    async def stream(
        self,
        method: str,
        url: str,
        *,
        headers: Sequence[HeaderLike] = (),
        body: bytes | None = None,
        timeout_ms: int | None = None,
        redirects: Literal["follow", "stop"] = "follow",
    ) -> HttpBodyStream:
        """One request whose body arrives as it is read (`streamResponse`)."""
        params = self._params(method, url, headers, body, timeout_ms, redirects, stream=True)
        stream = HttpBodyStream(params["requestId"], self._release)
        self._streams[stream.request_id] = stream
        try:
            result = await self._call("http/request", params)
        except BaseException:
            stream.close()
            raise
        stream.status = int(result["status"])
        stream.headers = _headers(result)
        return stream

    def connection_lost(self, reason: str) -> None:
        for stream in list(self._streams.values()):
            stream.connection_lost(reason)

    def deliver(self, params: dict[str, Any]) -> None:
        """Route one `http/request/bodyDelta` notification."""
        stream = self._streams.get(str(params.get("requestId")))
        if stream is not None:
            stream.deliver(params)

    def _release(self, request_id: str) -> None:
        self._streams.pop(request_id, None)

    def _params(
        self,
        method: str,
        url: str,
        headers: Sequence[HeaderLike],
        body: bytes | None,
        timeout_ms: int | None,
        redirects: str,
        *,
        stream: bool,
    ) -> dict[str, Any]:
        params: dict[str, Any] = {
            "method": method,
            "url": url,
            "headers": [
                (h if isinstance(h, Header) else Header(h[0], h[1])).to_json() for h in headers
            ],
            "requestId": f"http-{self._prefix}-{next(self._ids)}",
            "redirectPolicy": redirects,
            "streamResponse": stream,
        }
        if body is not None:
            params["bodyBase64"] = encode_base64(body)
        if timeout_ms is not None:
            params["timeoutMs"] = timeout_ms
        return params


def _headers(result: dict[str, Any]) -> list[tuple[str, str]]:
    return [(str(h["name"]), str(h["value"])) for h in result.get("headers", [])]
