"""The warden: kills the process groups of an executor's children once the executor is gone.

Run as ``python -I -S warden.py TABLE_FD`` (standard library only, so it starts in a few
ms), with a pipe from the executor as stdin that nothing is written to. The table is a
memfd the two share: 4-byte little-endian slots, each a group id the executor wrote after
starting a child, or 0, which it wrote before reaping it. When the pipe ends — the
executor exited or was killed, even with SIGKILL — every group still in the table is
killed. Registering costs the executor one ``pwrite`` and the warden nothing: it sleeps
until then. This replaces a pre-exec hook (``PR_SET_PDEATHSIG``) in each child, which
forced a full fork of the executor per start; without one, Python starts children with
vfork.

It ignores the signals a terminal or a service manager sends a whole process group, so
that it outlives the executor long enough to do its work.
"""

from __future__ import annotations

import contextlib
import os
import signal
import struct
import sys


def main() -> None:
    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT):
        signal.signal(signum, signal.SIG_IGN)
    table = int(sys.argv[1])
    while os.read(0, 64):  # until the executor's end of the pipe closes
        pass
    raw = bytearray()
    while chunk := os.pread(table, 1 << 16, len(raw)):
        raw += chunk
    for (group,) in struct.iter_unpack("<I", raw[: len(raw) // 4 * 4]):
        if group:
            with contextlib.suppress(OSError):  # already gone
                os.killpg(group, signal.SIGKILL)


if __name__ == "__main__":
    main()
