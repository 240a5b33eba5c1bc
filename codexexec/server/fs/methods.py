"""The `fs/*` methods of one connection: params in, Codex-shaped results or errors out.

Each operation runs in a worker thread, or in a sandboxed helper when the request's
`sandbox` restricts the file system (``sandboxed``, ``helpers``); handles, watches and
helpers belong to the connection and end with it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

from codexexec.protocol import fs_messages as f
from codexexec.protocol.base64_codec import Base64Error, decode_base64
from codexexec.protocol.jsonrpc import INVALID_REQUEST, RpcError
from codexexec.sandbox.floor import SandboxSettings
from codexexec.server.audit import NO_AUDIT, Auditor
from codexexec.server.fs import sandboxed
from codexexec.server.fs.handles import FileHandles
from codexexec.server.fs.helpers import SandboxedHelpers
from codexexec.server.fs.uris import native_path
from codexexec.server.fs.walk import WalkLimits
from codexexec.server.fs.watch import MissingWatches, Notify
from codexexec.server.fs.worker import OPENERS, OPERATIONS
from codexexec.server.os_errors import rpc_error

# Operations that only read: a sandbox that lets everything be read does not confine them.
_READS_ONLY = frozenset(
    {"read_file", "get_metadata", "canonicalize", "read_directory", "walk", "open_for_read"}
)


def _follow(flag: bool | None) -> bool:
    return flag is not False  # Codex follows symlinks unless told not to


class FileSystemMethods:
    def __init__(
        self,
        notify: Notify,
        settings: SandboxSettings = SandboxSettings(),
        audit: Auditor = NO_AUDIT,
    ) -> None:
        self._settings = settings
        self._audit = audit
        self._handles = FileHandles()
        self._watches = MissingWatches(notify)
        self._helpers = SandboxedHelpers()

    def handlers(self) -> dict[str, Callable[[Any], Awaitable[Any]]]:
        """By method name; the params types are ``fs_messages.METHOD_PARAMS``."""
        return {
            "fs/readFile": self._read_file,
            "fs/writeFile": self._write_file,
            "fs/createDirectory": self._create_directory,
            "fs/getMetadata": self._get_metadata,
            "fs/canonicalize": self._canonicalize,
            "fs/readDirectory": self._read_directory,
            "fs/walk": self._walk,
            "fs/remove": self._remove,
            "fs/copy": self._copy,
            "fs/open": self._open,
            "fs/readBlock": self._read_block,
            "fs/writeBlock": self._write_block,
            "fs/close": self._close,
            "fs/watchMissing": self._watch_missing,
        }

    def close(self) -> None:
        self._handles.close_all()
        self._watches.close()
        self._helpers.close()

    async def _run(self, sandbox: Any, op: str, **args: Any) -> Any:
        """Run one operation where the request's sandbox says it must run."""
        reads_only = op in _READS_ONLY
        if not reads_only and self._audit.enabled:
            return await self._audited(sandbox, op, args)
        return await self._dispatch(sandbox, op, args)

    async def _audited(self, sandbox: Any, op: str, args: dict[str, Any]) -> Any:
        paths = {k: str(v) for k, v in args.items() if k in ("path", "source", "destination")}
        try:
            result = await self._dispatch(sandbox, op, args)
        except RpcError as exc:
            self._audit.write(
                "fs.write", op=op, **paths, sandboxed=sandbox is not None, error=exc.code
            )
            raise
        self._audit.write("fs.write", op=op, **paths, sandboxed=sandbox is not None)
        return result

    async def _dispatch(self, sandbox: Any, op: str, args: dict[str, Any]) -> Any:
        reads_only = op in _READS_ONLY
        confined = sandboxed.confinement(sandbox, reads_only=reads_only)
        if self._settings.floor is not None and not reads_only:
            confined = sandboxed.at_floor(confined, sandbox, self._settings)
        if confined is not None:
            return await self._helpers.run(confined, op, args)
        function: Callable[..., Any] = OPENERS.get(op) or OPERATIONS[op]
        try:
            return await asyncio.to_thread(function, **args)
        except OSError as exc:
            raise rpc_error(exc) from None

    async def _read_file(self, p: f.ReadFileParams) -> Any:
        path = native_path(p.path)
        return await self._run(
            p.sandbox, "read_file", path=path, follow_symlinks=_follow(p.follow_symlinks)
        )

    async def _write_file(self, p: f.WriteFileParams) -> Any:
        try:
            data = decode_base64(p.data_base64)
        except Base64Error as exc:
            raise RpcError(
                INVALID_REQUEST, f"fs/writeFile requires valid base64 dataBase64: {exc}"
            ) from None
        path = native_path(p.path)
        return await self._run(
            p.sandbox,
            "write_file",
            path=path,
            data=data,
            follow_symlinks=_follow(p.follow_symlinks),
        )

    async def _create_directory(self, p: f.CreateDirectoryParams) -> Any:
        return await self._run(
            p.sandbox,
            "create_directory",
            path=native_path(p.path),
            recursive=p.recursive is not False,
            follow_symlinks=_follow(p.follow_symlinks),
        )

    async def _get_metadata(self, p: f.GetMetadataParams) -> Any:
        path = native_path(p.path)
        return await self._run(
            p.sandbox, "get_metadata", path=path, follow_symlinks=_follow(p.follow_symlinks)
        )

    async def _canonicalize(self, p: f.PathParams) -> Any:
        return await self._run(p.sandbox, "canonicalize", path=native_path(p.path))

    async def _read_directory(self, p: f.PathParams) -> Any:
        return await self._run(p.sandbox, "read_directory", path=native_path(p.path))

    async def _walk(self, p: f.WalkParams) -> Any:
        o = p.options
        limits = WalkLimits(
            o.max_depth,
            o.max_directories,
            o.max_entries,
            o.follow_directory_symlinks,
            o.prune_hidden_directories,
        )
        limits.check()
        return await self._run(p.sandbox, "walk", path=native_path(p.path), limits=limits)

    async def _remove(self, p: f.RemoveParams) -> Any:
        return await self._run(
            p.sandbox,
            "remove",
            path=native_path(p.path),
            recursive=p.recursive is not False,
            force=p.force is not False,
            follow_symlinks=_follow(p.follow_symlinks),
        )

    async def _copy(self, p: f.CopyParams) -> Any:
        return await self._run(
            p.sandbox,
            "copy",
            source=native_path(p.source_path),
            destination=native_path(p.destination_path),
            recursive=p.recursive,
        )

    async def _open(self, p: f.OpenParams) -> Any:
        self._handles.check_new(p.handle_id)
        opener = "open_for_read" if p.mode == "read" else "open_for_replace"
        fd = await self._run(p.sandbox, opener, path=native_path(p.path))
        return self._handles.add(p.handle_id, fd)

    async def _read_block(self, p: f.ReadBlockParams) -> Any:
        return await self._handles.read_block(p.handle_id, p.offset, p.len)

    async def _write_block(self, p: f.WriteBlockParams) -> Any:
        return await self._handles.write_block(p.handle_id, p.offset, p.data)

    async def _close(self, p: f.CloseParams) -> Any:
        return self._handles.close(p.handle_id)

    async def _watch_missing(self, p: f.WatchMissingParams) -> Any:
        missing = [native_path(uri) for uri in p.missing]
        present = native_path(p.present) if p.present is not None else None
        return self._watches.watch(p.watch_id, missing, present)
