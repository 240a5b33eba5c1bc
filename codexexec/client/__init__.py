"""The public Python API: ExecServerClient and RemoteProcess."""

from codexexec.client.client import ExecServerClient
from codexexec.client.environment_config import ConfigLayer, EnvironmentConfig
from codexexec.client.errors import ExecServerError
from codexexec.client.files import DirectoryEntry, FileMetadata, RemoteFile, WalkResult
from codexexec.client.http import Header, HttpBodyStream, HttpResponse
from codexexec.client.process import Closed, Exited, Output, OutputGap, ProcessEvent, RemoteProcess

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
