"""The per-connection request processor: lifecycle gatekeeping and method dispatch.

Every transport (websocket, stdio, in-memory, relay stream) gets one of these on the
shared ExecServer; it owns no OS code, only protocol rules.
"""

from __future__ import annotations

import binascii
import logging
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import msgspec

from codexexec.protocol import messages as m
from codexexec.protocol.jsonrpc import (
    INTERNAL_ERROR,
    INVALID_PARAMS,
    INVALID_REQUEST,
    METHOD_NOT_FOUND,
    Notification,
    Request,
    RpcError,
)
from codexexec.protocol.path_uri import InvalidPathUri, PathUri
from codexexec.rpc.peer import CloseConnection, ReplyThen, RpcPeer
from codexexec.server import spawn
from codexexec.server.env_policy import build_child_env
from codexexec.server.environment import environment_info
from codexexec.server.output import ReadResult
from codexexec.server.process import ManagedProcess, StdinClosed
from codexexec.server.session import Session, SessionRegistry

log = logging.getLogger(__name__)

P = TypeVar("P")

# The family word Codex puts in its lifecycle errors, by method prefix.
_FAMILIES = {"process/": "exec", "fs/": "filesystem", "http/": "http"}


def decode_params(params: Any, kind: type[P]) -> P:
    try:
        return msgspec.convert(params if params is not None else {}, kind)
    except msgspec.ValidationError as exc:
        raise RpcError(INVALID_PARAMS, f"invalid params: {exc}") from None


def _unknown_process(process_id: str) -> RpcError:
    return RpcError(INVALID_REQUEST, f"unknown process id {process_id}")


def _read_result(result: ReadResult, sandbox_denied: bool) -> dict[str, Any]:
    return {
        "chunks": [
            {
                "seq": c.seq,
                "stream": c.stream,
                "chunk": binascii.b2a_base64(c.data, newline=False).decode("ascii"),
            }
            for c in result.chunks
        ],
        "nextSeq": result.next_seq,
        "exited": result.exited,
        "exitCode": result.exit_code,
        "closed": result.closed,
        "failure": None,
        "sandboxDenied": sandbox_denied,
    }


