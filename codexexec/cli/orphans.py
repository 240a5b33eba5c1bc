"""Reaping what bubblewrap leaves behind, so a caller never inherits a zombie.

With ``--unshare-pid`` bwrap's outer process reports the command's status and exits while
the namespace's init (also "bwrap") is still ending; that orphan is reparented to the nearest
subreaper — the caller of `codexexec exec`, when it is one (a harness, tini, a CI runner) —
which then finds a ``[bwrap] <defunct>`` it never started. `exec` makes itself the subreaper
for its own descendants and reaps them before it exits.
"""

from __future__ import annotations

import contextlib
import ctypes
import glob
import os
import time

_PR_SET_CHILD_SUBREAPER = 36
REAP_GRACE_SECONDS = 0.2


def adopt_orphans() -> None:
    """Descendants whose parent exits become this process's children (Linux only)."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)


def reap_orphans(grace: float = REAP_GRACE_SECONDS) -> None:
    """Reap every ended child; wait up to ``grace`` for an adopted bwrap still ending."""
    deadline = time.monotonic() + grace
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return  # no children at all
        if pid:
            continue
        if time.monotonic() >= deadline or not any(_is_bwrap(c) for c in _children()):
            return
        time.sleep(0.005)


def _children() -> list[int]:
    pids: list[int] = []
    for path in glob.glob(f"/proc/{os.getpid()}/task/*/children"):
        with contextlib.suppress(OSError, ValueError), open(path) as handle:
            pids += [int(pid) for pid in handle.read().split()]
    return pids


def _is_bwrap(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/comm") as handle:
            return handle.read().strip() == "bwrap"
    except OSError:
        return False
