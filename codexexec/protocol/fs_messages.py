"""Typed params of the `fs/*` methods, as Codex 0.169.0 names, requires and defaults them.

Paths are PathUri strings. What Codex refuses while decoding (a relative or non-file
URI, a NUL) is refused here too, so it gets -32602 before the lifecycle gate, as in
Codex; a URI that names no path of this host is refused later (-32600) by the server.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, ClassVar, Literal
from urllib.parse import quote

import msgspec

from codexexec.protocol.base64_codec import Base64Error, decode_base64
from codexexec.protocol.jsonrpc import INVALID_PARAMS, RpcError

U64 = Annotated[int, msgspec.Meta(ge=0)]
# A FileSystemSandboxContext, parsed by the server as for process/start, or null.
Sandbox = Any

_SCHEME = re.compile(r"([A-Za-z][A-Za-z0-9+.\-]*):")
# What the URL parser Codex uses leaves unescaped when it prints a path back.
_URL_SAFE = "/%!$&'()*+,;=:@[]|^~-._"


def _url_text(text: str) -> str:
    match = _SCHEME.match(text)
    scheme = match.group(1).lower() if match else "file"
    rest = text[match.end() :] if match else text
    if rest.startswith("//") and "/" not in rest[2:]:
        rest += "/"  # a bare host gets the root path
    return f"{scheme}:{quote(rest, safe=_URL_SAFE)}"


def invalid_on_host(text: str) -> str:
    """Codex's words for a file URI that names no path of this (Linux) host."""
    return f"'{_url_text(text)}' is invalid on 'linux'"


def check_path_uri(text: str) -> None:
    """Refuse what Codex refuses while decoding a PathUri param."""
    match = _SCHEME.match(text)
    if match is None:
        raise RpcError(INVALID_PARAMS, "invalid URI: relative URL without a base")
    scheme = match.group(1).lower()
    if scheme != "file":
        raise RpcError(INVALID_PARAMS, f"unsupported path URI scheme `{scheme}`")
    if "\x00" in text or "%00" in text:
        raise RpcError(INVALID_PARAMS, invalid_on_host(text))


class _FsParams(msgspec.Struct, rename="camel"):
    # The fields holding PathUris, checked as they decode.
    _uri_fields: ClassVar[tuple[str, ...]] = ("path",)

    def __post_init__(self) -> None:
        for name in self._uri_fields:
            check_path_uri(getattr(self, name))


class ReadFileParams(_FsParams):
    path: str
    follow_symlinks: bool | None = None
    sandbox: Sandbox = None


class WriteFileParams(_FsParams):
    path: str
    data_base64: str
    follow_symlinks: bool | None = None
    sandbox: Sandbox = None


class CreateDirectoryParams(_FsParams):
    path: str
    recursive: bool | None = None
    follow_symlinks: bool | None = None
    sandbox: Sandbox = None


class GetMetadataParams(_FsParams):
    path: str
    follow_symlinks: bool | None = None
    sandbox: Sandbox = None


class PathParams(_FsParams):
    """fs/canonicalize and fs/readDirectory: a path and nothing else."""

    path: str
    sandbox: Sandbox = None


class WalkOptions(msgspec.Struct, rename="camel"):
    max_depth: U64
    max_directories: U64
    max_entries: U64
    follow_directory_symlinks: bool
    prune_hidden_directories: bool = False


class WalkParams(_FsParams):
    path: str
    options: WalkOptions
    sandbox: Sandbox = None


class RemoveParams(_FsParams):
    path: str
    recursive: bool | None = None
    force: bool | None = None
    follow_symlinks: bool | None = None
    sandbox: Sandbox = None


class CopyParams(_FsParams):
    _uri_fields = ("source_path", "destination_path")

    source_path: str
    destination_path: str
    recursive: bool
    sandbox: Sandbox = None


class OpenParams(_FsParams):
    handle_id: str
    path: str
    mode: Literal["read", "replace"] = "read"
    sandbox: Sandbox = None


class ReadBlockParams(_FsParams):
    _uri_fields = ()

    handle_id: str
    offset: U64
    len: U64


class WriteBlockParams(_FsParams, dict=True):
    _uri_fields = ()

    handle_id: str
    offset: U64
    chunk: str

    def __post_init__(self) -> None:
        try:
            # Decoded once, here, as Codex refuses bad base64 while decoding params.
            self.data = decode_base64(self.chunk)
        except Base64Error as exc:
            raise RpcError(INVALID_PARAMS, str(exc)) from None


class CloseParams(_FsParams):
    _uri_fields = ()

    handle_id: str


class WatchMissingParams(_FsParams):
    _uri_fields = ()

    watch_id: U64
    missing: list[str]
    present: str | None = None

    def __post_init__(self) -> None:
        for uri in [*self.missing, *([self.present] if self.present is not None else [])]:
            check_path_uri(uri)


# The params type of each `fs/*` method (the server decodes them before dispatching).
METHOD_PARAMS: dict[str, type[msgspec.Struct]] = {
    "fs/readFile": ReadFileParams,
    "fs/writeFile": WriteFileParams,
    "fs/createDirectory": CreateDirectoryParams,
    "fs/getMetadata": GetMetadataParams,
    "fs/canonicalize": PathParams,
    "fs/readDirectory": PathParams,
    "fs/walk": WalkParams,
    "fs/remove": RemoveParams,
    "fs/copy": CopyParams,
    "fs/open": OpenParams,
    "fs/readBlock": ReadBlockParams,
    "fs/writeBlock": WriteBlockParams,
    "fs/close": CloseParams,
    "fs/watchMissing": WatchMissingParams,
}
