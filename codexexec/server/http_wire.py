"""The pure rules of `http/request`: what a valid method, URL and header is, which response
headers are reported, and how a redirect changes the next request.

Each rule and error text follows what Codex 0.169.0's exec-server does (measured; see
docs/codex-0.169-observed.md §10): the Rust `http` crate's token and header-value rules,
WHATWG URL parsing for http/https, and a redirect policy of at most 10 hops that drops
credentials when the origin changes.
"""

from __future__ import annotations

import base64
import ipaddress
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, replace
from urllib.parse import quote, unquote, urljoin

from codexexec.http1.message import TOKEN
from codexexec.protocol import messages as m
from codexexec.server.errors import ServerError

MAX_REDIRECTS = 10
REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})

_SCHEME = re.compile(r"([A-Za-z][A-Za-z0-9+.\-]*):")
_PORT = re.compile(r"[0-9]*")
_C0_AND_SPACE = "".join(chr(c) for c in range(0x21))
# WHATWG "forbidden domain code points" (after percent-decoding), minus the ones that
# end the host earlier ("/", "?", "#", "\\", "@").
_FORBIDDEN_HOST = re.compile(r"[\x00-\x20%<>\[\]^|\x7f]")
# Printable ASCII that WHATWG leaves unescaped in a path / in a special-scheme query.
_PRINTABLE = "".join(chr(c) for c in range(0x21, 0x7F))
_PATH_SAFE = "".join(c for c in _PRINTABLE if c not in '"#<>?`{}')
_QUERY_SAFE = "".join(c for c in _PRINTABLE if c not in "\"#<>'")
# Dropped when a redirect leaves the origin (as reqwest's remove_sensitive_headers).
_SENSITIVE = frozenset(
    {"authorization", "cookie", "cookie2", "proxy-authorization", "www-authenticate"}
)
_BODY_HEADERS = frozenset(
    {"content-type", "content-length", "content-encoding", "transfer-encoding"}
)


# Codex's words for a body that broke off, timed out or was cut short.
BODY_ERROR = "error decoding response body"
MAX_DELTA_BYTES = 1024 * 1024


class SendFailed(ServerError):
    """The request could not be completed; ``str()`` follows "http/request failed: "."""


class BodyFailed(ServerError):
    """The response body broke off, timed out or was too large."""


class InvalidRequest(ServerError, ValueError):
    """Bad params: answered -32602 with this message."""


class UnsupportedScheme(InvalidRequest):
    def __init__(self, scheme: str) -> None:
        super().__init__(f"http/request only supports http and https URLs, got {scheme}")
        self.scheme = scheme


class RedirectError(ServerError, ValueError):
    """A redirect that cannot be followed: answered "http/request failed: <message>"."""


@dataclass(frozen=True, slots=True)
class Url:
    scheme: str
    host: str  # as sent: lowercase, IDNA, IPv6 in brackets
    port: int | None  # None = the scheme's default
    target: str  # path and query, percent-encoded
    username: str = ""
    password: str = ""

    @property
    def origin(self) -> tuple[str, str, int]:
        return (self.scheme, self.host, self.port or (443 if self.scheme == "https" else 80))

    def __str__(self) -> str:
        port = f":{self.port}" if self.port is not None else ""
        return f"{self.scheme}://{self.host}{port}{self.target}"


@dataclass(slots=True)
class HttpCall:
    """One hop: what goes on the wire."""

    method: str
    url: Url
    headers: list[tuple[str, str]]
    body: bytes | None
    redirects: int = 0


def check_method(method: str) -> str:
    if not TOKEN.fullmatch(method):
        raise InvalidRequest("http/request method is invalid: invalid HTTP method")
    return method


def parse_url(text: str) -> Url:
    """An absolute http(s) URL, normalised as a WHATWG parser would; the fragment is dropped."""
    text = re.sub(r"[\t\n\r]", "", text.strip(_C0_AND_SPACE))
    scheme_match = _SCHEME.match(text)
    if scheme_match is None:
        raise InvalidRequest("http/request url is invalid: relative URL without a base")
    scheme = scheme_match.group(1).lower()
    if scheme not in ("http", "https"):
        raise UnsupportedScheme(scheme)
    rest = text[scheme_match.end() :].lstrip("/\\")
    rest = rest.split("#", 1)[0]
    end = min((i for i in (rest.find(c) for c in "/\\?") if i >= 0), default=len(rest))
    authority, remainder = rest[:end], rest[end:]
    userinfo, _, hostport = authority.rpartition("@")
    username, _, password = userinfo.partition(":")
    host, port = _split_host_port(hostport)
    path, question, query = remainder.partition("?")
    path = _remove_dot_segments(path.replace("\\", "/") or "/")
    target = quote(path, safe=_PATH_SAFE)
    if question:
        target += "?" + quote(query, safe=_QUERY_SAFE)
    default_port = 443 if scheme == "https" else 80
    return Url(
        scheme,
        host,
        None if port == default_port else port,
        target,
        unquote(username),
        unquote(password),
    )


