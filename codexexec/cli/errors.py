"""How the CLI reports a failure: one line on stderr, a non-zero exit, no traceback."""

from __future__ import annotations

import sys
from typing import NoReturn

# Exit codes of codexexec itself, apart from a remote command's own code
# (the convention of env(1) and container runtimes).
EXIT_FAILURE = 125
EXIT_NOT_EXECUTABLE = 126
EXIT_NOT_FOUND = 127


class CliError(Exception):
    """The root of every error cli/ raises (reported by ``fail``, never as a traceback)."""


def fail(message: str, code: int = EXIT_FAILURE) -> NoReturn:
    sys.stderr.write(f"codexexec: error: {message}\n")
    sys.stderr.flush()
    raise SystemExit(code)
