"""The per-connection request processor: lifecycle gatekeeping and method dispatch.

Every transport (websocket, stdio, in-memory, relay stream) gets one of these on the
shared ExecServer. It holds the protocol's rules and drives the pieces that do the OS work
(``spawn``, ``sandbox.enforce``, the managed network, ``process``); starting a process is
one transaction: whatever was prepared for it is given back if it does not start.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, TypeVar

from codexexec.network.host_bridge import HostBridges
from codexexec.network.policy import NetworkPolicyError
from codexexec.protocol import messages as m
from codexexec.protocol.base64_codec import (
    Base64Error,
    base64_json,
    decode_base64,
)
from codexexec.protocol.fs_messages import METHOD_PARAMS
from codexexec.protocol.jsonrpc import (
    INTERNAL_ERROR,
    INVALID_PARAMS,
    INVALID_REQUEST,
    METHOD_NOT_FOUND,
    Notification,
    Request,
    RpcError,
)
from codexexec.rpc.lifecycle import INITIALIZED_TOO_EARLY, Lifecycle
from codexexec.rpc.peer import CloseConnection, ReplyThen, RpcPeer
from codexexec.sandbox.enforce import (
    SandboxedCommand,
    SandboxRefused,
    prepare_command,
)
from codexexec.sandbox.floor import SandboxSettings
from codexexec.sandbox.plan import NetworkRouting
from codexexec.sandbox.proxy_routes import ManagedNetwork, ProxyRouteError, check_routes
from codexexec.server import spawn
from codexexec.server.audit import NO_AUDIT, Auditor, elapsed_ms
from codexexec.server.env_policy import build_child_env
from codexexec.server.environment import environment_info
from codexexec.server.environment_config import read_environment_config
from codexexec.server.managed_network import (
    ExecutorNetwork,
    PreparedManagedNetwork,
    policy_from_request,
)
from codexexec.server.os_errors import os_error_text
from codexexec.server.output import ReadResult
from codexexec.server.process import ManagedProcess, StdinClosed
from codexexec.server.session import Session, SessionRegistry
from codexexec.server.uri_params import host_path
from codexexec.shown_urls import without_secrets
from codexexec.transport.base import TransportClosed

if TYPE_CHECKING:
    from codexexec.server.fs.methods import FileSystemMethods
    from codexexec.server.http_request import HttpRequests
    from codexexec.server.metrics import ServerMetrics

log = logging.getLogger(__name__)

P = TypeVar("P")


def decode_params(params: Any, kind: type[P]) -> P:
    try:
        return m.decode_params(params, kind)
    except m.ParamsError as exc:
        raise RpcError(INVALID_PARAMS, str(exc)) from None


def _unknown_process(process_id: str) -> RpcError:
    return RpcError(INVALID_REQUEST, f"unknown process id {process_id}")


def _read_result(result: ReadResult, process: ManagedProcess) -> dict[str, Any]:
    reply = {
        "chunks": [
            {
                "seq": c.seq,
                "stream": c.stream,
                "chunk": base64_json(c.data),
            }
            for c in result.chunks
        ],
        "nextSeq": result.next_seq,
        "exited": result.exited,
        "exitCode": result.exit_code,
        "closed": result.closed,
        "failure": None,
        "sandboxDenied": process.sandbox_denied,
    }
    if process.denial is not None and result.exited:
        reply["sandboxDenial"] = process.denial.to_json()  # codexexec extension
    return reply


class ConnectionHandler:
    def __init__(
        self,
        sessions: SessionRegistry,
        bridges: HostBridges,
        network: ExecutorNetwork,
        sandbox: SandboxSettings = SandboxSettings(),
        audit: Auditor = NO_AUDIT,
        metrics: ServerMetrics | None = None,
    ) -> None:
        self._sessions = sessions
        self._sandbox = sandbox
        self._audit = audit
        self._metrics = metrics
        self._bridges = bridges
        self._network = network
        self._peer: RpcPeer | None = None
        self._lifecycle = Lifecycle()
        self.session: Session | None = None
        # method -> (params type, handler). Codex decodes params before the lifecycle
        # gate, so a malformed request gets -32602 even before initialize.
        self._methods: dict[str, tuple[type[Any], Callable[[Any], Awaitable[Any]]]] = {
            "process/start": (m.StartParams, self._process_start),
            "process/read": (m.ReadParams, self._process_read),
            "process/write": (m.WriteParams, self._process_write),
            "process/signal": (m.SignalParams, self._process_signal),
            "process/terminate": (m.TerminateParams, self._process_terminate),
            "process/resizePty": (m.ResizePtyParams, self._process_resize_pty),
            "environment/info": (m.NoParams, self._environment_info),
            "environment/status": (m.NoParams, self._environment_status),
            "environmentConfig/read": (m.EnvironmentConfigReadParams, self._environment_config),
            "http/request": (m.HttpRequestParams, self._http_request),
        }
        for name, params in METHOD_PARAMS.items():
            self._methods[name] = (params, functools.partial(self._fs_request, name))

    def bind(self, peer: RpcPeer) -> None:
        self._peer = peer

    # `fs/*` and `http/request` are set up on first use: a connection that only runs
    # commands (a local `exec`) never loads them (issue #17).
    @functools.cached_property
    def _files(self) -> FileSystemMethods:
        from codexexec.server.fs.methods import FileSystemMethods

        return FileSystemMethods(self._notify, self._sandbox, self._audit)

    @functools.cached_property
    def _http(self) -> HttpRequests:
        from codexexec.server.http_request import HttpRequests

        return HttpRequests(self._network, self._notify)

    @functools.cached_property
    def _fs_handlers(self) -> dict[str, Callable[[Any], Awaitable[Any]]]:
        return self._files.handlers()

    async def _fs_request(self, method: str, params: Any) -> Any:
        return await self._fs_handlers[method](params)

    def connection_ended(self) -> None:
        if "_http" in self.__dict__:
            self._http.close()
        if "_files" in self.__dict__:
            self._files.close()
        if self.session is not None and self._peer is not None:
            self._sessions.detach(self.session, self._peer.outbox)

    # -- dispatch -------------------------------------------------------------------

    async def on_request(self, request: Request) -> Any:
        if request.method == "initialize":
            return self._initialize(request.params)
        entry = self._methods.get(request.method)
        if entry is None:
            raise RpcError(
                METHOD_NOT_FOUND, f"exec-server stub does not implement `{request.method}` yet"
            )
        params_type, handler = entry
        if self._metrics is None:
            return await self._call(request, params_type, handler)
        with self._metrics.request(request.method):  # a known method: the labels are bounded
            return await self._call(request, params_type, handler)

    async def _call(
        self, request: Request, params_type: type[Any], handler: Callable[[Any], Awaitable[Any]]
    ) -> Any:
        params = decode_params(request.params, params_type)
        self._check_ready(request.method)
        return await handler(params)

    async def on_notification(self, notification: Notification) -> None:
        if notification.method == "initialized":
            if not self._lifecycle.on_initialized():
                raise CloseConnection(INITIALIZED_TOO_EARLY)
            return
        raise CloseConnection(f"unexpected notification `{notification.method}`")

    def _check_ready(self, method: str) -> None:
        self._lifecycle.check(method)
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
        self._lifecycle.check_initialize()
        params = decode_params(raw, m.InitializeParams)
        assert self._peer is not None
        if params.resume_session_id:
            self.session = self._sessions.resume(params.resume_session_id, self._peer.outbox)
        else:
            self.session = self._sessions.create(self._peer.outbox)
        self._audit.session = self.session.id
        self._lifecycle.initialize_answered()
        return {"sessionId": self.session.id, "environmentInfo": environment_info()}

    async def _environment_info(self, params: m.NoParams) -> dict[str, Any]:
        return environment_info()

    async def _environment_status(self, params: m.NoParams) -> dict[str, Any]:
        return {"status": "ready"}

    async def _environment_config(self, params: m.EnvironmentConfigReadParams) -> dict[str, Any]:
        return read_environment_config(params)

    async def _notify(self, method: str, params: Any) -> None:
        """A notification on this connection (not the session): http/request body deltas."""
        if self._peer is None:
            raise TransportClosed("connection not bound")
        await self._peer.notify(method, params)

    # -- processes ------------------------------------------------------------------

    def _process(self, process_id: str) -> ManagedProcess:
        process = self._session().processes.get(process_id)
        if process is None:
            raise _unknown_process(process_id)
        return process

    async def _process_start(self, params: m.StartParams) -> ReplyThen:
        if not params.argv:
            raise RpcError(INVALID_PARAMS, "argv must not be empty")
        cwd = host_path(params.cwd, field="cwd")
        session = self._session()
        _check_new(session, params.process_id)
        session.check_room()
        if not params.argv[0]:
            kind = "pty" if params.tty else "pipe"
            raise RpcError(INTERNAL_ERROR, f"missing program for {kind} spawn")
        env = build_child_env(params.env_policy, params.env)
        with contextlib.ExitStack() as undo:  # each step's undo, should a later one fail
            prepared = await self._launch_network(params, env)
            if prepared is not None:
                undo.callback(self._network.release, prepared.token)
            routing = await self._network_routing(params, env, prepared)
            sandboxed = _sandboxed_command(params, cwd, routing, self._sandbox, env)
            if sandboxed is not None:
                undo.callback(sandboxed.discard)
                try:
                    spawn.ensure_program_exists(params.argv[0], env, cwd)
                except OSError as exc:
                    raise RpcError(INTERNAL_ERROR, os_error_text(exc)) from None
            token = prepared.token if prepared is not None else None
            process = ManagedProcess(
                params.process_id,
                session,
                tty=params.tty,
                pipe_stdin=params.pipe_stdin,
                on_expired=session.forget,
                on_closed=session.retain_closed,
                sandbox_type=sandboxed.sandbox_type if sandboxed else "none",
                sandbox_backend=sandboxed.backend if sandboxed else "",
                created_paths=sandboxed.created_paths if sandboxed else None,
                network_off=sandboxed is not None and sandboxed.network_off,
                managed_network=routing is not None,
                network_decisions=(lambda: self._network.decisions(token)) if token else list,
                on_disposed=(lambda: self._network.release(token)) if token else None,
            )
            # Again: another start of this id may have got here while we awaited.
            _check_new(session, params.process_id)
            session.processes[params.process_id] = process
            undo.callback(_forget_if_same, session.processes, params.process_id, process)
            try:
                child = spawn.spawn(
                    sandboxed.argv if sandboxed else params.argv,
                    cwd=cwd,
                    env=sandboxed.env if sandboxed and sandboxed.env is not None else env,
                    tty=params.tty,
                    pipe_stdin=params.pipe_stdin,
                    arg0=params.arg0 if sandboxed is None or sandboxed.passes_arg0 else None,
                    pass_fds=sandboxed.pass_fds if sandboxed else (),
                    # Both backends end the command with the executor: bwrap
                    # --die-with-parent, the Landlock supervisor's lifeline.
                    dies_with_parent=sandboxed is not None and sandboxed.backend != "seatbelt",
                    takes_terminal=sandboxed is not None and sandboxed.takes_terminal,
                    lifeline=sandboxed.lifeline if sandboxed else None,
                )
            except OSError as exc:
                raise RpcError(INTERNAL_ERROR, os_error_text(exc)) from None
            finally:
                if sandboxed is not None:
                    sandboxed.release()
            undo.pop_all()  # started: the process owns all of it now
        self._observe_process(params, cwd, process, routing is not None)
        await process.attach(child)
        if session.processes.get(params.process_id) is not process:
            process.dispose()
            raise RpcError(INVALID_REQUEST, f"process {params.process_id} start was cancelled")
        return ReplyThen(
            {"processId": params.process_id, "sandboxType": process.sandbox_type},
            process.begin_publishing,
        )

    def _observe_process(
        self, params: m.StartParams, cwd: str, process: ManagedProcess, managed: bool
    ) -> None:
        """The audit log's and the metrics' view of a process that has started."""
        metrics = self._metrics
        if not self._audit.enabled and metrics is None:
            return
        started = time.monotonic()
        sandbox = process.sandbox_backend or process.sandbox_type
        network = "proxy" if managed else "on" if _network_open(params.sandbox) else "off"
        where = {
            "processId": params.process_id,
            "argv": list(params.argv),
            "cwd": cwd,
            "sandbox": sandbox,
            "network": network,
        }
        self._audit.write("process.start", **where, tty=params.tty)
        if metrics is not None:
            metrics.processes_active.inc()

        def ended(code: int) -> None:
            denial = process.denial.reason if process.denial is not None else None
            self._audit.write(
                "process.end", **where, exitCode=code, denial=denial, ms=elapsed_ms(started)
            )
            if metrics is not None:
                decisions = [str(d.get("decision", "deny")) for d in process.network_decisions()]
                metrics.process_ended(sandbox, time.monotonic() - started, denial, decisions)

        process.on_exited = ended

    async def _http_request(self, params: m.HttpRequestParams) -> dict[str, Any] | ReplyThen:
        record = {"method": params.method, "url": without_secrets(params.url)}
        try:
            result = await self._http.request(params)
        except RpcError as exc:
            self._audit.write("http.request", **record, error=exc.code)
            raise
        status = result.get("status") if isinstance(result, dict) else None
        self._audit.write("http.request", **record, status=status)
        return result

    async def _launch_network(
        self, params: m.StartParams, env: dict[str, str]
    ) -> PreparedManagedNetwork | None:
        """codexexec's `networkProxy`: run this command behind the executor's proxy.

        The proxy environment and the sandbox context come from one prepared snapshot.
        """
        if params.network_proxy is None:
            return None
        try:
            policy = policy_from_request(params.network_proxy, self._network.baseline)
        except (NetworkPolicyError, TypeError, ValueError) as exc:
            raise RpcError(INVALID_PARAMS, f"invalid network proxy config: {exc}") from None
        session = self._session()
        prepared = await self._network.prepare(
            params.process_id, policy, session.publish, self._ask_client, session.network_hosts
        )
        env.update(prepared.env)
        return prepared

    async def _ask_client(self, request: dict[str, Any]) -> Any:
        """Ask this session's client about a destination; no client means no."""
        session, peer = self.session, self._peer
        if session is None or peer is None or session.outbox is not peer.outbox:
            return {"decision": "deny"}
        try:
            return await peer.call("network/policyRequest", request)
        except (RpcError, TransportClosed):
            return {"decision": "deny"}

    async def _network_routing(
        self,
        params: m.StartParams,
        env: dict[str, str],
        prepared: PreparedManagedNetwork | None,
    ) -> NetworkRouting | None:
        """Managed network: the proxy ports this command may reach, bridged into its sandbox."""
        requested = params.managed_network
        if prepared is not None:  # the executor's own proxy: its snapshot decides
            requested = m.ManagedNetworkParams(
                list(prepared.context.loopback_ports), prepared.context.allow_local_binding
            )
        if requested is None:
            if params.enforce_managed_network:
                raise RpcError(
                    INVALID_PARAMS,
                    "sandbox intent cannot be enforced on this executor: "
                    "enforceManagedNetwork without a managedNetwork context",
                )
            return None
        try:
            context = ManagedNetwork(tuple(requested.loopback_ports), requested.allow_local_binding)
            ports = check_routes(env, context)
        except ProxyRouteError as exc:
            raise RpcError(INVALID_PARAMS, f"invalid managed network: {exc}") from None
        routes = tuple([(port, await self._bridges.socket_for(port)) for port in ports])
        assert self._bridges.directory is not None
        return NetworkRouting(routes, self._bridges.directory, context.allow_local_binding)

    async def _process_read(self, params: m.ReadParams) -> dict[str, Any]:
        process = self._process(params.process_id)
        if process.starting:
            raise RpcError(INVALID_REQUEST, f"process id {params.process_id} is starting")
        wait = max(0, params.wait_ms or 0) / 1000.0
        result = await process.output.read(params.after_seq or 0, params.max_bytes, wait)
        self._check_ready("process/read")
        return _read_result(result, process)

    async def _process_write(self, params: m.WriteParams) -> dict[str, Any]:
        if not params.write_id:
            raise RpcError(INVALID_PARAMS, "writeId must not be empty")
        try:
            data = decode_base64(params.chunk)
        except Base64Error as exc:
            raise RpcError(INVALID_PARAMS, str(exc)) from None
        process = self._session().processes.get(params.process_id)
        if process is None:
            return {"status": "unknownProcess"}
        if params.close_stdin and process.tty:
            raise RpcError(
                INVALID_PARAMS, "closeStdin needs a piped stdin (pipeStdin), not a terminal"
            )
        try:
            status = await process.write(data, params.write_id, close=params.close_stdin)
        except StdinClosed:
            raise RpcError(INTERNAL_ERROR, "failed to write to process stdin") from None
        return {"status": status}

    async def _process_signal(self, params: m.SignalParams) -> dict[str, Any]:
        process = self._session().processes.get(params.process_id)
        if process is not None:
            process.interrupt()
        return {}

    async def _process_terminate(self, params: m.TerminateParams) -> dict[str, Any]:
        process = self._session().processes.get(params.process_id)
        return {"running": process is not None and process.terminate()}

    async def _process_resize_pty(self, params: m.ResizePtyParams) -> dict[str, Any]:
        process = self._session().processes.get(params.process_id)
        if process is not None and not process.tty:
            raise RpcError(INVALID_PARAMS, f"process `{params.process_id}` has no terminal")
        resized = process is not None and process.resize(params.size.rows, params.size.cols)
        return {"resized": resized}


def _forget_if_same(processes: dict[str, ManagedProcess], key: str, process: Any) -> None:
    """Undo a registration, unless another start has taken the id meanwhile."""
    if processes.get(key) is process:
        del processes[key]


def _network_open(sandbox: Any) -> bool:
    """Whether the request's own profile opens the network (unsandboxed: it does)."""
    if not isinstance(sandbox, dict):
        return True
    permissions = sandbox.get("permissions")
    return not isinstance(permissions, dict) or permissions.get("network") == "enabled"


def _check_new(session: Session, process_id: str) -> None:
    if process_id in session.processes:
        raise RpcError(INVALID_REQUEST, f"process {process_id} already exists")


def _sandboxed_command(
    params: m.StartParams,
    cwd: str,
    routing: NetworkRouting | None,
    settings: SandboxSettings,
    env: dict[str, str],
) -> SandboxedCommand | None:
    if params.sandbox is None and routing is None and settings.floor is None:
        return None
    try:
        return prepare_command(
            params.sandbox,
            params.argv,
            cwd,
            params.arg0,
            routing,
            settings,
            tty=params.tty,
            env=env,
        )
    except SandboxRefused as exc:
        raise RpcError(INVALID_PARAMS, str(exc)) from None
