"""PathUri: a host-independent identity for a path on an executor host.

The executor may be a different machine from the controller, possibly with a
different path convention (a Linux controller driving a Windows executor).  Every
path on the wire is therefore a canonical ``file:`` URI rather than a native path
string; only the executor turns it into a native path, and only when the URI's
inferred convention is its own.

Canonical form (what ``PathUri.uri`` holds):

* ``file:///seg/seg`` for POSIX paths, ``file:///C:/seg`` for Windows drive paths
  and ``file://host/share/seg`` for Windows UNC paths.  The scheme is lowercase,
  ``localhost`` is dropped, a UNC host is lowercased and a drive letter uppercased.
* Segments are percent-encoded with uppercase hex.  Controls, space, non-ASCII
  bytes and ``" # % / < > ? \\ ^ ` { }`` are encoded; every other printable ASCII
  byte is literal.  Escapes of literal characters are decoded (``%41`` is ``A``).
* ``.`` segments (also ``%2E``) and empty segments are dropped; ``..`` pops one
  segment but never the anchor (``/``, a drive ``C:`` or a UNC share).  A
  trailing slash is dropped: the drive root is ``file:///C:``.
* Paths that cannot be written this way (NUL bytes, Windows ``\\\\?\\`` and
  ``\\\\.\\`` prefixes, invalid UNC hosts, a POSIX path whose first component
  looks like a drive letter) use the opaque namespace
  ``file:///%00/bad/path/<base64url without padding of the raw bytes>``: POSIX
  bytes, or UTF-16LE for Windows.  The encoded NUL keeps it from colliding with
  a real path.  Opaque URIs have no parent or basename and reject joins.

Native paths are turned into URIs lexically (``/a/b/../c`` becomes
``file:///a/c``), like URL parsing does; nothing touches the file system.
"""

from __future__ import annotations

import base64
import binascii
import enum
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Final, TypeAlias
from urllib.parse import quote_from_bytes, unquote_to_bytes

from codexexec.protocol.errors import ProtocolError

__all__ = ["InvalidPathUri", "PathConvention", "PathUri", "encode_segment"]


class InvalidPathUri(ProtocolError, ValueError):
    """Text is not a valid PathUri, or a path conversion/operation is not possible."""


class PathConvention(enum.Enum):
    """How a path is written on some host."""

    POSIX = "posix"
    WINDOWS = "windows"

    @classmethod
    def native(cls) -> PathConvention:
        """The convention of the host this process runs on."""
        return cls.WINDOWS if os.name == "nt" else cls.POSIX

    def path_segments(self, text: str) -> list[str]:
        """The non-empty segments of ``text``, split on ``/`` (and ``\\`` on Windows)."""
        parts = _WIN_SEP_RE.split(text) if self is PathConvention.WINDOWS else text.split("/")
        return [part for part in parts if part]


_POSIX: Final = PathConvention.POSIX
_WINDOWS: Final = PathConvention.WINDOWS

# Printable ASCII kept literal in a segment besides the always-safe ``A-Za-z0-9-._~``.
_SAFE: Final = "!$&'()*+,;=:@[]|"
_SEG_CHARS: Final = r"[A-Za-z0-9\-._~!$&'()*+,;=:@\[\]|]"
_FAST_SEG: Final = r"(?!\.\.?(?:/|\Z))" + _SEG_CHARS + "+"
# A URI that is already canonical, POSIX and needs no decoding: no escapes, no empty,
# ``.`` or ``..`` segments, no trailing slash, first segment not a drive letter.
_FAST_RE: Final = re.compile(
    r"file:///(?![A-Za-z]:(?:/|\Z))" + _FAST_SEG + "(?:/" + _FAST_SEG + ")*"
)

