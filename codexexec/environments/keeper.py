"""A stdio environment's keeper: it holds the exec-server's pipe so sessions outlive the CLI.

`exec --detach` on a stdio environment starts it (``python -m
codexexec.environments.keeper``, the entry as JSON on stdin, detached from the terminal in
a session of its own, stderr to its log). It spawns the environment's program once,
initializes one session, listens on a Unix socket in the private runtime directory,
reports ``{"ready": true}`` (or the failed step and cause) on stdout, and then relays
its clients' JSON-RPC (keeper_mux.py).

It ends when the program exits, or once no client has been attached for the idle TTL
(the detached-session TTL: 600 s unless CODEXEXEC_KEEPER_IDLE_TTL says otherwise), or
on SIGTERM/SIGINT/SIGHUP. Ending, it writes one line saying why (a later `read` shows
it), removes its socket and stops the program's process group, and with it every
process of the session.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import sys
from dataclasses import dataclass
from typing import Any

from codexexec.client.errors import ExecServerError
from codexexec.environments.config import StdioSpec
from codexexec.environments.connect import (
    EnvironmentUnavailable,
    closed_cause,
    initialize_over,
    open_transport,
)
from codexexec.environments.keeper_mux import Multiplexer
from codexexec.protocol.jsonrpc import RpcError
from codexexec.rpc.peer import RpcPeer
from codexexec.transport.base import MessageTransport, TransportClosed

log = logging.getLogger("codexexec.keeper")

# A server request can wait on a person; the others keep notifications flowing.
SERVER_CONCURRENCY = 4


@dataclass(frozen=True, slots=True)
class KeeperOrder:
    """What the CLI hands a new keeper on its stdin."""

    spec: StdioSpec
    socket: str
    last_words: str
    idle_ttl: float

    def to_json(self) -> str:
        spec = self.spec
        return json.dumps(
            {
                "id": spec.id,
                "program": spec.program,
                "args": list(spec.args),
                "env": dict(spec.env),
                "cwd": spec.cwd,
                "initializeTimeout": spec.initialize_timeout,
                "socket": self.socket,
                "lastWords": self.last_words,
                "idleTtl": self.idle_ttl,
            }
        )

    @classmethod
    def from_json(cls, text: str) -> KeeperOrder:
        raw = json.loads(text)
        spec = StdioSpec(
            id=raw["id"],
            program=raw["program"],
            args=tuple(raw["args"]),
            env=raw["env"],
            cwd=raw["cwd"],
            initialize_timeout=float(raw["initializeTimeout"]),
        )
        return cls(spec, raw["socket"], raw["lastWords"], float(raw["idleTtl"]))


async def _initialize(server: RpcPeer) -> dict[str, Any]:
    try:
        result = await server.call("initialize", {"clientName": "codexexec-keeper"})
        await server.notify("initialized", {})
    except RpcError as exc:
        raise ExecServerError(exc.message, exc.code) from None
    except (TransportClosed, ConnectionError) as exc:
        raise ExecServerError(f"exec-server transport closed: {exc}") from None
    return result if isinstance(result, dict) else {}


async def _idle(mux: Multiplexer, ttl: float) -> None:
    """Return once no client has been attached for ``ttl`` seconds."""
    loop = asyncio.get_running_loop()
    idle_since = loop.time()
    while True:
        mux.changed.clear()
        if mux.clients:
            await mux.changed.wait()
            idle_since = loop.time()
            continue
        remaining = idle_since + ttl - loop.time()
        if remaining <= 0:
            return
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(remaining):
                await mux.changed.wait()


def _report(**fields: object) -> None:
    """Tell the CLI that started us how the start went; then let go of its pipes."""
    os.write(1, json.dumps(fields).encode() + b"\n")
    null = os.open(os.devnull, os.O_RDWR)
    os.dup2(null, 0)
    os.dup2(null, 1)
    os.close(null)


def _write_last_words(path: str, text: str) -> None:
    temporary = f"{path}.tmp"
    with open(temporary, "w", encoding="utf-8", opener=_private) as file:
        file.write(text + "\n")
    os.replace(temporary, path)


def _private(path: str, flags: int) -> int:
    return os.open(path, flags, 0o600)


async def keep(order: KeeperOrder) -> int:
    spec, label = order.spec, order.spec.id
    with contextlib.suppress(FileNotFoundError):
        os.unlink(order.last_words)
    mux = Multiplexer(label)
    try:
        transport = await open_transport(spec, label)
    except EnvironmentUnavailable as exc:
        _report(step=exc.step, cause=exc.cause)
        return 1
    server = RpcPeer(
        transport,
        on_request=mux.on_server_request,
        on_notification=mux.on_server_notification,
        concurrency=SERVER_CONCURRENCY,
    )
    running = asyncio.create_task(server.run())
    mux.server = server
    try:
        mux.session = await initialize_over(spec, label, transport, lambda: _initialize(server))
    except EnvironmentUnavailable as exc:
        _report(step=exc.step, cause=exc.cause)
        await _stop_server(transport, running)
        return 1
    # The CLI that started us holds the start lock: nothing else binds here meanwhile,
    # so a socket file still present is a dead keeper's.
    with contextlib.suppress(FileNotFoundError):
        os.unlink(order.socket)
    from codexexec.transport.unix import serve_unix

    previous = os.umask(0o177)
    try:
        listener = await serve_unix(order.socket, mux.serve_client, f"client of `{label}`")
    except OSError as exc:
        _report(step="connect", cause=f"the keeper cannot listen at {order.socket}: {exc.strerror}")
        await _stop_server(transport, running)
        return 1
    finally:
        os.umask(previous)
    bound = os.stat(order.socket).st_ino
    _report(ready=True, sessionId=mux.session_id)
    log.info("keeping `%s` (session %s) at %s", label, mux.session_id, order.socket)
    reason = await _until_the_end(mux, running, transport, order)
    log.info("ending: %s", reason)
    _write_last_words(order.last_words, reason)
    listener.close()
    with contextlib.suppress(FileNotFoundError):
        # Only our own socket: a successor may have replaced it already.
        if os.stat(order.socket).st_ino == bound:
            os.unlink(order.socket)
    mux.ended.set_result(f"environment `{label}`: {reason}")
    await mux.close_clients()
    await _stop_server(transport, running)
    return 0


async def _stop_server(transport: MessageTransport, running: asyncio.Task[None]) -> None:
    """Stop the program (its whole process group) and our connection to it."""
    await transport.close()
    running.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await running


async def _until_the_end(
    mux: Multiplexer, running: asyncio.Task[None], transport: MessageTransport, order: KeeperOrder
) -> str:
    """Why the keeper ends: the program exited, no client for the TTL, or a signal."""
    target = order.spec.target
    loop = asyncio.get_running_loop()
    stopped: asyncio.Future[str] = loop.create_future()
    for number in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        loop.add_signal_handler(number, _stop, stopped, signal.Signals(number).name)
    while True:
        idle = asyncio.create_task(_idle(mux, order.idle_ttl))
        ends: set[asyncio.Future[Any]] = {running, idle, stopped}
        await asyncio.wait(ends, return_when=asyncio.FIRST_COMPLETED)
        idle.cancel()
        if not (idle.done() and mux.clients) or running.done() or stopped.done():
            break
        # A client attached just as the idle time ran out: it is served after all.
    # Decided, with no await since: a client connecting from now on is turned away.
    mux.closing = True
    gone = "; the session and its processes are gone"
    if running.done():
        cause = await closed_cause(transport)
        return f"the exec-server `{target}` ended: {cause}{gone}"
    if idle.done() and not stopped.done():
        return f"its keeper stopped after {order.idle_ttl:g} s with no client attached{gone}"
    return f"its keeper was stopped by {stopped.result()}{gone}"


def _stop(stopped: asyncio.Future[str], name: str) -> None:
    if not stopped.done():
        stopped.set_result(name)


def main() -> int:
    order = KeeperOrder.from_json(sys.stdin.read())
    from codexexec.logs import configure_logging

    # The entry's env values may be secrets: they never reach the log.
    configure_logging("info", secrets=order.spec.env.values())
    try:
        return asyncio.run(keep(order))
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
