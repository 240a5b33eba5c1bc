"""Talking to the CLI through a real pseudo-terminal, as a person at a keyboard does."""

from __future__ import annotations

import os
import select
import subprocess
import time
from collections.abc import Callable


def converse(
    process: subprocess.Popen[bytes],
    master: int,
    react: Callable[[bytes], bool],
    timeout: float,
) -> bytes:
    """What ``process`` writes to the terminal until it ends (or ``timeout``); ``react`` sees
    the screen after each read, and once it returns True it is not called again."""
    screen = b""
    done = False
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        ready, _, _ = select.select([master], [], [], 0.05)
        if ready:
            try:
                data = os.read(master, 65536)
            except OSError:
                break
            if not data:
                break
            screen += data
        if not done:
            done = react(screen)
        if process.poll() is not None and not ready:
            break
    return screen


def start_at_terminal(
    argv: list[str],
    *,
    controlling: bool = False,
    size: tuple[int, int] | None = None,
    env: dict[str, str] | None = None,
) -> tuple[subprocess.Popen[bytes], int]:
    """``argv`` on a new pseudo-terminal: (the process, the terminal's master end). With
    ``controlling`` it leads a session whose controlling terminal this is, as a shell's
    foreground job does."""
    import fcntl
    import pty
    import struct
    import termios

    master, slave = pty.openpty()
    if size is not None:
        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", *size, 0, 0))
    process = subprocess.Popen(
        argv,
        stdin=slave,
        stdout=slave,
        stderr=slave,
        cwd="/tmp",
        env={**os.environ, **(env or {})},
        start_new_session=controlling,
        preexec_fn=(lambda: fcntl.ioctl(0, termios.TIOCSCTTY, 0)) if controlling else None,
    )
    os.close(slave)
    return process, master


def finish(process: subprocess.Popen[bytes], master: int, timeout: float) -> int:
    """The exit status; a CLI still running after ``timeout`` is killed, never left behind."""
    try:
        return process.wait(timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
        raise
    finally:
        os.close(master)