_SCHEME_RE: Final = re.compile(r"([A-Za-z][A-Za-z0-9+.\-]*):")
_CONTROL_RE: Final = re.compile(r"[\x00-\x1f\x7f]")
_BAD_PERCENT_RE: Final = re.compile(r"%(?![0-9A-Fa-f]{2})")
_DRIVE_RE: Final = re.compile(r"[A-Za-z]:\Z")
_HOST_RE: Final = re.compile(r"[a-z0-9_\-]+(?:\.[a-z0-9_\-]+)*\Z")
_B64_RE: Final = re.compile(r"[A-Za-z0-9_\-]+\Z")
_WIN_SEP_RE: Final = re.compile(r"[\\/]")
_WIN_SEPS: Final = "\\/"

_OPAQUE_PREFIX: Final = "file:///%00/bad/path/"
_MAX_QUOTED: Final = 200

# convention, host, encoded segments, opaque payload
_Parts: TypeAlias = tuple[PathConvention, str, tuple[str, ...], bytes | None]


def _q(text: str | bytes) -> str:
    """Quote user input for an error message."""
    if isinstance(text, bytes):
        text = text.decode("utf-8", "backslashreplace")
    if len(text) > _MAX_QUOTED:
        text = text[:_MAX_QUOTED] + "…"
    return f"`{text}`"


def _encode_segment(raw: bytes) -> str:
    return quote_from_bytes(raw, _SAFE)


def encode_segment(name: bytes) -> str:
    """A file name (raw bytes) as one canonical PathUri segment, for building child URIs."""
    return _encode_segment(name)


def _b64encode(payload: bytes) -> str:
    return base64.urlsafe_b64encode(payload).rstrip(b"=").decode("ascii")


def _b64decode_canonical(text: str) -> bytes | None:
    if not _B64_RE.match(text) or len(text) % 4 == 1:
        return None
    try:
        payload = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (binascii.Error, ValueError):
        return None
    # Reject non-zero trailing bits so that each payload has exactly one spelling.
    return payload if _b64encode(payload) == text else None


def _opaque_convention(payload: bytes) -> PathConvention | None:
    if payload[:1] == b"/":
        return _POSIX
    if len(payload) >= 4 and payload[1] == 0 and payload[3] == 0:
        first, second = chr(payload[0]), chr(payload[2])
        if (first.isascii() and first.isalpha() and second == ":") or first == second == "\\":
            return _WINDOWS
    return None


def _render(parts: _Parts) -> str:
    _, host, segments, opaque = parts
    if opaque is not None:
        return _OPAQUE_PREFIX + _b64encode(opaque)
    if host:
        return f"file://{host}/" + "/".join(segments)
    return "file:///" + "/".join(segments)


def _push(out: list[str], segment: bytes, anchor: int) -> None:
    """Append one decoded segment lexically: skip empty and ``.``, pop on ``..``."""
    if not segment or segment == b".":
        return
    if segment == b"..":
        if len(out) > anchor:
            out.pop()
        return
    out.append(_encode_segment(segment))


# --------------------------------------------------------------------------- parsing


