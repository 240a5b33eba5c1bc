"""The public Python API: ExecServerClient and RemoteProcess.

The file and HTTP types load on first use (PEP 562): a program that only runs commands
does not pay for them at start-up (issue #17).
"""

from typing import TYPE_CHECKING, Any

from codexexec.client.client import ExecServerClient
from codexexec.client.environment_config import ConfigLayer, EnvironmentConfig
from codexexec.client.errors import ExecServerError
from codexexec.client.process import Closed, Exited, Output, OutputGap, ProcessEvent, RemoteProcess

if TYPE_CHECKING:
    from codexexec.client.files import DirectoryEntry, FileMetadata, RemoteFile, WalkResult
    from codexexec.client.http import Header, HttpBodyStream, HttpResponse

_LAZY = {
    "DirectoryEntry": "codexexec.client.files",
    "FileMetadata": "codexexec.client.files",
    "RemoteFile": "codexexec.client.files",
    "WalkResult": "codexexec.client.files",
    "Header": "codexexec.client.http",
    "HttpBodyStream": "codexexec.client.http",
    "HttpResponse": "codexexec.client.http",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "Closed",
    "ConfigLayer",
    "DirectoryEntry",
    "EnvironmentConfig",
    "ExecServerClient",
    "ExecServerError",
    "Exited",
    "FileMetadata",
    "Header",
    "HttpBodyStream",
    "HttpResponse",
    "Output",
    "OutputGap",
    "ProcessEvent",
    "RemoteFile",
    "RemoteProcess",
    "WalkResult",
]
