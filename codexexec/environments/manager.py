"""EnvironmentManager: named environments and their connection lifecycle, as Codex has it.

* Once a whole snapshot has validated, every websocket and registry environment starts
  connecting in the background, so the first command does not pay for it. A stdio
  environment stays unspawned until something uses it: its program is the connection.
* All callers share an environment's one initial attempt, bounded by its own timeouts,
  and its saved result: a failed initial attempt is final for that environment.
* A dropped connection is recovered inside the client, resuming the same session, so
  running processes and their output survive; if that fails for good, the next caller
  starts one fresh attempt (a new session) that concurrent callers share. A failed
  attempt fails the operation that waited for it and does not stop later ones.
* Replacing or removing an environment ends its lifetime: a pending start is cancelled
  (its waiters are told why) and its connection closed.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
from collections.abc import Collection

import msgspec

from codexexec.client.client import LOCAL, ExecServerClient
from codexexec.client.errors import ExecServerError
from codexexec.client.recovering import RecoveringClient
from codexexec.environments.config import (
    LOCAL_ENVIRONMENT_ID,
    PROTOCOL_ERROR,
    EnvironmentsConfig,
    EnvironmentSpec,
    RegistrySpec,
    StdioSpec,
)
from codexexec.environments.connect import Timings, connect_environment, load_transport_code
from codexexec.environments.kept import connect_kept

log = logging.getLogger(__name__)


class LocalSpec(msgspec.Struct, frozen=True):
    """The machine this process runs on: an exec-server inside this process."""

    id: str = LOCAL_ENVIRONMENT_ID
    kind = "local"
    target = "this process"
    reconnectable = False


class Status(enum.StrEnum):
    READY = "ready"
    # Not connected yet: the initial attempt is under way, or (stdio) nothing used it yet.
    PENDING = "pending"
    # The connection dropped and its session is being resumed.
    RECONNECTING = "reconnecting"
    DISCONNECTED = "disconnected"


class Environment:
    def __init__(self, spec: EnvironmentSpec | LocalSpec, label: str | None = None) -> None:
        self.spec = spec
        # The name errors and handles use: the id, or the URL an ad-hoc target was given as.
        self.id = label or spec.id
        self._startup: asyncio.Task[ExecServerClient] | None = None
        self._background: asyncio.Task[None] | None = None
        self._reconnect: asyncio.Task[ExecServerClient] | None = None
        self._current: ExecServerClient | None = None
        self._others: list[ExecServerClient] = []
        self._closed = False
        self._closing: asyncio.Task[None] | None = None
        # Physical connection attempts so far, and the step timings of the latest success.
        self.attempts = 0
        self.timings: Timings | None = None

    @property
    def kind(self) -> str:
        return self.spec.kind

    @property
    def lazy(self) -> bool:
        """Connects only when used (stdio: spawning the program is the connection)."""
        return self.spec.kind in ("stdio", "local")

    # -- lifecycle ------------------------------------------------------------------

    def start_connecting(self) -> None:
        """Begin the initial attempt in the background (websocket and registry kinds)."""
        if self.lazy or self._background is not None or self._closed:
            return
        self._background = asyncio.create_task(self._start_in_background())

    async def _start_in_background(self) -> None:
        try:
            await self.wait_until_ready()
        except ExecServerError as exc:
            log.debug("environment %s did not start: %s", self.id, exc)

    def startup_finished(self) -> bool:
        if isinstance(self.spec, LocalSpec):
            return True
        return self._startup is not None and self._startup.done()

    async def wait_until_ready(self) -> None:
        """Wait for the initial attempt (starting it if need be); raise its saved error."""
        await self._initial_client()

    async def client(self) -> ExecServerClient:
        """The environment's connected client, connecting or reconnecting as needed."""
        current = self._current
        if current is not None and current.connected:
            return current
        if current is None:
            client = await self._initial_client()
            if client.connected or not self.spec.reconnectable:
                return client
        elif not self.spec.reconnectable:
            return current  # stdio: the session died with its program; calls fail clearly
        return await self._shared_reconnect()

    async def resume(self, session_id: str) -> ExecServerClient:
        """A connection of its own that resumes ``session_id`` (e.g. a detached process's)."""
        self._check_open()
        client: ExecServerClient
        if isinstance(self.spec, LocalSpec):
            raise ExecServerError("the local environment has no sessions to resume")
        if isinstance(self.spec, StdioSpec):
            client = await connect_kept(self.spec, self.id, resume_session_id=session_id)
        else:
            client, _ = await connect_environment(self.spec, self.id, resume_session_id=session_id)
        self._others.append(client)
        return client

    async def lasting_client(self) -> ExecServerClient:
        """A client whose session outlives this process (for detached processes).

        A stdio environment's program dies with the command that spawned it, so its
        lasting sessions live in the environment's keeper instead (environments/keeper.py).
        """
        if not isinstance(self.spec, StdioSpec):
            return await self.client()
        self._check_open()
        client = await connect_kept(self.spec, self.id)
        self._others.append(client)
        return client

    def status(self) -> Status:
        """What is known now; never starts, waits for or repairs a connection."""
        if isinstance(self.spec, LocalSpec):
            return Status.READY
        current = self._current
        if current is not None:
            if isinstance(current, RecoveringClient) and current.recovering:
                return Status.RECONNECTING
            return Status.READY if current.connected else Status.DISCONNECTED
        if self._startup is not None and self._startup.done():
            return Status.DISCONNECTED
        return Status.PENDING

    def error(self) -> str | None:
        """Why the environment is disconnected, when it is."""
        current = self._current
        if current is not None and not current.connected:
            return current.lost_reason
        startup = self._startup
        if current is None and startup is not None and startup.done() and not startup.cancelled():
            exc = startup.exception()
            return str(exc) if exc is not None else None
        return None

    def close_soon(self) -> None:
        """End this environment's lifetime: cancel pending work now, close in the background."""
        if self._closed:
            return
        self._closed = True
        for task in (self._background, self._startup, self._reconnect):
            if task is not None and not task.done():
                task.cancel()
        self._closing = asyncio.create_task(self._close_clients())

    async def aclose(self) -> None:
        self.close_soon()
        for task in (self._background, self._startup, self._reconnect):
            if task is not None:
                with contextlib.suppress(asyncio.CancelledError, ExecServerError):
                    await task
        if self._closing is not None:
            await self._closing
        await self._close_clients()  # a client an attempt finished with while we waited

    async def _close_clients(self) -> None:
        clients = [c for c in (self._current, *self._others) if c is not None]
        self._current, self._others = None, []
        for client in clients:
            with contextlib.suppress(ExecServerError, OSError):
                await client.close()

    # -- attempts -------------------------------------------------------------------

    def _check_open(self) -> None:
        if self._closed:
            raise ExecServerError(f"environment `{self.id}` was replaced or removed")

    async def _initial_client(self) -> ExecServerClient:
        self._check_open()
        if self._startup is None:
            self._startup = asyncio.create_task(self._connect_once())
        client = await self._shared(self._startup)
        if self._current is None:
            self._current = client
        return client

    async def _shared_reconnect(self) -> ExecServerClient:
        self._check_open()
        task = self._reconnect
        if task is None:
            task = self._reconnect = asyncio.create_task(self._replace_current())
            # Forget only this attempt once it is over, so a later call can try again.
            task.add_done_callback(self._forget_reconnect)
        return await self._shared(task)

    def _forget_reconnect(self, task: asyncio.Task[ExecServerClient]) -> None:
        if self._reconnect is task:
            self._reconnect = None

    async def _shared(self, task: asyncio.Task[ExecServerClient]) -> ExecServerClient:
        try:
            # Shielded: one waiter giving up must not cancel the attempt the others share.
            return await asyncio.shield(task)
        except asyncio.CancelledError:
            current = asyncio.current_task()
            if current is not None and current.cancelling():
                raise  # this waiter itself was cancelled
            why = "was replaced or removed" if self._closed else "had its attempt cancelled"
            raise ExecServerError(f"environment `{self.id}` {why} before it connected") from None

    async def _replace_current(self) -> ExecServerClient:
        client = await self._connect_once()
        old, self._current = self._current, client
        if old is not None:
            await old.close()
        return client

    async def _connect_once(self) -> ExecServerClient:
        self.attempts += 1
        if isinstance(self.spec, LocalSpec):
            load_transport_code(None)
            loop = asyncio.get_running_loop()
            started = loop.time()
            client = await ExecServerClient.connect(LOCAL)
            self.timings = Timings({"connect": loop.time() - started})
            return client
        client, self.timings = await connect_environment(self.spec, self.id)
        return client


