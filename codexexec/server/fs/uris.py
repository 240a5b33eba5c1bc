"""PathUris of the filesystem methods turned into native paths of this host, and back."""

from __future__ import annotations

from codexexec.protocol.fs_messages import invalid_on_host
from codexexec.protocol.jsonrpc import INVALID_REQUEST, RpcError
from codexexec.protocol.path_uri import InvalidPathUri, PathUri


def native_path(text: str) -> str:
    """The host path of a decoded PathUri param; -32600 when it names none (Codex's text)."""
    try:
        return PathUri.parse(text).to_host_native_path()
    except InvalidPathUri:
        raise RpcError(INVALID_REQUEST, invalid_on_host(text)) from None


def path_uri(native: str) -> str:
    """The canonical PathUri of a native path of this host."""
    return PathUri.from_host_native_path(native).uri
