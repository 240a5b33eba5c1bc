"""The HTTP side of the managed proxy: absolute-form forwarding and ``CONNECT``.

Plain HTTP requests are re-framed, not piped: the request body is copied exactly as
its ``Content-Length`` or chunked framing says, so a second (pipelined) request on the
same client connection is parsed and judged on its own and can never ride along to
the first request's upstream. Each forwarded request gets its own upstream
connection (``Connection: close``); the client connection is kept alive when the
response framing allows it.

Errors the proxy itself produces: 400 (malformed request or target, bad port), 403
(policy, with ``x-proxy-error`` and the ``CODEX_NETWORK_POLICY_DECISION`` line), 408
(head not complete within the header timeout), 431 (head over 64 KiB or too many
fields), 502 (unresolvable name, refused or broken upstream), 503 (connection limit),
504 (DNS or connect timeout).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import logging
import re
import time
from collections.abc import Awaitable
from dataclasses import dataclass
from typing import TypeVar

from codexexec.http1.body import BodyReader, Framing
from codexexec.http1.message import (
    MAX_INTERIM_RESPONSES,
    TOKEN,
    Headers,
    MessageError,
    content_length,
    parse_fields,
    parse_response_head,
    response_framing,
    tokens,
    values,
)
from codexexec.network._stream import Endpoint, IncompleteRead, TooLarge, splice
from codexexec.network.errors import NetworkError
from codexexec.network.gate import Gate, UpstreamError
from codexexec.network.limits import (
    LINGER_TIMEOUT,
    MAX_LINGER_BYTES,
    Limits,
)
from codexexec.network.policy import Decision, InvalidHost, Protocol, normalize_host

log = logging.getLogger(__name__)

T = TypeVar("T")

_PORT = re.compile(r"[0-9]{1,5}")
_BAD_TARGET_CHARS = re.compile(r"[\x00-\x20\x7f]")

# Never forwarded in either direction (RFC 9110 §7.6.1), plus any name listed in
# Connection and every Proxy-* field. Framing fields are rebuilt from the parsed framing.
HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-connection",
        "proxy-authenticate",
        "proxy-authorization",
        "te",
        "trailer",
        "upgrade",
    }
)

REASONS = {
    400: "Bad Request",
    403: "Forbidden",
    408: "Request Timeout",
    431: "Request Header Fields Too Large",
    502: "Bad Gateway",
    503: "Service Unavailable",
    504: "Gateway Timeout",
}


class BadRequest(NetworkError):
    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


class BadResponse(NetworkError):
    """The upstream's response cannot be parsed or framed."""


@dataclass(slots=True)
class Request:
    method: str
    version: str
    headers: Headers
    host: str  # normalised
    port: int
    path: str  # origin-form ("" for CONNECT)
    token: str | None


def error_response(status: int, message: str, extra: Headers | None = None) -> bytes:
    body = (message.rstrip("\n") + "\n").encode("utf-8")
    lines = [
        f"HTTP/1.1 {status} {REASONS.get(status, 'Error')}",
        "content-type: text/plain; charset=utf-8",
        f"content-length: {len(body)}",
        "connection: close",
    ]
    lines.extend(f"{name}: {value}" for name, value in extra or [])
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


def blocked_response(decision: Decision) -> bytes:
    """403 with ``x-proxy-error`` and the decision line Codex's core looks for."""
    message = f"{decision.decision_line()}\n{decision.message()}"
    return error_response(403, message, [("x-proxy-error", decision.proxy_error)])


def upstream_error_response(error: UpstreamError) -> bytes:
    if error.is_timeout:
        return error_response(504, f"proxy: {error}")
    return error_response(502, f"proxy: {error}")


# ---------------------------------------------------------------------------
# Parsing


