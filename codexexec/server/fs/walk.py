"""fs/walk: a breadth-first listing of a tree, bounded the way Codex 0.169.0 bounds it.

Observed rules (docs/codex-0.169-observed.md §26.6): directories are read level by
level, each one's names sorted bytewise; only directories and regular files are
listed, but every entry whose target can be stat'ed (a FIFO, a symlink) counts toward
``maxEntries``; a symlink is listed (as a directory) only when following directory
symlinks, and a directory already visited is listed but not read again; reading a
directory counts toward ``maxDirectories`` even when it fails, the failure going to
``errors``; the response stops before its entries cost more than 4 MiB.
"""

from __future__ import annotations

import os
import re
import stat
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from codexexec.protocol.jsonrpc import INVALID_REQUEST, RpcError
from codexexec.protocol.limits import (
    FS_WALK_ITEM_OVERHEAD_BYTES,
    FS_WALK_MAX_DEPTH,
    FS_WALK_MAX_DIRECTORIES,
    FS_WALK_MAX_ENTRIES,
    FS_WALK_RESPONSE_BUDGET_BYTES,
)
from codexexec.protocol.path_uri import encode_segment
from codexexec.server.errors import ServerError
from codexexec.server.fs.uris import path_uri
from codexexec.server.os_errors import os_error_text

# Names that are their own PathUri segment (the common case, so it stays fast).
_PLAIN_NAME = re.compile(rb"[A-Za-z0-9\-._~!$&'()*+,;=:@\[\]|]+\Z")


@dataclass(frozen=True, slots=True)
class WalkLimits:
    max_depth: int
    max_directories: int
    max_entries: int
    follow_directory_symlinks: bool
    prune_hidden_directories: bool = False

    def check(self) -> None:
        if self.max_directories == 0 or self.max_entries == 0:
            raise RpcError(INVALID_REQUEST, "filesystem walk limits must be greater than zero")
        if (
            self.max_depth > FS_WALK_MAX_DEPTH
            or self.max_directories > FS_WALK_MAX_DIRECTORIES
            or self.max_entries > FS_WALK_MAX_ENTRIES
        ):
            raise RpcError(
                INVALID_REQUEST,
                "filesystem walk limits exceed maximums: "
                f"depth={FS_WALK_MAX_DEPTH}, directories={FS_WALK_MAX_DIRECTORIES}, "
                f"entries={FS_WALK_MAX_ENTRIES}",
            )


class _Stop(ServerError):
    """A limit was reached: the walk ends, truncated."""


@dataclass(slots=True)
class _Walk:
    limits: WalkLimits
    entries: list[dict[str, str]] = field(default_factory=list)
    errors: list[dict[str, str]] = field(default_factory=list)
    counted: int = 0
    budget: int = FS_WALK_RESPONSE_BUDGET_BYTES
    # Real paths of the directories queued so far, kept only when following symlinks.
    visited: set[bytes] = field(default_factory=set)
    # (native path, its real path or b"", PathUri, depth) of directories still to read.
    queue: deque[tuple[bytes, bytes, str, int]] = field(default_factory=deque)

    def run(self) -> bool:
        """Read queued directories until done; True when a limit cut the walk short."""
        directories = 0
        try:
            while self.queue:
                if directories >= self.limits.max_directories:
                    return True
                directories += 1
                self._read(*self.queue.popleft())
        except _Stop:
            return True
        return False

    def _read(self, path: bytes, real: bytes, uri: str, depth: int) -> None:
        try:
            with os.scandir(path) as listing:
                children = sorted(listing, key=lambda e: e.name)
        except OSError as exc:
            message = os_error_text(exc)
            self._spend(len(uri) + len(message))
            self.errors.append({"path": uri, "message": message})
            return
        prefix = uri if uri.endswith("/") else uri + "/"
        descend = depth < self.limits.max_depth
        for child in children:
            self._visit(child, real, prefix, depth, descend)

    def _visit(
        self, entry: os.DirEntry[bytes], real: bytes, prefix: str, depth: int, descend: bool
    ) -> None:
        follow = self.limits.follow_directory_symlinks
        is_link = entry.is_symlink()
        if is_link:
            try:
                is_dir = stat.S_ISDIR(entry.stat().st_mode)
            except OSError:
                return  # a dangling link does not count
            self._count()
            if not (follow and is_dir):
                return
            kind = "directory"
        else:
            self._count()
            if entry.is_dir(follow_symlinks=False):
                kind = "directory"
            elif entry.is_file(follow_symlinks=False):
                kind = "file"
            else:
                return
        name = entry.name
        segment = name.decode("ascii") if _PLAIN_NAME.match(name) else encode_segment(name)
        uri = prefix + segment
        self._spend(len(uri))
        self.entries.append({"path": uri, "kind": kind})
        if kind != "directory" or not descend:
            return
        if self.limits.prune_hidden_directories and name.startswith(b"."):
            return
        child_real = b""
        if follow:
            # Only a symlink needs resolving; a plain child is its parent's real path + name.
            child_real = os.path.realpath(entry.path) if is_link else os.path.join(real, name)
            if child_real in self.visited:
                return
            self.visited.add(child_real)
        self.queue.append((entry.path, child_real, uri, depth + 1))

    def _count(self) -> None:
        if self.counted >= self.limits.max_entries:
            raise _Stop
        self.counted += 1

    def _spend(self, size: int) -> None:
        cost = size + FS_WALK_ITEM_OVERHEAD_BYTES
        if cost > self.budget:
            raise _Stop
        self.budget -= cost


def walk(path: str, limits: WalkLimits) -> dict[str, Any]:
    limits.check()
    root = os.fsencode(path)
    st = os.lstat(root)
    if stat.S_ISLNK(st.st_mode) and limits.follow_directory_symlinks:
        st = os.stat(root)
    state = _Walk(limits)
    truncated = False
    if stat.S_ISDIR(st.st_mode):
        real = os.path.realpath(root) if limits.follow_directory_symlinks else b""
        state.visited.add(real)
        state.queue.append((root, real, path_uri(path), 0))
        truncated = state.run()
    return {"entries": state.entries, "errors": state.errors, "truncated": truncated}
