"""Host directories that exist only as mount points for sandbox masks, counted by user.

bubblewrap creates an empty directory on the host for each protected name that is
missing (`.codex` in a writable root) and mounts a read-only tmpfs over it inside the
sandbox. A sandbox started while that directory exists binds it read-only instead. If the
first sandbox removed it on exit while the second still ran, the second's mount would be
detached with it and the name could be created from inside. So each such directory is
removed only when the last sandbox that relies on it has ended.
"""

from __future__ import annotations

import contextlib
import os
import threading

_lock = threading.Lock()
_users: dict[str, int] = {}
# (device, inode, ctime) of each mount point made here, to tell it from a directory someone
# else put at that path later (a freed inode number is soon reused; the ctime is not).
_identities: dict[str, tuple[int, int, int]] = {}


def hold(created: list[str], bound: list[str]) -> list[str]:
    """Count this sandbox as a user of the directories it will create (``created``) and of
    those among ``bound`` that another sandbox created; the list to hand to ``release``."""
    with _lock:
        held = [*created, *(path for path in bound if path in _users)]
        for path in created:
            if path not in _users:
                _make(path)
        for path in held:
            _users[path] = _users.get(path, 0) + 1
    return held


def _make(path: str) -> None:
    """Create the mount point now (bubblewrap would) so its identity is known."""
    with contextlib.suppress(FileExistsError):
        try:
            os.mkdir(path, 0o755)
        except OSError:
            return
    with contextlib.suppress(OSError):
        _identities[path] = file_identity(os.lstat(path))


def is_ours(path: str) -> bool:
    """Whether ``path`` is, right now, a mount point a live sandbox of ours relies on."""
    with _lock:
        identity = _identities.get(path) if path in _users else None
    if identity is None:
        return False
    try:
        return file_identity(os.lstat(path)) == identity
    except OSError:
        return False


def file_identity(status: os.stat_result) -> tuple[int, int, int]:
    """Which file this is: device, inode, and the ctime (an inode number freed by one
    directory is often given to the next one made)."""
    return (status.st_dev, status.st_ino, status.st_ctime_ns)


def release(paths: list[str]) -> None:
    """This sandbox has ended: remove each directory nobody else relies on any more."""
    with _lock:
        for path in reversed(paths):
            remaining = _users.get(path, 0) - 1
            if remaining > 0:
                _users[path] = remaining
                continue
            _users.pop(path, None)
            _identities.pop(path, None)
            with contextlib.suppress(OSError):
                os.rmdir(path)  # only if still empty: never removes anything real