def parse_authority(text: str, default_port: int | None) -> tuple[str, int]:
    """``host[:port]`` (IPv6 in brackets) → (normalised host, port)."""
    port_text: str | None
    if text.startswith("["):
        close = text.find("]")
        if close < 0:
            raise BadRequest("unterminated IPv6 literal")
        host_part, rest = text[: close + 1], text[close + 1 :]
        if rest and not rest.startswith(":"):
            raise BadRequest("junk after IPv6 literal")
        port_text = rest[1:] if rest else None
    else:
        if text.count(":") > 1:
            raise BadRequest("IPv6 literals must be in brackets")
        host_part, sep, after = text.partition(":")
        port_text = after if sep else None
    if not port_text:
        if default_port is None:
            raise BadRequest("port required")
        port = default_port
    else:
        if not _PORT.fullmatch(port_text):
            raise BadRequest(f"invalid port `{port_text[:16]}`")
        port = int(port_text)
        if not 0 < port < 65536:
            raise BadRequest(f"port {port} out of range 1..65535")
    try:
        host = normalize_host(host_part)
    except InvalidHost as exc:
        raise BadRequest(f"invalid host: {exc}") from None
    return host, port


def _split_target(target: str) -> tuple[str, str]:
    """Absolute-form ``http://authority/path`` → (authority, origin-form path)."""
    scheme = target[:8].lower()
    if scheme.startswith("https://"):
        raise BadRequest("https:// URLs go through CONNECT")
    if not scheme.startswith("http://"):
        raise BadRequest("expected an absolute http:// URL or CONNECT")
    rest = target[7:]
    end = len(rest)
    for mark in "/?#":
        index = rest.find(mark)
        if 0 <= index < end:
            end = index
    authority, path = rest[:end], rest[end:]
    path = path.split("#", 1)[0]
    if not path.startswith("/"):
        path = "/" + path
    if "@" in authority:
        raise BadRequest("credentials in the URL are not supported")
    if not authority:
        raise BadRequest("URL without a host")
    return authority, path


def _token_from(headers: Headers) -> str | None:
    """The attribution token: ``Proxy-Authorization: Basic base64(token:)``."""
    for name, value in headers:
        if name.lower() != "proxy-authorization":
            continue
        scheme, _, credentials = value.strip().partition(" ")
        if scheme.lower() != "basic":
            return None
        try:
            decoded = base64.b64decode(credentials.strip(), validate=True).decode("utf-8")
        except (binascii.Error, UnicodeDecodeError, ValueError):
            return None
        user = decoded.split(":", 1)[0]
        return user or None
    return None


def parse_request_head(head: bytes) -> Request | None:
    """A request head (ending in an empty line) → :class:`Request`; None if blank.

    Raises :class:`BadRequest` (400, or 431 for too many fields) for anything else.
    """
    head = head.lstrip(b"\r\n")
    if not head:
        return None
    if not head.endswith(b"\r\n\r\n"):
        raise BadRequest("incomplete request head")
    raw_lines = head[:-4].split(b"\r\n")
    try:
        request_line = raw_lines[0].decode("utf-8")
    except UnicodeDecodeError:
        raise BadRequest("request line is not UTF-8") from None
    parts = request_line.split(" ")
    if len(parts) != 3:
        raise BadRequest("malformed request line")
    method, target, version = parts
    if not TOKEN.fullmatch(method):
        raise BadRequest("malformed method")
    if version not in ("HTTP/1.1", "HTTP/1.0"):
        raise BadRequest("unsupported HTTP version")
    if not target or _BAD_TARGET_CHARS.search(target):
        raise BadRequest("malformed request target")
    if any(b"\r" in line or b"\n" in line for line in raw_lines):
        raise BadRequest("bare CR or LF in the request head")
    try:
        headers = parse_fields([line.decode("latin-1") for line in raw_lines[1:]])
    except MessageError as exc:
        raise BadRequest(str(exc), 431 if exc.too_many else 400) from None
    if method == "CONNECT":
        host, port = parse_authority(target, None)
        path = ""
    else:
        authority, path = _split_target(target)
        host, port = parse_authority(authority, 80)
    return Request(method, version, headers, host, port, path, _token_from(headers))


def request_framing(request: Request) -> tuple[Framing, int]:
    codings = tokens(request.headers, "transfer-encoding")
    try:
        length = content_length(request.headers)
    except MessageError as exc:
        raise BadRequest(str(exc)) from None
    if codings:
        if length is not None:
            raise BadRequest("both Transfer-Encoding and Content-Length")
        if codings != ["chunked"] or request.version != "HTTP/1.1":
            raise BadRequest("unsupported Transfer-Encoding")
        return "chunked", 0
    if length:
        return "length", length
    return "none", 0


