"""The filesystem operations themselves: blocking, on native paths, with Codex's semantics.

Each runs in a worker thread for an unsandboxed request, or inside the sandboxed helper
process (``codexexec.server.fs.worker``) when the request's sandbox restricts the file
system, so both behave alike. Results are the JSON-ready wire shapes; failures are
RpcErrors (Codex's texts) or OSErrors (mapped by ``os_errors.rpc_error``).

Nothing here ever blocks on a FIFO or a device: paths are checked before they are
opened, every open is non-blocking, and the opened file is checked again.
"""

from __future__ import annotations

import errno
import os
import shutil
import stat
from collections.abc import Iterator
from typing import Any

from codexexec.protocol.base64_codec import base64_json
from codexexec.protocol.jsonrpc import INTERNAL_ERROR, INVALID_REQUEST, RpcError
from codexexec.protocol.limits import FS_MAX_WHOLE_READ_BYTES
from codexexec.server.fs.uris import path_uri

_READ = os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC
_REPLACE = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NONBLOCK | os.O_CLOEXEC
_DIR_STEP = os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_COPY_CHUNK = 8 * 1024 * 1024


def _not_a_file(path: str) -> RpcError:
    return RpcError(INVALID_REQUEST, f"path `{path}` is not a file")


def _not_regular() -> RpcError:
    return RpcError(INVALID_REQUEST, "path is not a regular file")


def _loop(path: str) -> OSError:
    # What O_NOFOLLOW reports for a final symlink; Codex passes it through.
    return OSError(errno.ELOOP, os.strerror(errno.ELOOP), path)


def _too_large() -> RpcError:
    return RpcError(
        INVALID_REQUEST, f"file is too large to read: limit is {FS_MAX_WHOLE_READ_BYTES} bytes"
    )


# -- no-follow resolution ---------------------------------------------------------------


class _Parent:
    """The directory holding a path's last component, reached without following symlinks."""

    def __init__(self, path: str, *, create: bool = False) -> None:
        head, self.name = os.path.split(path)
        self.fd = os.open("/", _DIR_STEP)
        try:
            for part in head.split("/"):
                if part:
                    self._step(part, create)
        except BaseException:
            os.close(self.fd)
            raise
        if not self.name:  # the root itself
            self.name = "."

    def _step(self, part: str, create: bool) -> None:
        try:
            fd = os.open(part, _DIR_STEP, dir_fd=self.fd)
        except FileNotFoundError:
            if not create:
                raise
            os.mkdir(part, dir_fd=self.fd)
            fd = os.open(part, _DIR_STEP, dir_fd=self.fd)
        os.close(self.fd)
        self.fd = fd

    def lstat(self) -> os.stat_result | None:
        try:
            return os.stat(self.name, dir_fd=self.fd, follow_symlinks=False)
        except FileNotFoundError:
            return None

    def close(self) -> None:
        os.close(self.fd)


def _stat_or_none(path: str) -> os.stat_result | None:
    try:
        return os.stat(path)
    except FileNotFoundError:
        return None


def _check_regular_fd(fd: int, problem: RpcError) -> os.stat_result:
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode):
        os.close(fd)
        raise problem
    return st


# -- opening files ------------------------------------------------------------------------


def open_for_read(path: str, follow_symlinks: bool = True) -> int:
    """An fd on the regular file ``path``; anything else is refused without blocking."""
    if follow_symlinks:
        if not stat.S_ISREG(os.stat(path).st_mode):
            raise _not_a_file(path)
        fd = os.open(path, _READ)
        _check_regular_fd(fd, _not_a_file(path))
        return fd
    parent = _Parent(path)
    try:
        st = os.stat(parent.name, dir_fd=parent.fd, follow_symlinks=False)
        if stat.S_ISLNK(st.st_mode):
            raise _loop(path)
        if not stat.S_ISREG(st.st_mode):
            raise _not_regular()
        fd = os.open(parent.name, _READ | os.O_NOFOLLOW, dir_fd=parent.fd)
    finally:
        parent.close()
    _check_regular_fd(fd, _not_regular())
    return fd