def _snapshot_error(message: str) -> ExecServerError:
    return ExecServerError(PROTOCOL_ERROR + message)


class EnvironmentManager:
    """The named environments of one harness; lookups return the same object each time."""

    def __init__(
        self, *, include_local: bool = True, default: str | None = None, autostart: bool = True
    ) -> None:
        self._local = Environment(LocalSpec()) if include_local else None
        self._environments: dict[str, Environment] = {}
        self._adhoc: dict[str, Environment] = {}
        self.default_id = default
        # False for a user that only resumes sessions: a background start would open a
        # session nobody uses.
        self.autostart = autostart

    @classmethod
    def from_config(
        cls,
        config: EnvironmentsConfig,
        *,
        only: Collection[str] | None = None,
        autostart: bool = True,
    ) -> EnvironmentManager:
        """Validate the whole snapshot, then register (``only``: just these) and start."""
        ids = [spec.id for spec in config.environments]
        _validate_snapshot(ids, config.default, config.include_local)
        manager = cls(
            include_local=config.include_local, default=config.default, autostart=autostart
        )
        for spec in config.environments:
            if only is None or spec.id in only:
                manager._environments[spec.id] = Environment(spec)
        for environment in manager._environments.values():
            manager._start(environment)
        return manager

    def _start(self, environment: Environment) -> None:
        if self.autostart:
            environment.start_connecting()

    def get(self, environment_id: str) -> Environment | None:
        if environment_id == LOCAL_ENVIRONMENT_ID:
            return self._local
        return self._environments.get(environment_id)

    def environments(self) -> list[Environment]:
        """Local first (when included), then the others in the order they were added."""
        local = [self._local] if self._local is not None else []
        return [*local, *self._environments.values()]

    def default_environment(self) -> Environment | None:
        return self.get(self.default_id) if self.default_id is not None else None

    def default_environment_ids(self) -> list[str]:
        """The default first, then every other id; empty when the default is disabled."""
        if self.default_id is None:
            return []
        ids = [e.id for e in self.environments()]
        return [self.default_id, *(i for i in ids if i != self.default_id)]

    def upsert(self, spec: EnvironmentSpec) -> Environment:
        """Add or replace an environment (the default stays); the old one's work stops."""
        if not spec.id.strip():
            raise _snapshot_error("environment id cannot be empty")
        if spec.id == LOCAL_ENVIRONMENT_ID:
            raise _snapshot_error("environment id `local` is reserved for EnvironmentManager")
        environment = Environment(spec)
        old = self._environments.get(spec.id)
        self._environments[spec.id] = environment
        if old is not None:
            old.close_soon()
        self._start(environment)
        return environment

    def remove(self, environment_id: str) -> None:
        old = self._environments.pop(environment_id, None)
        if old is not None:
            old.close_soon()

    def resolve(
        self,
        target: str,
        *,
        config: EnvironmentsConfig | None = None,
        token_file: str | None = None,
    ) -> Environment:
        """A configured name, `local`, a ws:// URL, or ENV@REGISTRY_URL (its bearer read
        from ``token_file`` when given), as an Environment."""
        environment = self.get(target)
        if environment is not None:
            return environment
        environment = self._adhoc.get(target)
        if environment is None:
            from codexexec.environments.targets import spec_for_target

            spec = spec_for_target(target, config)
            if token_file is not None and isinstance(spec, RegistrySpec):
                spec = msgspec.structs.replace(spec, token_file=token_file)
            environment = Environment(spec, label=target)
            self._adhoc[target] = environment
            self._start(environment)
        return environment

    async def aclose(self) -> None:
        everything = [*self.environments(), *self._adhoc.values()]
        self._environments.clear()
        self._adhoc.clear()
        for environment in everything:
            await environment.aclose()


def _validate_snapshot(ids: list[str], default: str | None, include_local: bool) -> None:
    """Codex's checks on any snapshot, in Codex's order."""
    seen = {LOCAL_ENVIRONMENT_ID} if include_local else set()
    for environment_id in ids:
        if not environment_id:
            raise _snapshot_error("environment id cannot be empty")
        if environment_id == LOCAL_ENVIRONMENT_ID:
            raise _snapshot_error("environment id `local` is reserved for EnvironmentManager")
        if environment_id in seen:
            raise _snapshot_error(f"environment id `{environment_id}` is duplicated")
        seen.add(environment_id)
    if default is not None and default not in seen:
        raise _snapshot_error(f"default environment `{default}` is not configured")
