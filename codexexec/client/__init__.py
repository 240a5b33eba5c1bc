"""The public Python API: ExecServerClient and RemoteProcess."""

from codexexec.client.client import ExecServerClient
from codexexec.client.errors import ExecServerError
from codexexec.client.process import Closed, Exited, Output, OutputGap, ProcessEvent, RemoteProcess

__all__ = [
    "Closed",
    "ExecServerClient",
    "ExecServerError",
    "Exited",
    "Output",
    "OutputGap",
    "ProcessEvent",
    "RemoteProcess",
]