def _forwardable(headers: Headers, *, keep_transfer_encoding: bool) -> Headers:
    listed = set(tokens(headers, "connection"))
    kept: Headers = []
    for name, value in headers:
        lower = name.lower()
        if lower in HOP_BY_HOP or lower in listed or lower.startswith("proxy-"):
            continue
        if lower == "content-length" or (
            lower == "transfer-encoding" and not keep_transfer_encoding
        ):
            continue
        kept.append((name, value))
    return kept


def _host_header(host: str, port: int) -> str:
    shown = f"[{host}]" if ":" in host else host
    return shown if port == 80 else f"{shown}:{port}"


def upstream_head(request: Request, framing: Framing, length: int) -> bytes:
    """The request as sent upstream: origin-form target, hop-by-hop and Proxy-* fields
    removed, ``Host`` from the URL, framing re-stated, one request per connection."""
    headers = [
        (name, value)
        for name, value in _forwardable(request.headers, keep_transfer_encoding=False)
        if name.lower() != "host"
    ]
    lines = [f"Host: {_host_header(request.host, request.port)}"]
    lines.extend(f"{name}: {value}" for name, value in headers)
    if framing == "length":
        lines.append(f"Content-Length: {length}")
    elif framing == "chunked":
        lines.append("Transfer-Encoding: chunked")
    lines.append("Connection: close")
    start = f"{request.method} {request.path} HTTP/1.1\r\n".encode()
    return start + ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


# ---------------------------------------------------------------------------
# Body copying


async def _timed(awaitable: Awaitable[T], timeout: float) -> T:
    async with asyncio.timeout(timeout):
        return await awaitable


async def copy_body(
    src: Endpoint, dst: Endpoint, framing: Framing, length: int, idle: float
) -> None:
    """Copy one message body with the given framing (the decisions are ``BodyReader``'s);
    raises BodyError on a malformed or short body."""
    reader = BodyReader(framing, length)
    while (need := reader.need()) is not None:
        if need.kind == "line":
            data = await _timed(src.read_until(b"\r\n", need.limit), idle)
        elif need.kind == "exactly":
            data = await _timed(src.read_exactly(need.limit), idle)
        else:
            data = await _timed(src.read_some(need.limit), idle)
        forward = reader.feed(data)
        if forward:
            dst.write(forward)
            await dst.drain()


# ---------------------------------------------------------------------------
# The handler


