"""ExecServerClient: drive any exec-server (codexexec's or Codex's) from asyncio.

    async with await ExecServerClient.connect("ws://127.0.0.1:4000") as client:
        process = await client.start(["sh", "-c", "echo hi"])
        async for event in process.events():
            ...

Targets: ``local`` (an exec-server embedded in this process, no socket), ``ws://…`` or
``wss://…``, or any MessageTransport through ``ExecServerClient.over``.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import itertools
import logging
import os
import uuid
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Self

import msgspec

from codexexec.client.closing import AsyncClosing
from codexexec.client.environment_config import EnvironmentConfig, read_environment_config
from codexexec.client.errors import ExecServerError
from codexexec.client.events import Closed, EventBuffer, Exited, Output, ReadResponse
from codexexec.client.notices import tell_waiting
from codexexec.client.process import RemoteProcess
from codexexec.protocol.base64_codec import decode_base64, encode_base64
from codexexec.protocol.jsonrpc import METHOD_NOT_FOUND, Notification, Request, RpcError
from codexexec.protocol.path_uri import InvalidPathUri, PathConvention, PathUri
from codexexec.rpc.peer import RpcPeer
from codexexec.sandbox.policy import (
    LegacyMode,
    SandboxPolicyError,
    deny_entries,
    legacy_profile,
    sandbox_context_json,
    under_home,
    with_entries,
)
from codexexec.transport.base import MessageTransport, TransportClosed

if TYPE_CHECKING:
    from codexexec.client.files import RemoteFiles
    from codexexec.client.http import HttpClient
    from codexexec.remote.registry import Credential

LOCAL = "local"
MAX_DECISIONS_KEPT = 256
NetworkAsk = Callable[[dict[str, Any]], Awaitable[str]]


# Opt-in for environments whose executor registered codexexec's cleartext relay profile.
ALLOW_CLEARTEXT_RELAY_ENV = "CODEXEXEC_ALLOW_CLEARTEXT_RELAY"


class NetworkProxyRequest(msgspec.Struct, frozen=True):
    """Run a command behind the executor's managed proxy (codexexec's `networkProxy`)."""

    allowed_domains: tuple[str, ...] = ()
    denied_domains: tuple[str, ...] = ()
    allow_local: bool = False
    ask_unknown: bool = False
    mode: str = "full"

    def to_json(self) -> dict[str, Any]:
        return {
            "allowedDomains": list(self.allowed_domains),
            "deniedDomains": list(self.denied_domains),
            "allowLocal": self.allow_local,
            "askUnknown": self.ask_unknown,
            "mode": self.mode,
        }


log = logging.getLogger(__name__)

DEFAULT_CLIENT_NAME = "codexexec"
# Waits between connection attempts while an environment is offline.
OFFLINE_RETRY_FIRST_DELAY = 0.25
OFFLINE_RETRY_MAX_DELAY = 2.0


def _decode_chunk(item: Mapping[str, Any]) -> Output:
    chunk = item["chunk"]  # bytes when the message took the fast path (jsonrpc.parse_message)
    data = chunk if isinstance(chunk, bytes) else decode_base64(chunk)
    return Output(int(item["seq"]), str(item["stream"]), data)


async def open_registry_transport(
    registry: str, environment_id: str, token: Credential, *, offline_wait: float = 0.0
) -> MessageTransport:
    """A stream to ``environment_id`` through ``registry``: Noise, or cleartext if opted in.

    An environment whose executor is between two connections to the rendezvous answers
    `environment_offline`; that is tried again for up to ``offline_wait`` seconds (the
    executor reconnects within a second or two), on a first connection as on a resumed one.
    Raises RegistryError, or ExecServerError when only a cleartext relay is on offer.
    """
    from codexexec.remote.registry import RegistryError
    from codexexec.transport.noise_harness import connect_noise_harness
    from codexexec.transport.relay import HarnessRelayTransport

    loop = asyncio.get_running_loop()
    deadline = loop.time() + offline_wait
    delay = OFFLINE_RETRY_FIRST_DELAY
    while True:
        try:
            # End-to-end encrypted by default, as Codex executors require.
            return await connect_noise_harness(registry, environment_id, token)
        except RegistryError as exc:
            if exc.code == "environment_offline" and loop.time() + delay < deadline:
                log.info("%s@%s: %s; trying again", environment_id, registry, exc)
                if delay == OFFLINE_RETRY_FIRST_DELAY:
                    tell_waiting(
                        f"environment `{environment_id}` is offline (its executor may be "
                        f"reconnecting); waiting up to {offline_wait:g}s"
                    )
                await asyncio.sleep(delay)
                delay = min(delay * 2, OFFLINE_RETRY_MAX_DELAY)
                continue
            if exc.code != "security_profile_mismatch":
                raise
            break
    # A codexexec executor registered for the cleartext relay. Only on request:
    # otherwise a registry could downgrade us just by claiming a mismatch.
    if os.environ.get(ALLOW_CLEARTEXT_RELAY_ENV) != "1":
        raise ExecServerError(
            f"environment `{environment_id}` is registered for the cleartext relay, "
            f"which the registry can read; set {ALLOW_CLEARTEXT_RELAY_ENV}=1 to use it anyway"
        )
    return await HarnessRelayTransport.connect(registry, environment_id, token)


class ExecServerClient(AsyncClosing):
    _peer: RpcPeer
    _runner: asyncio.Task[None]

    def __init__(
        self, description: str, on_close: Callable[[], Awaitable[None]] | None = None
    ) -> None:
        self.description = description
        self._on_close = on_close
        self._buffers: dict[str, EventBuffer] = {}
        self._write_ids = itertools.count(1)
        self._write_prefix = uuid.uuid4().hex[:8]
        self.session_id = ""
        # Answers the executor's `network/policyRequest` (managed network "ask" domains).
        self.on_network_request: NetworkAsk | None = None
        self._network_decisions: dict[str, list[dict[str, Any]]] = {}
        self.environment_info: dict[str, Any] = {}

    # `http/*` and `fs/*` are made on first use: a client that only runs commands never loads
    # them (each costs start-up time, issue #17).
    @functools.cached_property
    def http(self) -> HttpClient:
        from codexexec.client.http import HttpClient

        return HttpClient(self._call)

    @functools.cached_property
    def files(self) -> RemoteFiles:
        from codexexec.client.files import RemoteFiles

        return RemoteFiles(self._call, self._path_convention)

    # -- connecting -----------------------------------------------------------------

    @classmethod
    async def connect(
        cls,
        target: str,
        *,
        client_name: str = DEFAULT_CLIENT_NAME,
        resume_session_id: str | None = None,
        token: str | None = None,
        timeout: float = 10.0,
    ) -> ExecServerClient:
        if target == LOCAL:
            return await cls._connect_local(client_name, timeout)
        if target.startswith(("ws://", "wss://")):
            from codexexec.transport.websocket import ConnectError, connect_websocket

            if token is None:
                token = os.environ.get("CODEX_EXEC_SERVER_CONNECTION_TOKEN") or None
            try:
                transport = await connect_websocket(target, token=token, open_timeout=timeout)
            except ConnectError as exc:
                raise ExecServerError(str(exc)) from None
            return await cls.over(
                transport,
                description=target,
                client_name=client_name,
                resume_session_id=resume_session_id,
                timeout=timeout,
            )
        environment_id, at, registry = target.partition("@")
        if at and registry.startswith(("http://", "https://")):
            return await cls._connect_registry(
                registry, environment_id, client_name, resume_session_id, timeout
            )
        raise ExecServerError(
            f"unknown environment `{target}`: expected `local`, a ws:// URL or ENV@REGISTRY_URL"
        )

    @classmethod
    async def _connect_registry(
        cls,
        registry: str,
        environment_id: str,
        client_name: str,
        resume_session_id: str | None,
        timeout: float,
    ) -> ExecServerClient:
        from codexexec.remote.registry import RegistryError, read_token

        try:
            transport = await open_registry_transport(
                registry, environment_id, read_token(None), offline_wait=timeout
            )
        except RegistryError as exc:
            raise ExecServerError(str(exc)) from None
        return await cls.over(
            transport,
            description=f"{environment_id}@{registry}",
            client_name=client_name,
            resume_session_id=resume_session_id,
            timeout=timeout,
        )

    @classmethod
    async def _connect_local(cls, client_name: str, timeout: float) -> ExecServerClient:
        from codexexec.server.app import ExecServer
        from codexexec.transport.memory import memory_pair

        server = ExecServer()
        client_end, server_end = memory_pair()
        serving = asyncio.create_task(server.serve(server_end, malformed_prefix="invalid message"))

        async def stop_server() -> None:
            await server.aclose()
            serving.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await serving

        return await cls.over(
            client_end,
            description=LOCAL,
            client_name=client_name,
            timeout=timeout,
            on_close=stop_server,
        )

    @classmethod
    async def over(
        cls,
        transport: MessageTransport,
        *,
        description: str,
        client_name: str = DEFAULT_CLIENT_NAME,
        resume_session_id: str | None = None,
        timeout: float | None = 10.0,
        on_close: Callable[[], Awaitable[None]] | None = None,
    ) -> Self:
        """Initialize a session over an already-open transport."""
        client = cls(description, on_close)
        client._attach(transport)
        try:
            result = await client._initialize(client_name, resume_session_id, timeout)
        except BaseException:
            await client.close()
            raise
        client.session_id = str(result.get("sessionId", ""))
        client.environment_info = result.get("environmentInfo") or {}
        return client

    def _attach(self, transport: MessageTransport) -> None:
        """Speak JSON-RPC over ``transport`` from now on (the first one, or a replacement)."""
        self._peer = RpcPeer(
            transport, on_notification=self._on_notification, on_request=self._on_request
        )
        self._runner = asyncio.create_task(self._peer.run())
        self._runner.add_done_callback(lambda _: self._connection_lost())

    def _connection_lost(self) -> None:
        # Iterators waiting for events must learn that the connection is gone; HTTP body
        # streams cannot resume (the executor aborted them), so they end with an error.
        if "http" in self.__dict__:
            self.http.connection_lost(self.lost_reason)
        self._wake_all()

    async def _initialize(
        self, client_name: str, resume_session_id: str | None, timeout: float | None
    ) -> dict[str, Any]:
        params: dict[str, Any] = {"clientName": client_name}
        if resume_session_id:
            params["resumeSessionId"] = resume_session_id
        result = await self._call_once("initialize", params, timeout=timeout)
        await self._peer.notify("initialized", {})
        return result if isinstance(result, dict) else {}

    async def close(self) -> None:
        await self._peer.transport.close()
        with contextlib.suppress(asyncio.CancelledError):
            await self._runner
        if self._on_close is not None:
            on_close, self._on_close = self._on_close, None
            await on_close()

    @property
    def connected(self) -> bool:
        return not self._peer.closed.is_set()

    @property
    def lost_reason(self) -> str:
        """Why calls fail once the connection is gone, for error messages."""
        return f"exec-server transport disconnected ({self.description})"

    async def wait_closed(self) -> None:
        await self._peer.closed.wait()

    # -- calls ----------------------------------------------------------------------

    async def _call(self, method: str, params: Any, timeout: float | None = None) -> Any:
        # Every method goes through here, so a subclass can recover around it.
        return await self._call_once(method, params, timeout)

    async def _call_once(self, method: str, params: Any, timeout: float | None = None) -> Any:
        try:
            return await self._peer.call(method, params, timeout=timeout)
        except RpcError as exc:
            raise ExecServerError(exc.message, exc.code) from None
        except TransportClosed as exc:
            raise ExecServerError(
                f"exec-server transport disconnected ({self.description}): {exc}"
            ) from None
        except TimeoutError:
            raise ExecServerError(f"{self.description} did not answer `{method}` in time") from None

    async def call(self, method: str, params: Any = None, timeout: float | None = None) -> Any:
        """Any exec-server method, raw: for methods without a typed wrapper yet."""
        return await self._call(method, params, timeout)

    async def environment_status(self) -> str:
        return str((await self._call("environment/status", {}))["status"])

    async def read_environment_config(
        self,
        cwd: str | None,
        config_paths: Sequence[Sequence[str]],
        requirements_paths: Sequence[Sequence[str]] = (),
    ) -> EnvironmentConfig:
        """The executor's Codex config layers for ``cwd``, cut to the given key paths."""
        return await read_environment_config(
            self._call, self._cwd_uri(cwd), config_paths, requirements_paths
        )

    async def start(
        self,
        argv: list[str],
        *,
        cwd: str | None = None,
        env: Mapping[str, str] | None = None,
        inherit_env: bool = True,
        tty: bool = False,
        pipe_stdin: bool = False,
        arg0: str | None = None,
        process_id: str | None = None,
        sandbox: LegacyMode | None = None,
        writable_roots: Sequence[str] = (),
        network: bool = False,
        network_proxy: NetworkProxyRequest | None = None,
        deny_read: Sequence[str] = (),
        deny_write: Sequence[str] = (),
        profile: Mapping[str, Any] | None = None,
    ) -> RemoteProcess:
        """Start ``argv`` on the server. ``cwd`` is a path on the executor host.

        With ``inherit_env`` the child sees the executor's environment (minus names that
        look like secrets, Codex's default) with ``env`` laid over it. ``sandbox`` is
        portable intent (``read-only``, ``workspace-write``, ``danger-full-access``); the
        executor enforces it with its own OS mechanism, the workspace root being ``cwd``;
        ``deny_read`` (paths or globs) and ``deny_write`` (paths) narrow it
        (``sandbox.policy.deny_entries``); a whole ``profile`` (PermissionProfile JSON, e.g.
        from ``sandbox.profile_file``) takes the place of the mode's own.
        """
        process_id = process_id or f"cx-{uuid.uuid4().hex[:12]}"
        # Subscribe before starting, so not one notification is missed.
        self._buffers[process_id] = EventBuffer(complete=True)
        cwd_uri = self._cwd_uri(cwd)
        params: dict[str, Any] = {
            "processId": process_id,
            "argv": list(argv),
            "cwd": cwd_uri,
            "env": dict(env or {}),
            "tty": tty,
            "pipeStdin": pipe_stdin,
            "arg0": arg0,
        }
        if inherit_env:
            params["envPolicy"] = {
                "inherit": "all",
                "ignoreDefaultExcludes": False,
                "exclude": [],
                "set": {},
                "includeOnly": [],
            }
        if sandbox is not None:
            try:
                extra = deny_entries(deny_read, deny_write, self._cwd_uri, self._home_uri)
            except SandboxPolicyError as exc:
                raise ExecServerError(str(exc)) from None
            roots = [self._cwd_uri(r) for r in writable_roots]
            chosen = (
                legacy_profile(sandbox, roots, network, extra)
                if profile is None
                else with_entries(under_home(profile, self._home_uri), roots, extra)
            )
            if chosen is not None:
                params["sandbox"] = sandbox_context_json(chosen, cwd_uri, [cwd_uri])
        if network_proxy is not None:
            # The executor runs the proxy and prepares env + sandbox ports from one snapshot.
            params["networkProxy"] = network_proxy.to_json()
            params["enforceManagedNetwork"] = True
        try:
            result = await self._call("process/start", params)
        except BaseException:
            self._buffers.pop(process_id, None)
            raise
        return RemoteProcess(self, process_id, result.get("sandboxType"))

    def _cwd_uri(self, cwd: str | None) -> str:
        if cwd is None:
            server_cwd = self.environment_info.get("cwd")
            if isinstance(server_cwd, str):
                return server_cwd
            cwd = os.getcwd()
        if cwd.startswith("file:"):
            return cwd
        if self.description == LOCAL:
            cwd = os.path.abspath(cwd)
        try:
            return str(PathUri.from_host_native_path(cwd))
        except InvalidPathUri:
            raise ExecServerError(
                f"working directory `{cwd}` must be an absolute path on the executor host"
            ) from None

    def _home_uri(self, rest: str) -> str:
        """``~/rest`` on the executor: under the home its environment info names."""
        home = self.environment_info.get("userHomeDir")
        if not isinstance(home, str):
            raise ExecServerError(
                "`~/` needs the executor's home directory, and the executor did not say it"
            )
        try:
            return str(PathUri.parse(home).join(rest))
        except InvalidPathUri as exc:
            raise ExecServerError(f"`~/{rest}` on the executor: {exc}") from None

    def _path_convention(self) -> PathConvention:
        """How the executor writes paths (its environment info says which OS it runs)."""
        windows = self.environment_info.get("platformOs") == "windows"
        return PathConvention.WINDOWS if windows else PathConvention.POSIX

    def process(self, process_id: str) -> RemoteProcess:
        """A handle on a process this session already has (e.g. after resuming)."""
        self.buffer(process_id)
        return RemoteProcess(self, process_id, None)

    async def read(
        self, process_id: str, *, after_seq: int = 0, max_bytes: int | None = None, wait_ms: int = 0
    ) -> ReadResponse:
        params: dict[str, Any] = {"processId": process_id, "afterSeq": after_seq, "waitMs": wait_ms}
        if max_bytes is not None:
            params["maxBytes"] = max_bytes
        result = await self._call("process/read", params)
        return ReadResponse(
            chunks=[_decode_chunk(c) for c in result.get("chunks", [])],
            next_seq=int(result["nextSeq"]),
            exited=bool(result.get("exited")),
            exit_code=result.get("exitCode"),
            closed=bool(result.get("closed")),
            failure=result.get("failure"),
            sandbox_denied=bool(result.get("sandboxDenied", False)),
            denial=result.get("sandboxDenial"),
        )

    async def write(
        self,
        process_id: str,
        data: bytes,
        write_id: str | None = None,
        *,
        close_stdin: bool = False,
    ) -> str:
        """Write to the process's stdin; ``close_stdin`` then ends it (needs an executor
        with the ``stdinClose`` capability: see ``can_close_stdin``)."""
        write_id = write_id or f"{self._write_prefix}-{next(self._write_ids)}"
        params: dict[str, Any] = {
            "processId": process_id,
            "chunk": encode_base64(data),
            "writeId": write_id,
        }
        if close_stdin:
            if not self.can_close_stdin:
                raise ExecServerError(
                    f"{self.description} cannot end a process's stdin (no stdinClose capability)"
                )
            params["closeStdin"] = True
        result = await self._call("process/write", params)
        return str(result["status"])

    @property
    def can_close_stdin(self) -> bool:
        """codexexec executors can end a piped stdin; Codex's cannot."""
        capabilities = self.environment_info.get("capabilities") or {}
        return capabilities.get("stdinClose") is True

    @property
    def can_resize_pty(self) -> bool:
        """codexexec executors take process/resizePty; Codex 0.169.0 reserves it only."""
        capabilities = self.environment_info.get("capabilities") or {}
        return capabilities.get("ptyResize") is True

    async def resize_pty(self, process_id: str, rows: int, cols: int) -> bool:
        result = await self._call(
            "process/resizePty",
            {"processId": process_id, "size": {"rows": rows, "cols": cols}},
        )
        return bool(result.get("resized"))

    async def interrupt(self, process_id: str) -> None:
        await self._call("process/signal", {"processId": process_id, "signal": "interrupt"})

    async def terminate(self, process_id: str) -> bool:
        result = await self._call("process/terminate", {"processId": process_id})
        return bool(result.get("running"))

    # -- notifications --------------------------------------------------------------

    async def _on_request(self, request: Request) -> Any:
        if request.method != "network/policyRequest":
            raise RpcError(METHOD_NOT_FOUND, f"client does not handle `{request.method}`")
        params = request.params if isinstance(request.params, dict) else {}
        if self.on_network_request is None:
            return {"decision": "deny"}
        decision = await self.on_network_request(params)
        return {"decision": decision}

    def network_decisions(self, process_id: str) -> list[dict[str, Any]]:
        """`network/policyDecision` notifications received for a process (the newest 256)."""
        return list(self._network_decisions.get(process_id, []))

    def _wake_all(self) -> None:
        for buffer in self._buffers.values():
            buffer.wake()

    def buffer(self, process_id: str) -> EventBuffer:
        buffer = self._buffers.get(process_id)
        if buffer is None:
            buffer = self._buffers[process_id] = EventBuffer(complete=False)
        return buffer

    async def _on_notification(self, notification: Notification) -> None:
        params = notification.params
        if not isinstance(params, dict):
            return
        if notification.method == "http/request/bodyDelta":
            self.http.deliver(params)
            return
        if notification.method == "fs/missingChanged":
            self.files.deliver(params)
            return
        process_id = params.get("processId")
        if notification.method == "network/policyDecision" and isinstance(process_id, str):
            decisions = self._network_decisions.setdefault(process_id, [])
            decisions.append(params)
            del decisions[:-MAX_DECISIONS_KEPT]
            return
        buffer = self._buffers.get(process_id) if isinstance(process_id, str) else None
        if buffer is None:
            return
        method = notification.method
        if method == "process/output":
            await buffer.push(_decode_chunk(params))
        elif method == "process/exited":
            await buffer.push(
                Exited(
                    params.get("seq"),
                    params.get("exitCode"),
                    bool(params.get("sandboxDenied", False)),
                    params.get("sandboxDenial"),
                )
            )
        elif method == "process/closed":
            await buffer.push(Closed(params.get("seq")))
