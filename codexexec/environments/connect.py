"""One connection attempt to one environment: open the transport, then `initialize`.

Each step is bounded by the environment's own timeout and timed, and a failure names
the environment, the step (connect, auth, handshake, initialize) and the cause, in
Codex's words where Codex has them. Whether trying again may help is recorded too,
so session recovery knows when to stop.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import re
from collections.abc import Awaitable, Callable
from typing import Literal, TypeVar

import msgspec

from codexexec.client.errors import ExecServerError
from codexexec.client.recovering import (
    OpenFailed,
    RecoveringClient,
    RetryDelay,
    retry_every_100ms,
)
from codexexec.environments.config import (
    DEFAULT_TOKEN_ENV,
    EnvironmentSpec,
    RegistrySpec,
    StdioSpec,
    WebSocketSpec,
)
from codexexec.environments.errors import EnvironmentsError
from codexexec.transport.base import MessageTransport

Step = Literal["connect", "auth", "handshake", "initialize"]
CONNECTION_TOKEN_ENV = "CODEX_EXEC_SERVER_CONNECTION_TOKEN"
_STATUS = re.compile(r"\((\d{3})\)")
_T = TypeVar("_T")


class EnvironmentUnavailable(OpenFailed, EnvironmentsError):
    """An attempt failed: ``environment `devbox`: connect: <cause>``."""

    def __init__(self, environment: str, step: Step, cause: str, *, retryable: bool) -> None:
        super().__init__(f"environment `{environment}`: {step}: {cause}", retryable=retryable)
        self.environment = environment
        self.step = step
        self.cause = cause


class Timings(msgspec.Struct):
    """Seconds each step of the last successful attempt took."""

    steps: dict[str, float] = msgspec.field(default_factory=dict)

    @property
    def total(self) -> float:
        return sum(self.steps.values())


def format_duration(seconds: float) -> str:
    """Like Rust's Duration debug output, which Codex's messages quote: 10s, 500ms, 1.5s."""
    if seconds < 1:
        return f"{seconds * 1000:g}ms"
    return f"{seconds:g}s"


async def connect_environment(
    spec: EnvironmentSpec, label: str, *, resume_session_id: str | None = None
) -> tuple[RecoveringClient, Timings]:
    """A new session on ``spec`` (or ``resume_session_id`` resumed), ready for calls."""
    timings = Timings()
    load_transport_code(spec)
    loop = asyncio.get_running_loop()
    started = loop.time()
    transport = await open_transport(spec, label)
    timings.steps["connect"] = loop.time() - started
    started = loop.time()
    client = await initialize_over(
        spec,
        label,
        transport,
        lambda: RecoveringClient.over(
            transport, description=label, resume_session_id=resume_session_id, timeout=None
        ),
    )
    timings.steps["initialize"] = loop.time() - started
    if spec.reconnectable:
        client.enable_recovery(
            lambda: open_transport(spec, label),
            initialize_timeout=spec.initialize_timeout,
            retry_delay=_retry_delay(spec, client.session_id),
        )
    return client, timings


async def initialize_over(
    spec: EnvironmentSpec,
    label: str,
    transport: MessageTransport,
    initialize: Callable[[], Awaitable[_T]],
) -> _T:
    """Run ``initialize`` on a fresh ``transport``, bounded; failures name the step and cause."""
    try:
        async with asyncio.timeout(spec.initialize_timeout):
            return await initialize()
    except TimeoutError:
        raise EnvironmentUnavailable(
            label,
            "initialize",
            "timed out waiting for exec-server initialize handshake after "
            + format_duration(spec.initialize_timeout),
            retryable=True,
        ) from None
    except ExecServerError as exc:
        cause = await _initialize_failure(transport, exc)
        raise EnvironmentUnavailable(
            label, "initialize", cause, retryable=exc.code is None
        ) from None


def load_transport_code(spec: object) -> None:
    """Import what connecting to ``spec`` (None: the local environment) runs, so the timings
    measure the connection, not this process's first use of a module (`env list` showed
    tens of milliseconds of imports as a loopback server's latency)."""
    import importlib

    modules = {
        WebSocketSpec: ("codexexec.transport.websocket",),
        StdioSpec: ("codexexec.transport.stdio",),
        type(None): ("codexexec.server.app", "codexexec.transport.memory"),
    }.get(type(spec), ("codexexec.client.client", "codexexec.remote.registry"))
    for module in modules:
        importlib.import_module(module)


async def open_transport(spec: EnvironmentSpec, label: str) -> MessageTransport:
    if isinstance(spec, WebSocketSpec):
        return await _open_websocket(spec, label)
    if isinstance(spec, StdioSpec):
        return await _spawn(spec, label)
    return await _open_registry(spec, label)


async def _open_websocket(spec: WebSocketSpec, label: str) -> MessageTransport:
    from codexexec.transport.websocket import ConnectError, connect_websocket

    token = spec.bearer_token
    if token is None:
        token = os.environ.get(CONNECTION_TOKEN_ENV) or None
    try:
        async with asyncio.timeout(spec.connect_timeout):
            # The library's own timeout stays out of the way of the environment's.
            return await connect_websocket(
                spec.url, token=token, open_timeout=spec.connect_timeout + 1
            )
    except TimeoutError:
        cause = (
            f"timed out connecting to exec-server websocket `{spec.url}` after "
            + format_duration(spec.connect_timeout)
        )
        raise EnvironmentUnavailable(label, "connect", cause, retryable=True) from None
    except ConnectError as exc:
        step: Step = "auth" if " 401" in str(exc) or " 403" in str(exc) else "connect"
        raise EnvironmentUnavailable(label, step, str(exc), retryable=step == "connect") from None


