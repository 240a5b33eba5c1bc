"""One JSON POST, the way every registry-side request is sent.

Compact JSON (the bytes Codex's serde output has), no redirects followed (a credential
never travels to a host it was not meant for), one total deadline, a bounded response,
and no automatic ``User-Agent`` or ``Accept-Encoding`` (Codex 0.169 sends neither).
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from codexexec.remote.errors import RemoteError

if TYPE_CHECKING:
    import aiohttp
    from aiohttp import StreamReader

MAX_RESPONSE_BYTES = 1 << 20
TRACEPARENT_ENV, TRACESTATE_ENV = "TRACEPARENT", "TRACESTATE"
_TRACEPARENT = re.compile(r"[0-9a-f]{2}-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}")
_TRACESTATE = re.compile(r"[\x21-\x7e ]{1,512}")


class Unreachable(RemoteError):
    """No HTTP answer (connection refused, DNS, TLS, timeout); the text names only the kind."""


def _unreachable_reason(exc: aiohttp.ClientError) -> str:
    """Why there was no answer, in words (never the URL, which may carry a credential)."""
    import aiohttp

    if isinstance(exc, aiohttp.ClientConnectorDNSError):
        return "the host name does not resolve"
    if isinstance(exc, aiohttp.ClientConnectorCertificateError | aiohttp.ClientSSLError):
        return "TLS failed (certificate or handshake)"
    if isinstance(exc, aiohttp.ClientConnectorError):
        errno = exc.os_error.errno if exc.os_error is not None else None
        return os.strerror(errno).lower() if errno else "cannot connect"
    if isinstance(exc, aiohttp.ServerDisconnectedError):
        return "the server closed the connection without answering"
    if isinstance(exc, aiohttp.ClientPayloadError):
        return "the answer was cut short"
    return type(exc).__name__


@dataclass(frozen=True, slots=True)
class HttpReply:
    status: int
    reason: str
    content_type: str
    text: str
    location: str | None

    @property
    def status_line(self) -> str:
        """``401 Unauthorized``, as Codex prints a status."""
        return f"{self.status} {self.reason}".strip()


def new_session() -> aiohttp.ClientSession:
    """A session for registry requests: no User-Agent or compression headers of its own."""
    import aiohttp

    return aiohttp.ClientSession(skip_auto_headers=("User-Agent", "Accept-Encoding"))


async def post_json(
    url: str,
    body: Mapping[str, Any],
    headers: Mapping[str, str],
    timeout: float,
    session: aiohttp.ClientSession | None = None,
) -> HttpReply:
    """POST ``body``; ``session``: a kept one whose connections are reused (an executor's
    /validate calls, one per stream), else one for this request alone."""
    import aiohttp

    if session is None:
        async with new_session() as own:
            return await post_json(url, body, headers, timeout, own)
    data = json.dumps(body, separators=(",", ":"), ensure_ascii=False).encode()
    try:
        async with session.post(
            url,
            data=data,
            headers={"Content-Type": "application/json", **headers},
            allow_redirects=False,
            timeout=aiohttp.ClientTimeout(total=timeout),
        ) as response:
            raw = await _read_bounded(response.content)
            return HttpReply(
                response.status,
                response.reason or "",
                response.headers.get("Content-Type", ""),
                raw.decode("utf-8", "replace"),
                response.headers.get("Location"),
            )
    except aiohttp.ClientError as exc:
        raise Unreachable(_unreachable_reason(exc)) from None
    except TimeoutError:
        raise Unreachable("no answer in time") from None


async def _read_bounded(content: StreamReader) -> bytes:
    """The body up to MAX_RESPONSE_BYTES: one ``read(n)`` returns only what has arrived so far,
    so an answer split across packets or chunks would be cut short."""
    raw = bytearray()
    while len(raw) < MAX_RESPONSE_BYTES:
        chunk = await content.read(MAX_RESPONSE_BYTES - len(raw))
        if not chunk:
            break
        raw += chunk
    return bytes(raw)


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