def _split_host_port(hostport: str) -> tuple[str, int | None]:
    if hostport.startswith("["):
        close = hostport.find("]")
        try:
            address = ipaddress.IPv6Address(hostport[1:close] if close > 0 else "")
        except ValueError:
            raise InvalidRequest("http/request url is invalid: invalid IPv6 address") from None
        host, port_text = f"[{address.compressed}]", hostport[close + 1 :]
        if port_text and not port_text.startswith(":"):
            raise InvalidRequest("http/request url is invalid: invalid port number")
        port_text = port_text[1:]
    else:
        host, _, port_text = hostport.partition(":")
        host = _domain(unquote(host))
    if not _PORT.fullmatch(port_text) or (port_text and int(port_text) > 65535):
        raise InvalidRequest("http/request url is invalid: invalid port number")
    return host, int(port_text) if port_text else None


def _domain(host: str) -> str:
    if not host:
        raise InvalidRequest("http/request url is invalid: empty host")
    if _FORBIDDEN_HOST.search(host):
        raise InvalidRequest("http/request url is invalid: invalid domain character")
    if host.isascii():
        return host.lower()
    try:
        return host.encode("idna").decode("ascii")
    except UnicodeError:
        raise InvalidRequest(
            "http/request url is invalid: invalid international domain name"
        ) from None


def _remove_dot_segments(path: str) -> str:
    """RFC 3986 §5.2.4, so `/a/../b` asks for `/b` as it would from Codex."""
    output: list[str] = []
    segments = path.split("/")[1:]
    for index, segment in enumerate(segments):
        last = index == len(segments) - 1
        if segment == "..":
            if output:
                output.pop()
            if last:
                output.append("")
        elif segment == ".":
            if last:
                output.append("")
        else:
            output.append(segment)
    return "/" + "/".join(output)


def request_headers(
    headers: list[m.HttpHeader], environ: Mapping[str, str] = os.environ
) -> list[tuple[str, str]]:
    """Ordered (name, value) pairs; names lowercased as the Rust `http` crate sends them.

    A ``valueEnvVar`` header gets the executor's variable appended to ``value`` (a prefix
    such as "Bearer "); its value never appears in an error.
    """
    resolved: list[tuple[str, str]] = []
    for header in headers:
        if not TOKEN.fullmatch(header.name):
            raise InvalidRequest("http/request header name is invalid: invalid HTTP header name")
        value = header.value
        if header.value_env_var is not None:
            secret = environ.get(header.value_env_var)
            if secret is None:
                raise InvalidRequest(
                    f"http/request header {header.name} requires executor environment "
                    f"variable {header.value_env_var}"
                )
            value += secret
        if any((ord(c) < 32 and c != "\t") or ord(c) == 127 for c in value):
            raise InvalidRequest(
                f"http/request header value is invalid for {header.name}: "
                "failed to parse header value"
            )
        resolved.append((header.name.lower(), value))
    return resolved


def with_url_credentials(headers: list[tuple[str, str]], url: Url) -> list[tuple[str, str]]:
    """User info in the URL becomes Basic authorization, unless the caller sent their own."""
    if not (url.username or url.password) or any(n == "authorization" for n, _ in headers):
        return headers
    token = base64.b64encode(f"{url.username}:{url.password}".encode()).decode("ascii")
    return [*headers, ("authorization", f"Basic {token}")]


def response_headers(raw: tuple[tuple[bytes, bytes], ...]) -> list[dict[str, str]]:
    """Response headers in wire order; values that are not visible ASCII are dropped."""
    kept = []
    for name, value in raw:
        if all(32 <= b < 127 or b == 9 for b in value):
            kept.append({"name": name.decode("latin-1").lower(), "value": value.decode("ascii")})
    return kept


def follow_redirect(call: HttpCall, status: int, location: str) -> HttpCall:
    """The next hop after a redirect response, or RedirectError."""
    if call.redirects >= MAX_REDIRECTS:
        raise RedirectError("too many redirects")
    target_text = urljoin(str(call.url), location)
    try:
        target = parse_url(target_text)
    except UnsupportedScheme as exc:
        raise RedirectError(f"redirect target uses unsupported URL scheme: {exc.scheme}") from None
    except InvalidRequest as exc:
        raise RedirectError(str(exc).removeprefix("http/request url is invalid: ")) from None
    target = replace(target, username="", password="")
    method, body, headers = call.method, call.body, list(call.headers)
    if status in (301, 302, 303):
        body = None
        headers = [(n, v) for n, v in headers if n not in _BODY_HEADERS]
        if method not in ("GET", "HEAD"):
            method = "GET"
    same_origin = target.origin == call.url.origin
    headers = [
        (n, v) for n, v in headers if n != "referer" and (same_origin or n not in _SENSITIVE)
    ]
    referer = _referer(call.url, target, same_origin)
    if referer is not None:
        headers.append(("referer", referer))
    return HttpCall(method, target, headers, body, call.redirects + 1)


def _referer(source: Url, target: Url, same_origin: bool) -> str | None:
    if source.scheme == "https" and target.scheme == "http":
        return None
    clean = replace(source, username="", password="")
    if same_origin:
        return str(clean)
    return str(replace(clean, target="/"))
