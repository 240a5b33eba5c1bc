"""One upstream HTTP exchange for `http/request`: a request through its redirects, routed via
the managed proxy or the executor's env proxy, and the final response's body.

Kept apart from the method's bookkeeping so aiohttp is imported only when an executor first
makes an HTTP request.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import urllib.request

import aiohttp
import yarl

from codexexec.server.http_wire import (
    BODY_ERROR,
    MAX_DELTA_BYTES,
    REDIRECT_STATUSES,
    BodyFailed,
    HttpCall,
    RedirectError,
    SendFailed,
    Url,
    follow_redirect,
    response_headers,
)
from codexexec.server.managed_network import ExecutorNetwork

# A buffered body larger than this is refused (its base64 must fit one 64 MiB message).
MAX_BUFFERED_BODY_BYTES = 32 * 1024 * 1024

# aiohttp would add these itself; Codex's client sends none of them.
_SKIP_AUTO_HEADERS = ("User-Agent", "Accept-Encoding", "Content-Type")


def deadline_after(timeout_ms: int | None) -> float | None:
    """Omitted or null means no timeout (Codex 0.169.0); 0 times out at once."""
    return None if timeout_ms is None else time.monotonic() + timeout_ms / 1000


def _remaining(deadline: float | None) -> float | None:
    return None if deadline is None else max(0.0, deadline - time.monotonic())


class Exchange:
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
    ) -> Exchange:
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
                raise SendFailed(str(exc)) from None

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
            raise SendFailed("route-aware request timed out") from None
        except (aiohttp.ClientError, OSError, ValueError) as exc:
            self._raise_if_denied()
            raise SendFailed(f"error sending request for url ({call.url})") from exc
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
            raise SendFailed(
                f"blocked by the executor's network policy: {decision['host']} "
                f"({decision['reason']})"
            )

    async def read(self, limit: int) -> bytes:
        assert self._response is not None
        try:
            async with asyncio.timeout(_remaining(self._deadline)):
                return await self._response.content.read(limit)
        except (TimeoutError, aiohttp.ClientError, OSError) as exc:
            raise BodyFailed(BODY_ERROR) from exc

    async def read_all(self) -> bytes:
        body = bytearray()
        while chunk := await self.read(MAX_DELTA_BYTES):
            body += chunk
            if len(body) > MAX_BUFFERED_BODY_BYTES:
                raise BodyFailed(
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
