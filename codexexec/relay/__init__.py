"""The remote relay: protobuf frames between harness and executor via a rendezvous service.

* ``frames``: build, encode, decode and validate ``RelayMessageFrame`` (Codex's
  ``codex.exec_server.relay.v1`` schema; generated code in ``codexexec.relay.proto``).
* ``streams``: per-stream sequencing (seq from 0, 64-frame reorder window, no acks) and the
  executor's ``StreamTable``, in Codex 0.169.0's dialect.
* ``limits``: the constants, each with its source.

Pure code, no I/O: the websocket transport that drives it lives elsewhere.
"""

from codexexec.relay.frames import (
    FrameError,
    FrameErrorKind,
    RelayMessageFrame,
    decode,
    encode,
    parse,
    validate,
)
from codexexec.relay.streams import (
    Action,
    Admission,
    OutboundSequencer,
    RelayStream,
    ReorderBuffer,
    Reset,
    StreamError,
    StreamRefused,
    StreamTable,
    Verdict,
)

__all__ = [
    "Action",
    "Admission",
    "FrameError",
    "FrameErrorKind",
    "OutboundSequencer",
    "RelayMessageFrame",
    "RelayStream",
    "ReorderBuffer",
    "Reset",
    "StreamError",
    "StreamRefused",
    "StreamTable",
    "Verdict",
    "decode",
    "encode",
    "parse",
    "validate",
]