class HttpProxyHandler:
    def __init__(self, gate: Gate, limits: Limits) -> None:
        self._gate = gate
        self._limits = limits

    async def serve(self, client: Endpoint) -> None:
        limits = self._limits
        first = True
        blank_heads = 0
        try:
            while True:
                try:
                    if not first:
                        async with asyncio.timeout(limits.keepalive_timeout):
                            if not await client.wait_readable():
                                return
                    async with asyncio.timeout(limits.header_timeout):
                        head = await client.read_until(b"\r\n\r\n", limits.max_header_bytes)
                except TimeoutError:
                    await self._reject(client, 408, "proxy: request head not received in time")
                    return
                except TooLarge:
                    await self._reject(client, 431, "proxy: request head too large")
                    return
                except IncompleteRead:
                    return
                first = False
                try:
                    request = parse_request_head(head)
                except BadRequest as exc:
                    await self._reject(client, exc.status, f"proxy: {exc}")
                    return
                if request is None:
                    blank_heads += 1
                    if blank_heads > 4:
                        return
                    continue
                if request.method == "CONNECT":
                    await self._tunnel(client, request)
                    return
                if not await self._forward(client, request):
                    return
        finally:
            client.close()

    async def _reject(self, client: Endpoint, status: int, message: str) -> None:
        client.write(error_response(status, message))
        await linger(client)

    async def _open(
        self, client: Endpoint, request: Request, protocol: Protocol
    ) -> Endpoint | None:
        try:
            admission = await self._gate.admit(
                protocol, request.host, request.port, request.method, request.token
            )
            if not admission.decision.allowed:
                client.write(blocked_response(admission.decision))
                await linger(client)
                return None
            return await self._gate.connect(admission.addresses, request.port)
        except UpstreamError as exc:
            client.write(upstream_error_response(exc))
            await linger(client)
            return None

    async def _tunnel(self, client: Endpoint, request: Request) -> None:
        upstream = await self._open(client, request, "https_connect")
        if upstream is None:
            return
        client.write(b"HTTP/1.1 200 Connection Established\r\n\r\n")
        await splice(client, upstream, self._limits.idle_timeout)

    async def _forward(self, client: Endpoint, request: Request) -> bool:
        """Forward one request; True if the client connection may carry another."""
        try:
            framing, length = request_framing(request)
        except BadRequest as exc:
            await self._reject(client, exc.status, f"proxy: {exc}")
            return False
        upstream = await self._open(client, request, "http")
        if upstream is None:
            return False
        idle = self._limits.idle_timeout
        keep = request.version == "HTTP/1.1" and "close" not in tokens(
            request.headers, "connection"
        )
        upload = asyncio.create_task(copy_body(client, upstream, framing, length, idle))
        started = False
        try:
            upstream.write(upstream_head(request, framing, length))
            for _ in range(MAX_INTERIM_RESPONSES + 1):
                head = await _first_of(
                    _timed(upstream.read_until(b"\r\n\r\n", self._limits.max_header_bytes), idle),
                    upload,
                )
                status, reason, headers = parse_response_head(head)
                if status == 101:
                    raise BadResponse("unexpected 101 Switching Protocols")
                if 100 <= status < 200:
                    if request.version == "HTTP/1.1":
                        interim = _forwardable(headers, keep_transfer_encoding=False)
                        client.write(_status_head(status, reason, interim, close=False))
                    continue
                break
            else:
                raise BadResponse("too many interim (1xx) responses")
            body, body_length = response_framing(request.method, status, headers)
            if body == "close":
                keep = False
            forwarded = _forwardable(headers, keep_transfer_encoding=True)
            if body == "length":
                forwarded.append(("Content-Length", str(body_length)))
            elif body == "none" and request.method == "HEAD":
                forwarded.extend(
                    ("Content-Length", v) for v in values(headers, "content-length")[:1]
                )
            elif body == "none" and status not in (204, 304):
                forwarded.append(("Content-Length", "0"))
            started = True
            client.write(_status_head(status, reason, forwarded, close=not keep))
            await copy_body(upstream, client, body, body_length, idle)
            if not upload.done():
                keep = False  # the server answered before taking the whole body
            elif upload.cancelled() or upload.exception() is not None:
                keep = False
            return keep
        except (OSError, EOFError, ValueError, TimeoutError, TooLarge, BadResponse) as exc:
            if not started:
                if isinstance(exc, TimeoutError):
                    client.write(error_response(504, "proxy: upstream did not answer in time"))
                else:
                    client.write(error_response(502, f"proxy: bad upstream response: {exc}"))
                await linger(client)
            return False
        finally:
            if not upload.done():
                upload.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await upload
            elif not upload.cancelled():
                upload.exception()  # retrieved: a failed upload is reported through `keep`
            upstream.abort()


def _status_head(status: int, reason: str, headers: Headers, *, close: bool) -> bytes:
    lines = [f"HTTP/1.1 {status} {reason}".rstrip()]
    lines.extend(f"{name}: {value}" for name, value in headers)
    if close:
        lines.append("Connection: close")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


async def _first_of(awaitable: Awaitable[T], upload: asyncio.Task[None]) -> T:
    """Await ``awaitable``, but fail early if the upload (request body) fails."""
    task = asyncio.ensure_future(awaitable)
    try:
        while True:
            done, _ = await asyncio.wait(
                {task, upload} if not upload.done() else {task},
                return_when=asyncio.FIRST_COMPLETED,
            )
            if task in done:
                return task.result()
            if upload.cancelled():
                raise EOFError("request body upload cancelled")
            error = upload.exception()
            if error is not None:
                raise EOFError(f"request body: {error}")
    finally:
        if not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task


async def linger(client: Endpoint) -> None:
    """After an error reply: stop sending, and drop input briefly (bounded) so the
    reply is not lost to a reset caused by unread data; the caller then closes."""
    client.write_eof()
    deadline = time.monotonic() + LINGER_TIMEOUT
    dropped = 0
    with contextlib.suppress(TimeoutError, OSError):
        while dropped < MAX_LINGER_BYTES:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            async with asyncio.timeout(remaining):
                data = await client.read_some()
            if not data:
                break
            dropped += len(data)


def proxy_busy_response() -> bytes:
    return error_response(503, "proxy: too many connections, try again later")
