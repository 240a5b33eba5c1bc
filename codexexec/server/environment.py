"""`environment/info`: what a harness needs to know about this executor host."""

from __future__ import annotations

import os
import pwd
import shutil
import sys
import tempfile
from typing import Any

from codexexec import __version__
from codexexec.protocol.path_uri import PathUri

# Each optional capability says false until its method exists, so a harness never
# calls into a gap.
CAPABILITIES: dict[str, bool] = {
    "networkProxyLaunch": False,
    "capabilityDiscoverySandbox": False,
    "environmentConfigRead": True,
    "httpHeaderEnvVars": True,
    "fsWatchMissing": True,
    "sandboxedFileStreaming": True,
    "fileWriteStreaming": True,
    "shellSnapshotV2": False,
    # codexexec extension: process/write takes `closeStdin` (end of a piped stdin).
    "stdinClose": True,
    # codexexec extension: process/resizePty sets a terminal's size (SIGWINCH inside).
    "ptyResize": True,
}


def _platform_os() -> str:
    if sys.platform.startswith("linux"):
        return "linux"
    if sys.platform == "darwin":
        return "macos"
    if sys.platform.startswith("win"):
        return "windows"
    return sys.platform


# Shells a harness knows how to drive; anything else in the account entry (nologin, fish…)
# makes way for bash on PATH, as Codex 0.169 does.
_KNOWN_SHELLS = frozenset({"bash", "zsh", "sh"})


def _shell() -> dict[str, str]:
    # Codex reads the account's login shell, not $SHELL (observed: SHELL=/bin/sh still
    # reports /bin/bash for root; a nologin account reports `which bash`).
    try:
        path = pwd.getpwuid(os.getuid()).pw_shell
    except KeyError:
        path = ""
    if os.path.basename(path) not in _KNOWN_SHELLS or not os.access(path, os.X_OK):
        path = shutil.which("bash") or "/bin/sh"
    return {"name": os.path.basename(path), "path": path}


def _uri(path: str) -> str:
    return str(PathUri.from_host_native_path(path))


def _temporary_directories() -> list[str]:
    value = os.environ.get("TMPDIR")
    if not value:
        return []
    return [_uri(os.path.abspath(value))]


def environment_info() -> dict[str, Any]:
    info: dict[str, Any] = {
        "shell": _shell(),
        "executorVersion": __version__,
        "cwd": _uri(os.getcwd()),
        "platformOs": _platform_os(),
        "temporaryDirectories": _temporary_directories(),
        "tempDir": _uri(tempfile.gettempdir()),
        "capabilities": dict(CAPABILITIES),
    }
    home = os.path.expanduser("~")
    if os.path.isabs(home):
        info["userHomeDir"] = _uri(home)
    return info