def _parse(text: str) -> tuple[str, _Parts]:
    if text == "file:///":
        return text, (_POSIX, "", (), None)
    if _FAST_RE.fullmatch(text):
        return text, (_POSIX, "", tuple(text[8:].split("/")), None)
    if not text:
        raise InvalidPathUri("expected a file URI, got an empty string")
    match = _SCHEME_RE.match(text)
    if match is None or len(match.group(1)) == 1:
        absolute = match is not None or text.startswith(("/", "\\"))
        kind = "native path" if absolute else "relative path"
        raise InvalidPathUri(f"expected a file URI, got {kind} {_q(text)}")
    scheme = match.group(1)
    if scheme.lower() != "file":
        raise InvalidPathUri(
            f"unsupported URI scheme `{scheme}:` in {_q(text)}; expected a `file:` URI"
        )
    if _CONTROL_RE.search(text):
        raise InvalidPathUri(f"file URI {_q(text)} contains a control character")
    # Like URL parsers, treat a backslash in a file URI as a slash.
    rest = text[match.end() :].replace("\\", "/")
    query, fragment = rest.find("?"), rest.find("#")
    if fragment >= 0 and (query < 0 or fragment < query):
        raise InvalidPathUri(f"file URI {_q(text)} must not have a fragment")
    if query >= 0:
        raise InvalidPathUri(f"file URI {_q(text)} must not have a query")

    host = ""
    if rest.startswith("//"):
        end = rest.find("/", 2)
        authority, path = (rest[2:], "/") if end < 0 else (rest[2:end], rest[end:])
        host = _parse_host(authority, text)
    else:
        path = rest
        if not path.startswith("/"):
            raise InvalidPathUri(f"file URI {_q(text)} does not have an absolute path")

    raw_segments = path.split("/")[1:]
    if raw_segments and raw_segments[0] == "%00":
        parts = _parse_opaque(raw_segments, host, text)
        return _render(parts), parts

    out: list[str] = []
    for raw in raw_segments:
        if _BAD_PERCENT_RE.search(raw):
            raise InvalidPathUri(f"file URI {_q(text)} has an invalid percent-escape")
        try:
            segment = unquote_to_bytes(raw)
        except UnicodeEncodeError:
            raise InvalidPathUri(f"file URI {_q(text)} contains unencodable characters") from None
        if b"\x00" in segment:
            raise InvalidPathUri(f"file URI {_q(text)} contains an encoded NUL")
        anchor = 1 if host or (out and _DRIVE_RE.match(out[0])) else 0
        _push(out, segment, anchor)
        if len(out) == 1 and not host and _DRIVE_RE.match(out[0]):
            out[0] = out[0].upper()

    if host:
        if not out:
            raise InvalidPathUri(f"UNC file URI {_q(text)} has no share name")
        parts = (_WINDOWS, host, tuple(out), None)
    elif out and _DRIVE_RE.match(out[0]):
        parts = (_WINDOWS, "", tuple(out), None)
    else:
        parts = (_POSIX, "", tuple(out), None)
    return _render(parts), parts


def _parse_host(authority: str, text: str) -> str:
    if "@" in authority:
        raise InvalidPathUri(f"file URI {_q(text)} must not contain credentials")
    if authority.startswith("["):
        raise InvalidPathUri(f"file URI {_q(text)} has an IP-literal host, which is not supported")
    if ":" in authority:
        raise InvalidPathUri(f"file URI {_q(text)} must not have a port")
    host = authority.lower()
    if host == "localhost":
        return ""
    if host and not (host.isascii() and _HOST_RE.match(host)):
        raise InvalidPathUri(f"file URI {_q(text)} has an invalid host `{authority}`")
    return host


def _parse_opaque(raw_segments: list[str], host: str, text: str) -> _Parts:
    if host or len(raw_segments) != 4 or raw_segments[1:3] != ["bad", "path"]:
        raise InvalidPathUri(
            f"file URI {_q(text)} contains an encoded NUL outside `{_OPAQUE_PREFIX}…`"
        )
    payload = _b64decode_canonical(raw_segments[3])
    if payload is None:
        raise InvalidPathUri(f"opaque file URI {_q(text)} has an invalid base64url payload")
    convention = _opaque_convention(payload)
    if convention is None:
        raise InvalidPathUri(f"opaque file URI {_q(text)} does not encode an absolute path")
    return (convention, "", (), payload)


# ------------------------------------------------------------------ native paths


def _posix_encode(text: str) -> bytes:
    """``str`` to POSIX path bytes: the file system encoding on a POSIX host."""
    try:
        if PathConvention.native() is _POSIX:
            return os.fsencode(text)
        return text.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:
        raise InvalidPathUri(f"path {_q(text)} cannot be encoded as bytes") from None


def _posix_parts(raw: bytes, shown: str | bytes) -> _Parts:
    if not raw.startswith(b"/"):
        raise InvalidPathUri(f"path {_q(shown)} is not absolute")
    if b"\x00" in raw:
        return (_POSIX, "", (), raw)
    out: list[str] = []
    for segment in raw.split(b"/"):
        _push(out, segment, 0)
    if out and _DRIVE_RE.match(out[0]):
        # ``file:///C:/…`` would be read back as a Windows drive path.
        normalized = b"/" + b"/".join(unquote_to_bytes(seg) for seg in out)
        return (_POSIX, "", (), normalized)
    return (_POSIX, "", tuple(out), None)


