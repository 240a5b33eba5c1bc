"""Keeping the executor's own credentials from the commands it runs.

A command runs with the executor's uid, often root. It must not find the executor's
connection token, registry token or API keys in its environment, nor read them from the
executor's ``/proc/PID/environ``, ``mem`` or fds (docs/sandbox-hardening.md §5).
"""

from __future__ import annotations

import ctypes
import os
from collections.abc import Mapping

# Every variable codexexec or Codex reads a credential from. The request's own env (or its
# policy's `set`) may still pass a value: then the harness named it.
EXECUTOR_SECRET_VARIABLES = frozenset(
    {
        "CODEX_EXEC_SERVER_CONNECTION_TOKEN",
        "CODEX_EXEC_SERVER_NOISE_AUTH_TOKEN",
        "CODEXEXEC_REGISTRY_TOKEN",
        "CODEX_ACCESS_TOKEN",
        "CODEX_API_KEY",
        "OPENAI_API_KEY",
    }
)
_PR_SET_DUMPABLE = 4


def without_secrets(environ: Mapping[str, str]) -> dict[str, str]:
    """``environ`` less the executor's credentials: what a child may inherit."""
    return {k: v for k, v in environ.items() if k not in EXECUTOR_SECRET_VARIABLES}


def forget_secrets_in_environment() -> None:
    """Drop the credentials from this process's environment once they have been read, so
    no helper or child started later can inherit them."""
    for name in EXECUTOR_SECRET_VARIABLES:
        os.environ.pop(name, None)


def protect_executor_process() -> None:
    """Make this process undumpable: a child of the same uid (root without capabilities
    included) can then neither ptrace it nor open its /proc/PID/environ, mem or fds. The
    environment block /proc shows is the one the process started with, so removing a
    variable from os.environ alone would not hide it there."""
    ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_DUMPABLE, 0, 0, 0, 0)
