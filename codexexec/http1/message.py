"""Header fields, response heads and how a response is framed (RFC 9112), pure."""

from __future__ import annotations

import re

from codexexec.http1.body import Framing
from codexexec.http1.errors import Http1Error

MAX_HEADER_COUNT = 256
# 1xx answers before the final one that a client reads past.
MAX_INTERIM_RESPONSES = 8

Headers = list[tuple[str, str]]

TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
_CONTENT_LENGTH = re.compile(r"[0-9]{1,18}")
_STATUS_LINE = re.compile(r"HTTP/1\.[01] ([1-5][0-9][0-9])(?: (.*))?")
_BAD_VALUE_CHARS = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")


class MessageError(Http1Error, ValueError):
    """A head or field that breaks the rules; ``too_many``: more fields than allowed."""

    def __init__(self, message: str, *, too_many: bool = False) -> None:
        super().__init__(message)
        self.too_many = too_many


def parse_fields(lines: list[str]) -> Headers:
    if len(lines) > MAX_HEADER_COUNT:
        raise MessageError("too many header fields", too_many=True)
    headers: Headers = []
    for line in lines:
        if line[:1] in (" ", "\t"):
            raise MessageError("obsolete line folding")
        name, sep, value = line.partition(":")
        if not sep or not TOKEN.fullmatch(name):
            raise MessageError("malformed header field")
        value = value.strip(" \t")
        if _BAD_VALUE_CHARS.search(value):
            raise MessageError("control character in a header value")
        headers.append((name, value))
    return headers


def valid_field(name: str, value: str) -> bool:
    """Whether ``name: value`` may be sent: a token name, a value without controls."""
    return bool(TOKEN.fullmatch(name)) and not _BAD_VALUE_CHARS.search(value)


def values(headers: Headers, name: str) -> list[str]:
    return [value for key, value in headers if key.lower() == name]


def tokens(headers: Headers, name: str) -> list[str]:
    """The comma-separated tokens of every ``name`` field, lower-cased."""
    return [t.strip().lower() for v in values(headers, name) for t in v.split(",") if t.strip()]


def content_length(headers: Headers) -> int | None:
    found = {v.strip() for raw in values(headers, "content-length") for v in raw.split(",")}
    if not found:
        return None
    if len(found) != 1:
        raise MessageError("conflicting Content-Length values")
    (text,) = found
    if not _CONTENT_LENGTH.fullmatch(text):
        raise MessageError("invalid Content-Length")
    return int(text)


def parse_response_head(head: bytes) -> tuple[int, str, Headers]:
    """A response head ending in an empty line: status, reason, fields."""
    lines = head[:-4].split(b"\r\n")
    match = _STATUS_LINE.fullmatch(lines[0].decode("latin-1"))
    if match is None:
        raise MessageError("malformed status line")
    reason = match.group(2) or ""
    # RFC 9112 allows any octet from 0x80 up (a UTF-8 reason phrase is common): a proxy
    # forwards it. Whoever shows one on a terminal cleans it (``shown_reason``).
    if _BAD_VALUE_CHARS.search(reason):
        raise MessageError("control character in the reason phrase")
    headers = parse_fields([line.decode("latin-1") for line in lines[1:]])
    return int(match.group(1)), reason, headers


def shown_reason(reason: str) -> str:
    """A reason phrase (decoded as latin-1 off the wire) fit for a terminal: read as the
    UTF-8 it usually is, without C1 controls (0x9b alone starts an escape sequence)."""
    text = reason.encode("latin-1").decode("utf-8", "replace")
    return _C1_CONTROLS.sub("", text)


_C1_CONTROLS = re.compile("[\x80-\x9f]")


def response_framing(method: str, status: int, headers: Headers) -> tuple[Framing, int]:
    if method == "HEAD" or status in (204, 304) or 100 <= status < 200:
        return "none", 0
    codings = tokens(headers, "transfer-encoding")
    if codings:
        return ("chunked", 0) if codings[-1] == "chunked" else ("close", 0)
    length = content_length(headers)
    if length is None:
        return "close", 0
    return ("length", length) if length else ("none", 0)