def _windows_opaque(text: str) -> _Parts:
    if len(text) >= 2 and text[0] in _WIN_SEPS and text[1] in _WIN_SEPS:
        # Keep the payload's prefix recognisable as Windows (``//`` would look POSIX).
        text = "\\\\" + text[2:]
    return (_WINDOWS, "", (), text.encode("utf-16-le", "surrogatepass"))


def _windows_anchor(text: str) -> tuple[str, list[str], str] | None:
    """Split an absolute Windows path into (host, anchor segments, rest); None if opaque.

    Raises InvalidPathUri when the path is not absolute.
    """
    if len(text) >= 2 and text[0] in _WIN_SEPS and text[1] in _WIN_SEPS:
        if len(text) >= 4 and text[2] in "?." and text[3] in _WIN_SEPS:
            return None  # \\?\ verbatim and \\.\ device paths
        pieces = _WIN_SEP_RE.split(text[2:], maxsplit=2)
        server = pieces[0].lower()
        share = pieces[1] if len(pieces) > 1 else ""
        if (
            not server.isascii()
            or not _HOST_RE.match(server)
            or server == "localhost"
            or share in ("", ".", "..")
        ):
            return None
        try:
            share_segment = _encode_segment(share.encode("utf-8"))
        except UnicodeEncodeError:
            return None
        return server, [share_segment], pieces[2] if len(pieces) > 2 else ""
    if len(text) >= 3 and _DRIVE_RE.match(text[:2]) and text[2] in _WIN_SEPS:
        return "", [text[0].upper() + ":"], text[3:]
    raise InvalidPathUri(f"path {_q(text)} is not absolute")


def _windows_parts(text: str) -> _Parts:
    if "\x00" in text:
        return _windows_opaque(text)
    anchored = _windows_anchor(text)
    if anchored is None:
        return _windows_opaque(text)
    host, out, rest = anchored
    try:
        for segment in _WIN_SEP_RE.split(rest):
            _push(out, segment.encode("utf-8"), 1)
    except UnicodeEncodeError:
        return _windows_opaque(text)
    return (_WINDOWS, host, tuple(out), None)


def _windows_text(path: str | bytes) -> str:
    if isinstance(path, str):
        return path
    try:
        return path.decode("utf-8", "surrogatepass")
    except UnicodeDecodeError:
        raise InvalidPathUri(f"path {_q(path)} is not valid UTF-8") from None


# ------------------------------------------------------------------------ PathUri


class _PathUriState:
    """Parsed form of a PathUri, kept out of the dataclass fields (eq/hash/repr use ``uri``)."""

    __slots__ = ("_convention", "_host", "_opaque", "_segments")

    _convention: PathConvention
    _host: str
    _segments: tuple[str, ...]
    _opaque: bytes | None


