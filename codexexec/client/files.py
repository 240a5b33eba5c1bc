"""Files on the executor: the `fs/*` methods, typed.

    data = await client.files.read("/etc/hostname")
    await client.files.write("/tmp/x", b"hello")
    for entry in (await client.files.walk("/srv/repo")).entries:
        print(entry.path, entry.kind)
    async with await client.files.open("/var/log/big.log") as reader:
        async for chunk in reader.chunks():
            ...

Paths are absolute paths on the executor host (or ``file://`` URIs); results carry
the executor's paths. Large files stream in 1 MiB blocks with a few requests in flight,
so a transfer is not one request per round trip.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Any, Literal

from codexexec.client.closing import AsyncClosing
from codexexec.client.errors import ExecServerError
from codexexec.protocol.base64_codec import decode_base64, encode_base64
from codexexec.protocol.limits import FS_MAX_BLOCK_BYTES
from codexexec.protocol.path_uri import InvalidPathUri, PathConvention, PathUri

Call = Callable[[str, Any], Awaitable[Any]]
# Block requests kept in flight by a streamed transfer: enough to hide the round trip.
BLOCKS_IN_FLIGHT = 4


@dataclass(frozen=True, slots=True)
class FileMetadata:
    is_directory: bool
    is_file: bool
    is_symlink: bool
    size: int
    created_at_ms: int
    modified_at_ms: int


@dataclass(frozen=True, slots=True)
class DirectoryEntry:
    name: str
    is_directory: bool
    is_file: bool


@dataclass(frozen=True, slots=True)
class WalkEntry:
    path: str
    kind: Literal["directory", "file"]


@dataclass(frozen=True, slots=True)
class WalkError:
    path: str
    message: str


@dataclass(frozen=True, slots=True)
class WalkResult:
    entries: list[WalkEntry]
    errors: list[WalkError]
    truncated: bool


def _native(uri: str) -> str:
    try:
        return PathUri.parse(uri).inferred_native_path()
    except InvalidPathUri:
        return uri


class RemoteFile(AsyncClosing):
    """An open file on the executor (``fs/open``); close it, or use ``async with``."""

    def __init__(self, call: Call, handle_id: str, path: str) -> None:
        self._call = call
        self.handle_id = handle_id
        self.path = path
        self._closed = False

    async def read_block(self, offset: int, length: int = FS_MAX_BLOCK_BYTES) -> tuple[bytes, bool]:
        """Up to ``length`` bytes at ``offset``, and whether the read came up short (EOF)."""
        params = {"handleId": self.handle_id, "offset": offset, "len": length}
        result = await self._call("fs/readBlock", params)
        return decode_base64(result["chunk"]), bool(result["eof"])

    async def chunks(self, offset: int = 0) -> AsyncIterator[bytes]:
        """The file from ``offset`` to its end, in order, with reads kept in flight."""
        pending: list[asyncio.Task[tuple[bytes, bool]]] = []
        next_offset = offset
        try:
            while True:
                while len(pending) < BLOCKS_IN_FLIGHT:
                    pending.append(asyncio.ensure_future(self.read_block(next_offset)))
                    next_offset += FS_MAX_BLOCK_BYTES
                data, eof = await pending.pop(0)
                if data:
                    yield data
                if eof:
                    return
        finally:
            for task in pending:
                task.cancel()
            for task in pending:
                with contextlib.suppress(asyncio.CancelledError, ExecServerError):
                    await task

    async def write_block(self, offset: int, data: bytes) -> None:
        params = {"handleId": self.handle_id, "offset": offset, "chunk": encode_base64(data)}
        await self._call("fs/writeBlock", params)

    async def write_all(
        self,
        blocks: Iterable[bytes],
        offset: int = 0,
        on_written: Callable[[int], None] | None = None,
    ) -> int:
        """Write ``blocks`` (each at most 1 MiB) one after another; returns the end offset.

        ``on_written`` hears the size of each block once the executor has written it.
        """

        async def write(at: int, block: bytes) -> None:
            await self.write_block(at, block)
            if on_written is not None:
                on_written(len(block))

        in_flight: set[asyncio.Task[None]] = set()
        try:
            for block in blocks:
                if len(in_flight) >= BLOCKS_IN_FLIGHT:
                    done, in_flight = await asyncio.wait(
                        in_flight, return_when=asyncio.FIRST_COMPLETED
                    )
                    for task in done:
                        task.result()
                in_flight.add(asyncio.ensure_future(write(offset, block)))
                offset += len(block)
            for task in in_flight:
                await task
        finally:
            for task in in_flight:
                task.cancel()
        return offset

    async def close(self) -> None:
        if not self._closed:
            self._closed = True
            await self._call("fs/close", {"handleId": self.handle_id})


class RemoteFiles:
    def __init__(self, call: Call, convention: Callable[[], PathConvention]) -> None:
        self._call = call
        self._convention = convention
        self._ids = itertools.count(1)
        self._prefix = uuid.uuid4().hex[:8]
        self._watch_ids = itertools.count(1)
        self._watches: dict[int, asyncio.Event] = {}

    def uri(self, path: str) -> str:
        """The PathUri of an absolute executor path (a ``file:`` URI is taken as it is)."""
        if path.startswith("file:"):
            return path
        try:
            return PathUri.from_native_path(path, self._convention()).uri
        except InvalidPathUri:
            raise ExecServerError(
                f"path `{path}` must be an absolute path on the executor host"
            ) from None

    async def _path_call(self, method: str, path: str, **params: Any) -> Any:
        return await self._call(method, {"path": self.uri(path), **params})

    async def read(self, path: str, *, follow_symlinks: bool = True) -> bytes:
        result = await self._path_call("fs/readFile", path, followSymlinks=follow_symlinks)
        return decode_base64(result["dataBase64"])

    async def write(self, path: str, data: bytes, *, follow_symlinks: bool = True) -> None:
        params = {"dataBase64": encode_base64(data), "followSymlinks": follow_symlinks}
        await self._path_call("fs/writeFile", path, **params)

    async def create_directory(self, path: str, *, recursive: bool = True) -> None:
        await self._path_call("fs/createDirectory", path, recursive=recursive)

    async def metadata(self, path: str, *, follow_symlinks: bool = True) -> FileMetadata:
        m = await self._path_call("fs/getMetadata", path, followSymlinks=follow_symlinks)
        return FileMetadata(
            bool(m["isDirectory"]),
            bool(m["isFile"]),
            bool(m["isSymlink"]),
            int(m["size"]),
            int(m["createdAtMs"]),
            int(m["modifiedAtMs"]),
        )

    async def canonicalize(self, path: str) -> str:
        return _native((await self._path_call("fs/canonicalize", path))["path"])

    async def list_directory(self, path: str) -> list[DirectoryEntry]:
        result = await self._path_call("fs/readDirectory", path)
        return [
            DirectoryEntry(e["fileName"], bool(e["isDirectory"]), bool(e["isFile"]))
            for e in result["entries"]
        ]

    async def walk(
        self,
        path: str,
        *,
        max_depth: int = 64,
        max_directories: int = 10_000,
        max_entries: int = 50_000,
        follow_directory_symlinks: bool = False,
        prune_hidden_directories: bool = False,
    ) -> WalkResult:
        options = {
            "maxDepth": max_depth,
            "maxDirectories": max_directories,
            "maxEntries": max_entries,
            "followDirectorySymlinks": follow_directory_symlinks,
            "pruneHiddenDirectories": prune_hidden_directories,
        }
        result = await self._path_call("fs/walk", path, options=options)
        return WalkResult(
            [WalkEntry(_native(e["path"]), e["kind"]) for e in result["entries"]],
            [WalkError(_native(e["path"]), e["message"]) for e in result["errors"]],
            bool(result["truncated"]),
        )

    async def remove(self, path: str, *, recursive: bool = True, force: bool = True) -> None:
        await self._path_call("fs/remove", path, recursive=recursive, force=force)

    async def copy(self, source: str, destination: str, *, recursive: bool = False) -> None:
        params = {
            "sourcePath": self.uri(source),
            "destinationPath": self.uri(destination),
            "recursive": recursive,
        }
        await self._call("fs/copy", params)

    async def open(self, path: str, *, mode: Literal["read", "replace"] = "read") -> RemoteFile:
        """Open for streamed reads, or (``replace``) for writing it anew from empty."""
        handle_id = f"{self._prefix}-{next(self._ids)}"
        await self._path_call("fs/open", path, handleId=handle_id, mode=mode)
        return RemoteFile(self._call, handle_id, path)

    async def watch_missing(self, missing: list[str], present: str | None = None) -> asyncio.Event:
        """An event set once one of ``missing`` appears (or ``present`` goes away).

        It is already set when that is true now (the executor answered ``watching: false``).
        """
        watch_id = next(self._watch_ids)
        changed = asyncio.Event()
        self._watches[watch_id] = changed
        params = {
            "watchId": watch_id,
            "missing": [self.uri(path) for path in missing],
            "present": self.uri(present) if present is not None else None,
        }
        try:
            result = await self._call("fs/watchMissing", params)
        except BaseException:
            self._watches.pop(watch_id, None)
            raise
        if not result.get("watching"):
            self._watches.pop(watch_id, None)
            changed.set()
        return changed

    def deliver(self, params: Any) -> None:
        """An `fs/missingChanged` notification from the executor."""
        watch_id = params.get("watchId") if isinstance(params, dict) else None
        changed = self._watches.pop(watch_id, None) if isinstance(watch_id, int) else None
        if changed is not None:
            changed.set()
