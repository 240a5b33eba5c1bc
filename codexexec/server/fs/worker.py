"""The sandboxed filesystem helper: ``python -m codexexec.server.fs.worker``.

Started by the server inside a sandbox (the same bwrap or Landlock wrapping a sandboxed
command gets), with a Unix socket as stdin and stdout. It serves requests one at a time
until the server closes the socket: each ``{"op", "args"}`` frame (``helper_protocol``)
runs the operation from ``ops`` and is answered with ``{"result": …}``,
``{"error": {"code", "message"}}``, or, for an open, ``{"fd": true}`` with the opened
descriptor attached (SCM_RIGHTS), so streaming reads and writes go on through a
descriptor the sandbox granted.
"""

from __future__ import annotations

import os
import socket
import sys
from collections.abc import Callable
from typing import Any

import msgspec

from codexexec.protocol.jsonrpc import RpcError
from codexexec.server.fs import ops
from codexexec.server.fs.helper_protocol import read_request, send_reply
from codexexec.server.fs.walk import WalkLimits, walk
from codexexec.server.os_errors import rpc_error

# Every operation by name: run in-process, or here once the server sent it over.
OPERATIONS: dict[str, Callable[..., Any]] = {
    "read_file": ops.read_file,
    "write_file": ops.write_file,
    "create_directory": ops.create_directory,
    "get_metadata": ops.get_metadata,
    "canonicalize": ops.canonicalize,
    "read_directory": ops.read_directory,
    "walk": walk,
    "remove": ops.remove,
    "copy": ops.copy,
}
# Operations whose result is an open file descriptor.
OPENERS: dict[str, Callable[..., int]] = {
    "open_for_read": ops.open_for_read,
    "open_for_replace": ops.open_for_replace,
}
# Arguments JSON carries in another form (bytes as base64, a dataclass as an object).
_ARGUMENT_TYPES: dict[str, type[Any]] = {"data": bytes, "limits": WalkLimits}


def _arguments(raw: dict[str, Any]) -> dict[str, Any]:
    return {
        name: msgspec.convert(value, _ARGUMENT_TYPES[name]) if name in _ARGUMENT_TYPES else value
        for name, value in raw.items()
    }


def _answer(request: Any, channel: socket.socket) -> None:
    op, args = request["op"], _arguments(request["args"])
    try:
        if op in OPENERS:
            fd = OPENERS[op](**args)
            try:
                send_reply(channel, b'{"fd":true}', fd)
            finally:
                os.close(fd)  # the server holds its own copy now
            return
        reply: dict[str, Any] = {"result": OPERATIONS[op](**args)}
    except RpcError as exc:
        reply = {"error": {"code": exc.code, "message": exc.message}}
    except OSError as exc:
        error = rpc_error(exc)
        reply = {"error": {"code": error.code, "message": error.message}}
    send_reply(channel, msgspec.json.encode(reply))


def main() -> None:
    # Only calls a network-restricting seccomp filter allows: read(2) and sendmsg(2); the
    # socket is wrapped with family, type and protocol given, so nothing is probed, and
    # it is closed, not shut down, when the helper exits.
    channel = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM, 0, sys.stdin.fileno())
    while (request := read_request(channel.fileno())) is not None:
        _answer(msgspec.json.decode(request), channel)


if __name__ == "__main__":
    main()