@dataclass(frozen=True, slots=True)
class PathUri(_PathUriState):
    """An immutable, canonical ``file:`` URI naming a path on some executor host.

    ``PathUri(text)`` and ``PathUri.parse(text)`` validate and canonicalize ``text``;
    equality and hashing compare the canonical URI.
    """

    uri: str

    def __post_init__(self) -> None:
        text = self.uri
        if not isinstance(text, str):
            raise InvalidPathUri(f"expected a file URI string, got {type(text).__name__}")
        uri, parts = _parse(str(text))
        self._assign(uri, parts)

    def _assign(self, uri: str, parts: _Parts) -> None:
        setattr_ = object.__setattr__
        setattr_(self, "uri", uri)
        setattr_(self, "_convention", parts[0])
        setattr_(self, "_host", parts[1])
        setattr_(self, "_segments", parts[2])
        setattr_(self, "_opaque", parts[3])

    @classmethod
    def _from_parts(cls, parts: _Parts) -> PathUri:
        self = object.__new__(cls)
        self._assign(_render(parts), parts)
        return self

    def __reduce__(self) -> tuple[type[PathUri], tuple[str]]:
        return (type(self), (self.uri,))

    def __str__(self) -> str:
        return self.uri

    # ----------------------------------------------------------- constructors

    @classmethod
    def parse(cls, text: str) -> PathUri:
        """Parse a ``file:`` URI; native paths and other schemes raise InvalidPathUri."""
        return cls(text)

    @classmethod
    def from_host_native_path(
        cls, path: str | bytes | os.PathLike[str] | os.PathLike[bytes]
    ) -> PathUri:
        """The URI of an absolute native path of this host; relative paths raise."""
        return cls.from_native_path(path, PathConvention.native())

    @classmethod
    def from_native_path(
        cls,
        path: str | bytes | os.PathLike[str] | os.PathLike[bytes],
        convention: PathConvention,
    ) -> PathUri:
        """The URI of an absolute native path written in ``convention``.

        Unrepresentable paths give the opaque ``file:///%00/bad/path/…`` form.
        """
        value = os.fspath(path)
        if convention is _POSIX:
            raw = value if isinstance(value, bytes) else _posix_encode(value)
            return cls._from_parts(_posix_parts(raw, value))
        return cls._from_parts(_windows_parts(_windows_text(value)))

    # -------------------------------------------------------------- accessors

    @property
    def convention(self) -> PathConvention:
        """The convention inferred from the URI (host or drive letter → Windows)."""
        return self._convention

    @property
    def is_opaque(self) -> bool:
        """True for the ``file:///%00/bad/path/…`` fallback form."""
        return self._opaque is not None

    @property
    def basename(self) -> str | None:
        """The percent-decoded last segment; None for roots and opaque URIs.

        Undecodable bytes are kept as surrogate escapes.
        """
        if self._opaque is not None or len(self._segments) <= self._anchor():
            return None
        return unquote_to_bytes(self._segments[-1]).decode("utf-8", "surrogateescape")

    def _anchor(self) -> int:
        return 0 if self._convention is _POSIX else 1

    # ------------------------------------------------------- native rendering

    def to_host_native_path(self) -> str:
        """The native path on this host; raises if the URI uses another convention.

        On POSIX, undecodable bytes come back as ``os.fsdecode`` surrogate escapes.
        """
        if self._check_host() is _POSIX:
            return os.fsdecode(self._posix_bytes())
        return self._windows_path()

    def to_host_native_bytes(self) -> bytes:
        """Like :meth:`to_host_native_path`, as bytes (``os.fsencode`` on Windows)."""
        if self._check_host() is _POSIX:
            return self._posix_bytes()
        return os.fsencode(self._windows_path())

    def inferred_native_path(self) -> str:
        """For display: the path in its inferred convention on any host.

        Falls back to the URI for opaque URIs and paths that cannot be rendered.
        """
        if self._opaque is not None:
            return self.uri
        try:
            if self._convention is _WINDOWS:
                return self._windows_path()
            if PathConvention.native() is _POSIX:
                return os.fsdecode(self._posix_bytes())
            return self._posix_bytes().decode("utf-8", "surrogateescape")
        except InvalidPathUri:
            return self.uri

    def _check_host(self) -> PathConvention:
        host = PathConvention.native()
        if self._convention is not host:
            raise InvalidPathUri(
                f"{_q(self.uri)} is a {self._convention.value} path and is not valid "
                f"on this {host.value} host"
            )
        return host

    def _posix_bytes(self) -> bytes:
        if self._opaque is not None:
            return self._opaque
        decoded = [unquote_to_bytes(segment) for segment in self._segments]
        if any(b"/" in segment for segment in decoded):
            raise InvalidPathUri(f"{_q(self.uri)} has a segment containing an encoded `/`")
        return b"/" + b"/".join(decoded)

    def _windows_path(self) -> str:
        if self._opaque is not None:
            return self._opaque.decode("utf-16-le", "surrogatepass")
        try:
            decoded = [unquote_to_bytes(s).decode("utf-8") for s in self._segments]
        except UnicodeDecodeError:
            raise InvalidPathUri(f"{_q(self.uri)} has a segment that is not UTF-8") from None
        if any("/" in segment or "\\" in segment for segment in decoded):
            raise InvalidPathUri(f"{_q(self.uri)} has a segment containing an encoded separator")
        if self._host:
            return f"\\\\{self._host}\\" + "\\".join(decoded)
        return decoded[0] + "\\" + "\\".join(decoded[1:])

    # ----------------------------------------------------- lexical operations

    def parent(self) -> PathUri | None:
        """The lexical parent; None at ``/``, a drive root, a UNC share root or opaque."""
        if self._opaque is not None or len(self._segments) <= self._anchor():
            return None
        return self._from_parts((self._convention, self._host, self._segments[:-1], None))

    def ancestors(self) -> Iterator[PathUri]:
        """This URI, then each parent up to the root."""
        current: PathUri | None = self
        while current is not None:
            yield current
            current = current.parent()

    def starts_with(self, base: PathUri) -> bool:
        """Whether ``base`` is this path or one of its lexical ancestors.

        Compares host and whole segments.  Fails closed (False) when a segment
        decodes to contain a separator, and for opaque URIs other than equality.
        """
        if self._opaque is not None or base._opaque is not None:
            return self == base
        if self._convention is not base._convention or self._host != base._host:
            return False
        count = len(base._segments)
        if self._segments[:count] != base._segments:
            return False
        # Canonical escapes are uppercase and the host holds no ``%``.
        if "%2F" in self.uri:
            return False
        return not (self._convention is _WINDOWS and "%5C" in self.uri)

    def join(self, text: str) -> PathUri:
        """Resolve native path text against this URI, lexically.

        An absolute path (in this URI's convention) replaces the path; on Windows a
        root-relative ``\\x`` keeps the drive or share and a drive-relative ``C:x``
        is rejected.  ``.`` and empty segments are ignored and ``..`` never leaves
        the anchor.  NUL is rejected.
        """
        if self._opaque is not None:
            raise InvalidPathUri(f"cannot join {_q(text)} onto opaque path URI {_q(self.uri)}")
        if "\x00" in text:
            raise InvalidPathUri(f"cannot join path {_q(text)} containing NUL")
        posix = self._convention is _POSIX
        parts = self._join_posix(text) if posix else self._join_windows(text)
        if parts[3] is not None:
            raise InvalidPathUri(f"joined path {_q(text)} cannot be represented as a file URI")
        return self._from_parts(parts)

    def _join_posix(self, text: str) -> _Parts:
        raw = _posix_encode(text)
        if raw.startswith(b"/"):
            return _posix_parts(raw, text)
        out = list(self._segments)
        for segment in raw.split(b"/"):
            _push(out, segment, 0)
        if out and _DRIVE_RE.match(out[0]):
            raise InvalidPathUri(
                f"joining {_q(text)} onto {_q(self.uri)} would name a Windows drive"
            )
        return (_POSIX, "", tuple(out), None)

    def _join_windows(self, text: str) -> _Parts:
        if len(text) >= 2 and _DRIVE_RE.match(text[:2]):
            if len(text) == 2 or text[2] not in _WIN_SEPS:
                raise InvalidPathUri(f"cannot join drive-relative path {_q(text)}")
            return _windows_parts(text)
        if len(text) >= 2 and text[0] in _WIN_SEPS and text[1] in _WIN_SEPS:
            return _windows_parts(text)
        anchor = 1
        out = list(self._segments[:anchor] if text[:1] in ("\\", "/") else self._segments)
        try:
            for segment in _WIN_SEP_RE.split(text):
                _push(out, segment.encode("utf-8"), anchor)
        except UnicodeEncodeError:
            raise InvalidPathUri(f"path {_q(text)} is not valid Unicode") from None
        return (_WINDOWS, self._host, tuple(out), None)