def open_for_replace(path: str, follow_symlinks: bool = True) -> int:
    """An fd that writes ``path`` from empty; a FIFO or device is refused, never waited on."""
    if follow_symlinks:
        st = _stat_or_none(path)
        if st is not None and not (stat.S_ISREG(st.st_mode) or stat.S_ISDIR(st.st_mode)):
            raise _not_a_file(path)
        fd = os.open(path, _REPLACE, 0o666)
        _check_regular_fd(fd, _not_a_file(path))
        return fd
    parent = _Parent(path)
    try:
        st = parent.lstat()
        if st is not None and stat.S_ISLNK(st.st_mode):
            raise _loop(path)
        if st is not None and not (stat.S_ISREG(st.st_mode) or stat.S_ISDIR(st.st_mode)):
            raise _not_regular()
        fd = os.open(parent.name, _REPLACE | os.O_NOFOLLOW, 0o666, dir_fd=parent.fd)
    finally:
        parent.close()
    _check_regular_fd(fd, _not_regular())
    return fd


def _read_all(fd: int) -> bytes:
    chunks: list[bytes] = []
    total = 0
    while chunk := os.read(fd, 1024 * 1024):
        total += len(chunk)
        if total > FS_MAX_WHOLE_READ_BYTES:
            raise _too_large()
        chunks.append(chunk)
    return b"".join(chunks)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


# -- the methods --------------------------------------------------------------------------


def read_file(path: str, follow_symlinks: bool) -> dict[str, Any]:
    fd = open_for_read(path, follow_symlinks)
    try:
        if os.fstat(fd).st_size > FS_MAX_WHOLE_READ_BYTES:
            raise _too_large()
        # Bytes: the JSON encoder writes them as standard base64.
        return {"dataBase64": base64_json(_read_all(fd))}
    finally:
        os.close(fd)


def write_file(path: str, data: bytes, follow_symlinks: bool) -> dict[str, Any]:
    fd = open_for_replace(path, follow_symlinks)
    try:
        _write_all(fd, data)
    finally:
        os.close(fd)
    return {}


def create_directory(path: str, recursive: bool, follow_symlinks: bool) -> dict[str, Any]:
    if follow_symlinks:
        if recursive:
            os.makedirs(path, exist_ok=True)
        else:
            os.mkdir(path)
        return {}
    parent = _Parent(path, create=recursive)
    try:
        try:
            os.mkdir(parent.name, dir_fd=parent.fd)
        except FileExistsError:
            st = parent.lstat()
            if not recursive or st is None or not stat.S_ISDIR(st.st_mode):
                raise
    finally:
        parent.close()
    return {}


def _metadata(st: os.stat_result, is_symlink: bool) -> dict[str, Any]:
    return {
        "isDirectory": stat.S_ISDIR(st.st_mode),
        "isFile": stat.S_ISREG(st.st_mode),
        "isSymlink": is_symlink,
        "size": st.st_size,
        # Codex's Linux build reports 0 where the platform's stat has no birth time.
        "createdAtMs": int(getattr(st, "st_birthtime", 0) * 1000),
        "modifiedAtMs": st.st_mtime_ns // 1_000_000,
    }


def get_metadata(path: str, follow_symlinks: bool) -> dict[str, Any]:
    if follow_symlinks:
        link = os.lstat(path)
        is_link = stat.S_ISLNK(link.st_mode)
        return _metadata(os.stat(path) if is_link else link, is_link)
    parent = _Parent(path)
    try:
        st = os.stat(parent.name, dir_fd=parent.fd, follow_symlinks=False)
    finally:
        parent.close()
    if stat.S_ISLNK(st.st_mode):
        raise RpcError(INVALID_REQUEST, "path contains a symbolic link")
    return _metadata(st, False)


def canonicalize(path: str) -> dict[str, Any]:
    return {"path": path_uri(os.path.realpath(path, strict=True))}


def _file_name(name: str) -> str:
    # JSON text must be Unicode: undecodable bytes become U+FFFD, as in Codex.
    if name.isascii():
        return name
    return os.fsencode(name).decode("utf-8", "replace")


