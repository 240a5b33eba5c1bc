"""The warden: kills the process groups of an executor's children once the executor is gone.

Run as ``python -I -S warden.py`` (standard library only, so it starts in a few ms), with
a pipe from the executor as stdin. The executor writes ``+PGID`` after starting a child and
``-PGID`` before reaping it; when the pipe ends — the executor exited or was killed, even
with SIGKILL — every group still registered is killed. This replaces a pre-exec hook
(``PR_SET_PDEATHSIG``) in each child, which forced a full fork of the executor per start;
without one, Python starts children with vfork.

It ignores the signals a terminal or a service manager sends a whole process group, so
that it outlives the executor long enough to do its work.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys


def main() -> None:
    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT):
        signal.signal(signum, signal.SIG_IGN)
    groups: set[int] = set()
    # Until the executor's end of the pipe closes; lines are short ("+PGID"), so a bounded
    # read never holds more than one.
    while line := sys.stdin.buffer.readline(32):
        try:
            group = int(line[1:])
        except ValueError:
            continue
        if line.startswith(b"+"):
            groups.add(group)
        elif line.startswith(b"-"):
            groups.discard(group)
    for group in groups:
        with contextlib.suppress(OSError):  # already gone
            os.killpg(group, signal.SIGKILL)


if __name__ == "__main__":
    main()
