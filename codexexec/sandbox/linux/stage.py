"""What the in-between stages share (``confine.py``, ``netns_bridge.py``): their command
line, ``SPEC_JSON -- ARGV...``, and becoming the command once they have confined it.
"""

from __future__ import annotations

import json
import os
import signal
import sys
from typing import Any, NoReturn

# Python ignores these at start-up, and exec keeps an ignored signal ignored.
_PYTHON_IGNORED = (signal.SIGPIPE, signal.SIGXFSZ)


def parse(name: str, argv: list[str]) -> tuple[dict[str, Any], list[str]]:
    if len(argv) < 3 or argv[1] != "--":
        sys.stderr.write(f"codexexec sandbox: usage: {name} SPEC -- ARGV...\n")
        os._exit(126)
    spec: dict[str, Any] = json.loads(argv[0])
    # Read at once and closed: no process this stage forks keeps the descriptor.
    try:
        spec["held_env"] = _held_env(spec.pop("env_fd", None))
    except OSError as exc:
        sys.stderr.write(f"codexexec sandbox: cannot read the command's environment: {exc}\n")
        os._exit(126)
    return spec, argv[2:]


def _held_env(fd: int | None) -> list[tuple[bytes, bytes]]:
    """The variables the launcher held back, from the memfd the executor wrote them to as
    NUL-terminated ``NAME=VALUE`` records (bytes: a value need not be UTF-8)."""
    if fd is None:
        return []
    chunks = []
    while chunk := os.read(fd, 1 << 16):
        chunks.append(chunk)
    os.close(fd)
    records = b"".join(chunks).split(b"\0")
    return [(name, value) for name, _, value in (r.partition(b"=") for r in records if r)]


def become(command: list[str], spec: dict[str, Any]) -> NoReturn:
    """exec the command with the signal dispositions a shell would give it and the
    variables its launchers were started without (``held_env``); exit 127/126 with the reason
    when it cannot be run."""
    for signum in _PYTHON_IGNORED:
        signal.signal(signum, signal.SIG_DFL)
    try:
        for name, value in spec.get("held_env", ()):
            os.environb[name] = value
    except (OSError, ValueError) as exc:  # never a traceback from an unconfined stage
        sys.stderr.write(f"codexexec sandbox: cannot set the command's environment: {exc}\n")
        os._exit(126)
    argv0: str | None = spec.get("argv0")
    program = command[0]
    try:
        os.execvp(program, [argv0 or program, *command[1:]])
    except OSError as exc:
        sys.stderr.write(f"codexexec: {program}: {exc.strerror}\n")
        os._exit(127 if isinstance(exc, FileNotFoundError) else 126)