def read_directory(path: str) -> dict[str, Any]:
    entries: list[dict[str, Any]] = []
    size = 0
    with os.scandir(path) as listing:
        for entry in listing:
            try:
                # Codex reports each entry's target type and leaves out dangling links.
                st = entry.stat()
            except OSError:
                continue
            name = _file_name(entry.name)
            size += len(name) + 64
            if size > FS_MAX_WHOLE_READ_BYTES:
                raise RpcError(INTERNAL_ERROR, "directory has too many entries to list")
            entries.append(
                {
                    "fileName": name,
                    "isDirectory": stat.S_ISDIR(st.st_mode),
                    "isFile": stat.S_ISREG(st.st_mode),
                }
            )
    return {"entries": entries}


def remove(path: str, recursive: bool, force: bool, follow_symlinks: bool) -> dict[str, Any]:
    if not follow_symlinks:
        if recursive:
            raise RpcError(INTERNAL_ERROR, "recursive no-follow removal is unsupported")
        parent = _Parent(path)
        try:
            st = parent.lstat()
            if st is None:
                if force:
                    return {}
                raise FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), path)
            if stat.S_ISDIR(st.st_mode):
                os.rmdir(parent.name, dir_fd=parent.fd)
            else:
                os.unlink(parent.name, dir_fd=parent.fd)
        finally:
            parent.close()
        return {}
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        if force:
            return {}
        raise
    if not stat.S_ISDIR(st.st_mode):
        os.unlink(path)
    elif recursive:
        shutil.rmtree(path)
    else:
        os.rmdir(path)
    return {}


# -- copy ---------------------------------------------------------------------------------


def _inside(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip("/") + "/")


def copy(source: str, destination: str, recursive: bool) -> dict[str, Any]:
    st = os.lstat(source)
    if stat.S_ISDIR(st.st_mode):
        if not recursive:
            raise RpcError(
                INVALID_REQUEST, "fs/copy requires recursive: true when sourcePath is a directory"
            )
        if _inside(os.path.realpath(destination), os.path.realpath(source)):
            raise RpcError(
                INVALID_REQUEST,
                "fs/copy cannot copy a directory to itself or one of its descendants",
            )
        _copy_tree(source, destination)
    elif stat.S_ISLNK(st.st_mode):
        os.symlink(os.readlink(source), destination)
    elif stat.S_ISREG(st.st_mode):
        _copy_file(source, destination)
    else:
        raise RpcError(
            INVALID_REQUEST, "fs/copy only supports regular files, directories, and symlinks"
        )
    return {}


def _tree(source: str, destination: str) -> Iterator[tuple[str, str, int]]:
    """(source, destination, mode) of everything below ``source``, parents first."""
    pending = [(source, destination)]
    while pending:
        src_dir, dst_dir = pending.pop()
        with os.scandir(src_dir) as listing:
            for entry in listing:
                mode = entry.stat(follow_symlinks=False).st_mode
                target = os.path.join(dst_dir, entry.name)
                yield entry.path, target, mode
                if stat.S_ISDIR(mode):
                    pending.append((entry.path, target))


def _copy_tree(source: str, destination: str) -> None:
    os.mkdir(destination)
    for src, dst, mode in _tree(source, destination):
        if stat.S_ISDIR(mode):
            os.mkdir(dst)
        elif stat.S_ISLNK(mode):
            os.symlink(os.readlink(src), dst)
        elif stat.S_ISREG(mode):
            _copy_file(src, dst)
        # Codex skips FIFOs, sockets and devices inside a copied tree.


def _copy_file(source: str, destination: str) -> None:
    src = open_for_read(source)
    try:
        src_st = os.fstat(src)
        dst_st = _stat_or_none(destination)
        if dst_st is not None and (dst_st.st_dev, dst_st.st_ino) == (src_st.st_dev, src_st.st_ino):
            return  # copying a file onto itself must not truncate it
        dst = open_for_replace(destination)
        try:
            while os.sendfile(dst, src, None, _COPY_CHUNK):
                pass
            os.fchmod(dst, stat.S_IMODE(src_st.st_mode))
        finally:
            os.close(dst)
    finally:
        os.close(src)
