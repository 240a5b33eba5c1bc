"""`environment/info`: what a harness needs to know about this executor host."""

from __future__ import annotations

import os
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
}


def _platform_os() -> str:
    if sys.platform.startswith("linux"):
        return "linux"
    if sys.platform == "darwin":
        return "macos"
    if sys.platform.startswith("win"):
        return "windows"
    return sys.platform


def _shell() -> dict[str, str]:
    path = os.environ.get("SHELL") or shutil.which("bash") or "/bin/sh"
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
