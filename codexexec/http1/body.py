"""Reading one HTTP/1.1 message body without I/O, in the manner of h11's readers: the reader
says what to read next (a line, so many bytes exactly, or whatever arrives), takes what was
read, and returns the bytes to forward. The proxy's loop does the reading and writing, so
every framing decision — chunk sizes, their CRLFs, the trailer's bound — is here and
tested without sockets. The registry client decodes with it too (``in_payload``).
"""

from __future__ import annotations

import re
from typing import Literal

import msgspec

from codexexec.http1.errors import Http1Error

# What one read asks for at most.
READ_CHUNK = 256 * 1024
MAX_CHUNK_LINE = 4096  # chunk-size line incl. extensions
MAX_TRAILER_BYTES = 64 * 1024

_CHUNK_SIZE = re.compile(rb"[0-9A-Fa-f]{1,15}")

Framing = Literal["none", "length", "chunked", "close"]


class BodyError(Http1Error, ValueError):
    """The body does not follow its framing (a malformed chunk, a short read, too large)."""


class Need(msgspec.Struct, frozen=True):
    """``line``: up to and including CRLF, at most ``limit`` bytes; ``exactly``: ``limit``
    bytes; ``some``: 1..``limit`` bytes, b"" at the end of the connection."""

    kind: Literal["line", "exactly", "some"]
    limit: int


class BodyReader:
    def __init__(self, framing: Framing, length: int = 0) -> None:
        self._framing = framing
        self._remaining = length if framing == "length" else 0
        # chunked: "size" line, chunk "data", its "crlf", "trailer" lines; "done" at the end
        self._state = "size" if framing == "chunked" else "data"
        self._trailer_bytes = 0
        if framing == "none" or (framing == "length" and length == 0):
            self._state = "done"

    @property
    def in_payload(self) -> bool:
        """What ``feed`` returns next is the body's own bytes (not chunk framing)."""
        return self._state == "data"

    def need(self) -> Need | None:
        """What to read next; None once the body is complete."""
        state = self._state
        if state == "done":
            return None
        if state in ("size", "trailer"):
            return Need("line", MAX_CHUNK_LINE)
        if state == "crlf":
            return Need("exactly", 2)
        if self._framing == "close":
            return Need("some", READ_CHUNK)
        return Need("some", min(READ_CHUNK, self._remaining))

    def feed(self, data: bytes) -> bytes:
        """Take what ``need`` asked for; return the bytes to forward."""
        state = self._state
        if state == "data":
            if not data:
                if self._framing == "close":
                    self._state = "done"
                    return b""
                raise BodyError("connection closed inside the body")
            if self._framing != "close":
                self._remaining -= len(data)
                if self._remaining < 0:
                    raise BodyError("more body bytes than asked for")
                if self._remaining == 0:
                    self._state = "crlf" if self._framing == "chunked" else "done"
            return data
        if state == "size":
            size_text = data[:-2].split(b";", 1)[0].strip(b" \t")
            if not data.endswith(b"\r\n") or not _CHUNK_SIZE.fullmatch(size_text):
                raise BodyError("malformed chunk size")
            size = int(size_text, 16)
            if size == 0:
                self._state = "trailer"
            else:
                self._remaining, self._state = size, "data"
            return data
        if state == "crlf":
            if data != b"\r\n":
                raise BodyError("chunk not followed by CRLF")
            self._state = "size"
            return data
        if state == "trailer":
            self._trailer_bytes += len(data)
            if self._trailer_bytes > MAX_TRAILER_BYTES:
                raise BodyError("trailer section too large")
            if data == b"\r\n":
                self._state = "done"
            return data
        raise BodyError("the body is complete")