class ConnectionHandler:
    def __init__(self, sessions: SessionRegistry) -> None:
        self._sessions = sessions
        self._peer: RpcPeer | None = None
        self._initialize_received = False
        self._initialized = False
        self.session: Session | None = None
        self._methods: dict[str, Callable[[Any], Awaitable[Any]]] = {
            "process/start": self._process_start,
            "process/read": self._process_read,
            "process/write": self._process_write,
            "process/signal": self._process_signal,
            "process/terminate": self._process_terminate,
            "environment/info": self._environment_info,
            "environment/status": self._environment_status,
        }

    def bind(self, peer: RpcPeer) -> None:
        self._peer = peer

    def connection_ended(self) -> None:
        if self.session is not None and self._peer is not None:
            self._sessions.detach(self.session, self._peer.outbox)

    # -- dispatch -------------------------------------------------------------------

    async def on_request(self, request: Request) -> Any:
        if request.method == "initialize":
            return self._initialize(request.params)
        handler = self._methods.get(request.method)
        if handler is None:
            raise RpcError(
                METHOD_NOT_FOUND, f"exec-server stub does not implement `{request.method}` yet"
            )
        self._check_ready(request.method)
        return await handler(request.params)

    async def on_notification(self, notification: Notification) -> None:
        if notification.method == "initialized":
            if not self._initialize_received:
                raise CloseConnection("received `initialized` notification before `initialize`")
            self._initialized = True
            return
        raise CloseConnection(f"unexpected notification `{notification.method}`")

    def _check_ready(self, method: str) -> None:
        family = next((f for p, f in _FAMILIES.items() if method.startswith(p)), "environment")
        if not self._initialize_received:
            raise RpcError(
                INVALID_REQUEST, f"client must call initialize before using {family} methods"
            )
        if not self._initialized:
            raise RpcError(
                INVALID_REQUEST, f"client must send initialized before using {family} methods"
            )
        if (
            self.session is None
            or self._peer is None
            or self.session.outbox is not self._peer.outbox
        ):
            raise RpcError(INVALID_REQUEST, "session has been resumed by another connection")

    def _session(self) -> Session:
        assert self.session is not None
        return self.session

    # -- lifecycle ------------------------------------------------------------------

    def _initialize(self, raw: Any) -> dict[str, Any]:
        if self._initialize_received:
            raise RpcError(INVALID_REQUEST, "initialize may only be sent once per connection")
        params = decode_params(raw, m.InitializeParams)
        assert self._peer is not None
        if params.resume_session_id:
            self.session = self._sessions.resume(params.resume_session_id, self._peer.outbox)
        else:
            self.session = self._sessions.create(self._peer.outbox)
        self._initialize_received = True
        return {"sessionId": self.session.id, "environmentInfo": environment_info()}

    async def _environment_info(self, raw: Any) -> dict[str, Any]:
        return environment_info()

    async def _environment_status(self, raw: Any) -> dict[str, Any]:
        return {"status": "ready"}

    # -- processes ------------------------------------------------------------------

    def _process(self, process_id: str) -> ManagedProcess:
        process = self._session().processes.get(process_id)
        if process is None:
            raise _unknown_process(process_id)
        return process

    async def _process_start(self, raw: Any) -> ReplyThen:
        params = decode_params(raw, m.StartParams)
        if not params.argv:
            raise RpcError(INVALID_PARAMS, "argv must not be empty")
        try:
            cwd = PathUri.parse(params.cwd).to_host_native_path()
        except InvalidPathUri as exc:
            raise RpcError(
                INVALID_PARAMS,
                f"cwd URI `{params.cwd}` is not valid on this exec-server host: {exc}",
            ) from None
        session = self._session()
        if params.process_id in session.processes:
            raise RpcError(INVALID_REQUEST, f"process {params.process_id} already exists")
        env = build_child_env(params.env_policy, params.env)
        process = ManagedProcess(
            params.process_id,
            session,
            tty=params.tty,
            pipe_stdin=params.pipe_stdin,
            on_expired=session.forget,
        )
        session.processes[params.process_id] = process
        try:
            child = spawn.spawn(
                params.argv,
                cwd=cwd,
                env=env,
                tty=params.tty,
                pipe_stdin=params.pipe_stdin,
                arg0=params.arg0,
            )
        except OSError as exc:
            del session.processes[params.process_id]
            raise RpcError(INTERNAL_ERROR, _os_error_text(exc)) from None
        await process.attach(child)
        if session.processes.get(params.process_id) is not process:
            process.dispose()
            raise RpcError(INVALID_REQUEST, f"process {params.process_id} start was cancelled")
        return ReplyThen(
            {"processId": params.process_id, "sandboxType": "none"}, process.begin_publishing
        )

    async def _process_read(self, raw: Any) -> dict[str, Any]:
        params = decode_params(raw, m.ReadParams)
        process = self._process(params.process_id)
        if process.starting:
            raise RpcError(INVALID_REQUEST, f"process id {params.process_id} is starting")
        wait = max(0, params.wait_ms or 0) / 1000.0
        result = await process.output.read(params.after_seq or 0, params.max_bytes, wait)
        self._check_ready("process/read")
        return _read_result(result, process.sandbox_denied)

    async def _process_write(self, raw: Any) -> dict[str, Any]:
        params = decode_params(raw, m.WriteParams)
        if not params.write_id:
            raise RpcError(INVALID_PARAMS, "writeId must not be empty")
        try:
            data = binascii.a2b_base64(params.chunk, strict_mode=True)
        except binascii.Error as exc:
            raise RpcError(INVALID_PARAMS, f"chunk is not valid base64: {exc}") from None
        process = self._session().processes.get(params.process_id)
        if process is None:
            return {"status": "unknownProcess"}
        try:
            status = await process.write(data, params.write_id)
        except StdinClosed:
            raise RpcError(INTERNAL_ERROR, "failed to write to process stdin") from None
        return {"status": status}

    async def _process_signal(self, raw: Any) -> dict[str, Any]:
        params = decode_params(raw, m.SignalParams)
        process = self._session().processes.get(params.process_id)
        if process is not None:
            process.interrupt()
        return {}

    async def _process_terminate(self, raw: Any) -> dict[str, Any]:
        params = decode_params(raw, m.TerminateParams)
        process = self._session().processes.get(params.process_id)
        return {"running": process is not None and process.terminate()}


def _os_error_text(exc: OSError) -> str:
    # Codex (Rust) renders OS errors as "<reason> (os error N)".
    reason = exc.strerror or str(exc)
    return f"{reason} (os error {exc.errno})" if exc.errno else reason