async def _spawn(spec: StdioSpec, label: str) -> MessageTransport:
    from codexexec.transport.stdio import spawn_stdio_transport

    env = {**os.environ, **spec.env} if spec.env else None
    try:
        return await spawn_stdio_transport(spec.program, list(spec.args), env=env, cwd=spec.cwd)
    except OSError as exc:
        cause = f"failed to spawn exec-server: {exc.strerror or exc}"
        raise EnvironmentUnavailable(label, "connect", cause, retryable=False) from None


def _registry_token(spec: RegistrySpec, label: str) -> str:
    """The harness bearer for a registry entry: its token file, or its variable."""
    from codexexec.remote.registry import RegistryError, read_token

    if spec.token_file is not None:
        try:
            token = read_token(spec.token_file)
        except RegistryError as exc:
            raise EnvironmentUnavailable(label, "auth", str(exc), retryable=False) from None
        assert token is not None  # read_token raises for a file without a token
        return token
    variable = spec.token_env or DEFAULT_TOKEN_ENV
    token = os.environ.get(variable, "").strip()
    if not token:
        raise EnvironmentUnavailable(
            label,
            "auth",
            f"environment registry bearer token is required: set {variable} "
            "(or token_file in the environment's entry)",
            retryable=False,
        )
    return token


async def _open_registry(spec: RegistrySpec, label: str) -> MessageTransport:
    from codexexec.client.client import open_registry_transport
    from codexexec.remote.auth.base import AuthError
    from codexexec.remote.registry import Credential, RegistryError

    token = _registry_token(spec, label)
    credential: Credential = token
    if spec.account_id:
        from codexexec.remote.auth.bearer import StaticBearer

        try:
            credential = StaticBearer(token, f"environment `{spec.id}`", spec.account_id)
        except AuthError as exc:
            raise EnvironmentUnavailable(label, "auth", str(exc), retryable=False) from None
    try:
        async with asyncio.timeout(spec.connect_timeout):
            # Retries stop a second short of the budget, so a still-offline environment
            # is reported as such rather than as a time-out.
            offline_wait = max(0.0, spec.connect_timeout - 1.0)
            return await open_registry_transport(
                spec.registry, spec.environment_id, credential, offline_wait=offline_wait
            )
    except TimeoutError:
        cause = (
            f"timed out connecting to `{spec.environment_id}` through {spec.registry} after "
            + format_duration(spec.connect_timeout)
        )
        raise EnvironmentUnavailable(label, "connect", cause, retryable=True) from None
    except (RegistryError, ExecServerError) as exc:
        step, retryable = _classify_registry_failure(exc)
        raise EnvironmentUnavailable(label, step, str(exc), retryable=retryable) from None


def _classify_registry_failure(exc: Exception) -> tuple[Step, bool]:
    """Which step a registry-path failure belongs to, and whether it may pass."""
    text = str(exc)
    code = getattr(exc, "code", None)
    if "authentication failed" in text:
        return "auth", False
    if "cleartext relay" in text:  # a policy refusal, not a transient fault
        return "handshake", False
    if "Noise" in text or "handshake" in text or code == "registry_authentication_rejected":
        return "handshake", True
    if code == "environment_offline":
        return "connect", True
    status = _STATUS.search(text)
    if status is not None:
        number = int(status.group(1))
        return "connect", number >= 500 or number in (408, 429)
    return "connect", True


def _retry_delay(spec: EnvironmentSpec, session_id: str) -> RetryDelay:
    if isinstance(spec, RegistrySpec):
        return lambda attempt: _registry_backoff(session_id, attempt)
    return retry_every_100ms


def _registry_backoff(session_id: str, attempt: int) -> float:
    """Codex's registry recovery delay: 0.5 s doubling to 5 s, plus a stable jitter."""
    base = min(0.5 * float(2 ** min(attempt, 4)), 5.0)
    digest = hashlib.sha256(f"{session_id}:{attempt}".encode()).digest()
    return base + base / 2 * (int.from_bytes(digest[:4], "big") / 2**32)


async def _initialize_failure(transport: MessageTransport, error: ExecServerError) -> str:
    """Why initialize failed, with what a spawned program said about it."""
    if error.code is not None:
        return f"exec-server rejected request ({error.code}): {error}"
    return await closed_cause(transport)


async def closed_cause(transport: MessageTransport) -> str:
    """Why a transport to an exec-server ended, with what a spawned program said about it."""
    from codexexec.transport.stdio import StreamTransport

    if not isinstance(transport, StreamTransport):
        return "exec-server transport closed"
    if transport.not_json is not None:
        return f"the program's output is not JSON-RPC: `{transport.not_json}`"
    code = await transport.wait_exited(1.0)
    tail = transport.stderr_tail()
    cause = "exec-server transport closed"
    if code is not None and code >= 0:
        cause += f" (the program exited with code {code})"
    elif code is not None:
        cause += f" (the program was killed by signal {-code})"
    if tail:
        cause += f": {tail[-1]}"
    return cause
