"""Open file handles of one connection: fs/open, fs/readBlock, fs/writeBlock, fs/close.

Codex 0.169.0's rules: at most 128 handles per connection, ids of at most 32 bytes,
blocks of 1 to 1 MiB at any offset; a failed read closes its handle (a failed write
does not); closing an unknown handle succeeds.
"""

from __future__ import annotations

import asyncio
import errno
import os
from dataclasses import dataclass
from typing import Any

from codexexec.protocol.base64_codec import base64_json
from codexexec.protocol.jsonrpc import INVALID_REQUEST, NOT_FOUND, RpcError
from codexexec.protocol.limits import (
    FS_MAX_BLOCK_BYTES,
    FS_MAX_HANDLE_ID_BYTES,
    FS_MAX_OPEN_HANDLES_PER_CONNECTION,
)
from codexexec.server.os_errors import rpc_error

_MAX_OFFSET = 2**63 - 1


@dataclass(slots=True)
class _Handle:
    fd: int
    # Reads and writes of one handle never overlap, whatever the request concurrency.
    lock: asyncio.Lock
    closed: bool = False

    def close(self) -> None:
        """Close now, or, while a read or write is in flight, once it is done with the fd."""
        self.closed = True
        if not self.lock.locked():
            os.close(self.fd)

    def finished(self) -> None:
        if self.closed:
            os.close(self.fd)


def _unknown(handle_id: str) -> RpcError:
    return RpcError(NOT_FOUND, f"unknown file handle `{handle_id}`")


def _block_size_error(kind: str) -> RpcError:
    return RpcError(
        INVALID_REQUEST, f"file {kind} block length must be between 1 and {FS_MAX_BLOCK_BYTES}"
    )


def _cached_block(fd: int, length: int, offset: int) -> bytearray | None:
    """A whole block straight from the page cache, or None (not cached, short, or refused).

    Reading it here, on the event loop, saves the hop to a worker thread; RWF_NOWAIT makes
    sure that never means waiting for a disk.
    """
    if offset > _MAX_OFFSET:
        return None
    block = bytearray(length)
    try:
        read = os.preadv(fd, [block], offset, os.RWF_NOWAIT)
    except OSError:
        return None
    return block if read == length else None


def _pread(fd: int, length: int, offset: int) -> tuple[bytes, bool]:
    try:
        data = os.pread(fd, length, offset)
    except OverflowError:  # beyond the largest file offset: what the kernel says too
        raise OSError(errno.EINVAL, os.strerror(errno.EINVAL)) from None
    return data, len(data) < length


def _pwrite(fd: int, data: bytes, offset: int) -> None:
    view = memoryview(data)
    try:
        while view:
            written = os.pwrite(fd, view, offset)
            view, offset = view[written:], offset + written
    except OverflowError:
        raise OSError(errno.EINVAL, os.strerror(errno.EINVAL)) from None


class FileHandles:
    def __init__(self) -> None:
        self._handles: dict[str, _Handle] = {}

    def check_new(self, handle_id: str) -> None:
        """Refuse an id before any file is opened for it (Codex's order of checks)."""
        if len(handle_id.encode("utf-8", "surrogatepass")) > FS_MAX_HANDLE_ID_BYTES:
            raise RpcError(
                INVALID_REQUEST, f"file handle ID must not exceed {FS_MAX_HANDLE_ID_BYTES} bytes"
            )
        if handle_id in self._handles:
            raise RpcError(INVALID_REQUEST, f"file handle `{handle_id}` already exists")
        if len(self._handles) >= FS_MAX_OPEN_HANDLES_PER_CONNECTION:
            raise RpcError(
                INVALID_REQUEST,
                f"at most {FS_MAX_OPEN_HANDLES_PER_CONNECTION} file handles "
                "may be open per connection",
            )

    def add(self, handle_id: str, fd: int) -> dict[str, Any]:
        """Keep ``fd`` under ``handle_id``; the id was checked, but the open may have raced."""
        try:
            self.check_new(handle_id)
        except RpcError:
            os.close(fd)
            raise
        self._handles[handle_id] = _Handle(fd, asyncio.Lock())
        return {"handleId": handle_id}

    def _get(self, handle_id: str) -> _Handle:
        handle = self._handles.get(handle_id)
        if handle is None:
            raise _unknown(handle_id)
        return handle

    async def read_block(self, handle_id: str, offset: int, length: int) -> dict[str, Any]:
        if not 1 <= length <= FS_MAX_BLOCK_BYTES:
            raise _block_size_error("read")
        handle = self._get(handle_id)
        async with handle.lock:
            try:
                cached = _cached_block(handle.fd, length, offset)
                chunk: bytes | bytearray
                if cached is None:
                    chunk, eof = await asyncio.to_thread(_pread, handle.fd, length, offset)
                else:
                    chunk, eof = cached, False
            except OSError as exc:
                self.close(handle_id)
                raise rpc_error(exc) from None
            finally:
                handle.finished()
        return {"chunk": base64_json(chunk), "eof": eof}

    async def write_block(self, handle_id: str, offset: int, data: bytes) -> dict[str, Any]:
        if not 1 <= len(data) <= FS_MAX_BLOCK_BYTES:
            raise _block_size_error("write")
        handle = self._get(handle_id)
        async with handle.lock:
            try:
                await asyncio.to_thread(_pwrite, handle.fd, data, offset)
            except OSError as exc:
                raise rpc_error(exc) from None
            finally:
                handle.finished()
        return {}

    def close(self, handle_id: str) -> dict[str, Any]:
        handle = self._handles.pop(handle_id, None)
        if handle is not None and not handle.closed:
            handle.close()
        return {}

    def close_all(self) -> None:
        for handle_id in list(self._handles):
            self.close(handle_id)
