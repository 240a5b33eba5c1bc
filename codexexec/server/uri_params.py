"""PathUri params (cwd, paths) turned into native paths, refused in Codex's words."""

from __future__ import annotations

from codexexec.protocol.fs_messages import invalid_on_host
from codexexec.protocol.jsonrpc import INVALID_PARAMS, RpcError
from codexexec.protocol.path_uri import InvalidPathUri, PathUri


def host_path(text: str, *, field: str) -> str:
    """The native path for the PathUri ``text`` of param ``field``, or a -32602 RpcError."""
    scheme, colon, _ = text.partition(":")
    if not colon or "/" in scheme or not scheme:
        raise RpcError(INVALID_PARAMS, "invalid URI: relative URL without a base")
    if scheme.lower() != "file":
        raise RpcError(INVALID_PARAMS, f"unsupported path URI scheme `{scheme}`")
    if "\0" in text or "%00" in text:
        raise RpcError(INVALID_PARAMS, invalid_on_host(text))
    try:
        return PathUri.parse(text).to_host_native_path()
    except InvalidPathUri as exc:
        raise RpcError(
            INVALID_PARAMS, f"{field} URI `{text}` is not valid on this exec-server host: {exc}"
        ) from None
