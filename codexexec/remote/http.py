"""One JSON POST, the way every registry-side request is sent.

Compact JSON (the bytes Codex's serde output has), no redirects followed (a credential
never travels to a host it was not meant for), one total deadline, a bounded response,
and the fields Codex 0.169 sends: `Host`, `Content-Type`, `Accept: */*`,
`Content-Length` and the caller's own — no `User-Agent` or `Accept-Encoding`.

HTTP/1.1 straight over asyncio streams, framed by http1/: a harness that runs one command
through a registry would otherwise spend more time importing an HTTP library than
talking to the registry. An :class:`HttpClient` keeps connections for reuse (an
executor's /validate calls, one per stream); a kept connection the server has closed
meanwhile is replaced once, transparently.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import os
import re
import socket
import ssl
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit

import msgspec

from codexexec.http1.body import BodyError, BodyReader
from codexexec.http1.message import (
    MAX_INTERIM_RESPONSES,
    MessageError,
    parse_response_head,
    response_framing,
    shown_reason,
    tokens,
    valid_field,
    values,
)
from codexexec.remote.errors import RemoteError

MAX_RESPONSE_BYTES = 1 << 20
MAX_HEAD_BYTES = 64 * 1024
# Kept connections per origin; more are closed once their answer is read.
MAX_IDLE_PER_ORIGIN = 16
# Connections one client has open at once (aiohttp's default limit was 100).
MAX_CONNECTIONS = 64
TRACEPARENT_ENV, TRACESTATE_ENV = "TRACEPARENT", "TRACESTATE"
_TRACEPARENT = re.compile(r"[0-9a-f]{2}-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}")
_TRACESTATE = re.compile(r"[\x21-\x7e ]{1,512}")
# What a request target may hold as is (RFC 3986's characters, percent escapes included).
_TARGET = re.compile(r"[!-~]+")

Origin = tuple[str, str, int]  # scheme, host, port


class Unreachable(RemoteError):
    """No HTTP answer (connection refused, DNS, TLS, timeout); the text names only the kind."""


class HttpReply(msgspec.Struct, frozen=True):
    status: int
    reason: str
    content_type: str
    text: str
    location: str | None

    @property
    def status_line(self) -> str:
        """``401 Unauthorized``, as Codex prints a status."""
        return f"{self.status} {self.reason}".strip()


class _Stale(RemoteError):
    """A connection ended before one byte of its answer came: on a kept connection (which
    the server may have closed while it sat idle) the request is sent once more."""


class _Connection:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    def usable(self) -> bool:
        """Open, and holding nothing unasked for: bytes a server sent on an idle connection
        (a 408 before it hangs up, a body longer than it said) must never be read as the
        answer to the next request. StreamReader has no public view of its buffer."""
        buffered = getattr(self.reader, "_buffer", b"")
        return not self.writer.is_closing() and not self.reader.at_eof() and not buffered

    def close(self) -> None:
        self.writer.close()


class HttpClient:
    """Registry requests with connections kept per origin.

    A request on a kept connection that ends before one byte of its answer (the server
    closed it while idle) is sent once more on a new one: keep a client only for requests
    that may be repeated — `/validate`, its one user, spends an authorization at most once.
    """

    def __init__(self) -> None:
        self._idle: dict[Origin, list[_Connection]] = {}
        self._open = asyncio.Semaphore(MAX_CONNECTIONS)
        self._closed = False

    async def post(
        self, url: str, data: bytes, headers: Mapping[str, str], timeout: float
    ) -> HttpReply:
        origin, target, host_field = _split(url)
        head = _request_head(target, host_field, headers, len(data))
        try:
            async with asyncio.timeout(timeout), self._open:
                kept = self._take(origin)
                if kept is not None:
                    with contextlib.suppress(_Stale):
                        return await self._exchange(origin, kept, head + data)
                fresh = await _connect(origin)
                try:
                    return await self._exchange(origin, fresh, head + data)
                except _Stale:
                    raise Unreachable(
                        "the server closed the connection without answering"
                    ) from None
        except TimeoutError:
            raise Unreachable("no answer in time") from None

    async def close(self) -> None:
        self._closed = True
        for connections in self._idle.values():
            for connection in connections:
                connection.close()
        self._idle.clear()

    async def __aenter__(self) -> HttpClient:
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.close()

    def _take(self, origin: Origin) -> _Connection | None:
        kept = self._idle.get(origin, [])
        while kept:
            connection = kept.pop()
            if connection.usable():
                return connection
            connection.close()
        return None

    def _keep(self, origin: Origin, connection: _Connection) -> None:
        kept = self._idle.setdefault(origin, [])
        if not self._closed and len(kept) < MAX_IDLE_PER_ORIGIN:
            kept.append(connection)
        else:
            connection.close()

    async def _exchange(self, origin: Origin, connection: _Connection, request: bytes) -> HttpReply:
        reusable = False
        try:
            reply, reusable = await _exchange(connection, request)
        finally:
            if reusable:
                self._keep(origin, connection)
            else:
                connection.close()
        return reply


async def post_json(
    url: str,
    body: Mapping[str, Any],
    headers: Mapping[str, str],
    timeout: float,
    session: HttpClient | None = None,
) -> HttpReply:
    """POST ``body``; ``session``: a kept client whose connections are reused, else one for
    this request alone."""
    data = json.dumps(body, separators=(",", ":"), ensure_ascii=False).encode()
    if session is not None:
        return await session.post(url, data, headers, timeout)
    async with HttpClient() as own:
        return await own.post(url, data, headers, timeout)


def _split(url: str) -> tuple[Origin, str, str]:
    try:
        parts = urlsplit(url)
        host = parts.hostname
    except ValueError:  # e.g. an unclosed "[" of an IPv6 address
        raise Unreachable("not an http(s) URL") from None
    if parts.scheme not in ("http", "https") or not host:
        raise Unreachable("not an http(s) URL")
    if "@" in parts.netloc:
        # Sent as nothing, a user and password in the URL would fail as a bare 401.
        raise Unreachable("the URL holds a user name or password; give credentials apart")
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError:
        raise Unreachable("the URL's port is invalid") from None
    shown = f"[{host}]" if ":" in host else host
    default = port == (443 if parts.scheme == "https" else 80)
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    if not _TARGET.fullmatch(target):
        raise Unreachable("the URL's path holds a character a request line cannot carry")
    return (parts.scheme, host, port), target, shown if default else f"{shown}:{port}"


def _request_head(target: str, host: str, headers: Mapping[str, str], length: int) -> bytes:
    fields = {"Host": host, "Content-Type": "application/json", **headers}
    fields.setdefault("Accept", "*/*")
    fields["Content-Length"] = str(length)
    lines = [f"POST {target} HTTP/1.1"]
    for name, value in fields.items():
        if not valid_field(name, value):
            raise Unreachable(f"the `{name}` header cannot be sent (a control character)")
        lines.append(f"{name}: {value}")
    try:
        return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
    except UnicodeEncodeError:
        raise Unreachable("a header holds a character HTTP/1.1 cannot carry") from None


@functools.cache
def _tls() -> ssl.SSLContext:
    return ssl.create_default_context()


async def _connect(origin: Origin) -> _Connection:
    scheme, host, port = origin
    try:
        reader, writer = await asyncio.open_connection(
            host,
            port,
            ssl=_tls() if scheme == "https" else None,
            limit=MAX_HEAD_BYTES,
        )
    except socket.gaierror:
        raise Unreachable("the host name does not resolve") from None
    except UnicodeError:  # a name IDNA cannot encode (`a..b`)
        raise Unreachable("the host name is not valid") from None
    except ssl.SSLError:
        raise Unreachable("TLS failed (certificate or handshake)") from None
    except OSError as exc:
        reason = os.strerror(exc.errno).lower() if exc.errno else "cannot connect"
        raise Unreachable(reason) from None
    return _Connection(reader, writer)


async def _exchange(connection: _Connection, request: bytes) -> tuple[HttpReply, bool]:
    """Send ``request`` and read its answer: (the reply, whether the connection may be kept).
    Raises _Stale when the connection ended before any of the answer arrived."""
    reader = connection.reader
    answered = False  # a byte of the answer came: never send the request again
    try:
        connection.writer.write(request)
        await connection.writer.drain()
        for _ in range(MAX_INTERIM_RESPONSES + 1):
            try:
                head = await reader.readuntil(b"\r\n\r\n")
            except asyncio.IncompleteReadError as exc:
                if not exc.partial and not answered:
                    raise _Stale from None
                raise Unreachable("the answer was cut short") from None
            answered = True
            status, reason, headers = parse_response_head(head)
            if not 100 <= status < 200:
                break
        else:
            raise Unreachable("the answer was not valid HTTP/1.1") from None
        framing, length = response_framing("POST", status, headers)
        body = await _read_body(reader, BodyReader(framing, length))
    except (ConnectionResetError, BrokenPipeError):
        if answered:
            raise Unreachable("the answer was cut short") from None
        raise _Stale from None
    except ssl.SSLError:
        raise Unreachable("TLS failed (certificate or handshake)") from None
    except (MessageError, BodyError, asyncio.LimitOverrunError, ValueError):
        raise Unreachable("the answer was not valid HTTP/1.1") from None
    except OSError as exc:
        raise Unreachable(os.strerror(exc.errno).lower() if exc.errno else "I/O failed") from None
    reply = HttpReply(
        status,
        shown_reason(reason),
        next(iter(values(headers, "content-type")), ""),
        body[:MAX_RESPONSE_BYTES].decode("utf-8", "replace"),
        next(iter(values(headers, "location")), None),
    )
    keep = (
        head.startswith(b"HTTP/1.1 ")  # an HTTP/1.0 server closes unless told otherwise
        and framing != "close"
        and len(body) <= MAX_RESPONSE_BYTES
        and "close" not in tokens(headers, "connection")
    )
    return reply, keep


async def _read_body(reader: asyncio.StreamReader, framing: BodyReader) -> bytes:
    """The body's bytes; past MAX_RESPONSE_BYTES reading stops (one byte more tells the
    caller there was more)."""
    body = bytearray()
    while (need := framing.need()) is not None and len(body) <= MAX_RESPONSE_BYTES:
        payload = framing.in_payload
        try:
            if need.kind == "line":
                data = await reader.readuntil(b"\r\n")
                if len(data) > need.limit:
                    raise BodyError("chunk line too long")
            elif need.kind == "exactly":
                data = await reader.readexactly(need.limit)
            else:
                data = await reader.read(need.limit)
        except asyncio.IncompleteReadError:
            raise Unreachable("the answer was cut short") from None
        try:
            chunk = framing.feed(data)
        except BodyError:
            if not data:
                raise Unreachable("the answer was cut short") from None
            raise
        if payload:
            body += chunk
    return bytes(body)


def trace_context_headers(environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """W3C trace context handed down by a parent process (``TRACEPARENT``/``TRACESTATE``,
    the environment-carrier convention), passed through when well formed."""
    env = os.environ if environ is None else environ
    parent = env.get(TRACEPARENT_ENV, "").strip()
    if not _TRACEPARENT.fullmatch(parent) or parent.startswith("ff"):
        return {}
    headers = {"traceparent": parent}
    state = env.get(TRACESTATE_ENV, "").strip()
    if _TRACESTATE.fullmatch(state):
        headers["tracestate"] = state
    return headers
