"""A client whose session outlives its connection (Codex's session recovery).

When the connection drops, the client opens a new one through its ``reopen`` strategy
and resumes the same server session with ``initialize {resumeSessionId}``: processes
keep running on the executor, and every process iterator re-reads what it missed from
the server's retained output, so nothing is lost or repeated. All callers that meet
one outage share one recovery. Calls made while it runs wait for it; a call cut off by
the drop is replayed only when that is safe (reads and queries, and ``process/write``
with its ``writeId``, which the server deduplicates); anything else fails, as in Codex,
because it may or may not have happened — and a ``process/start`` cut off that way is
followed by a ``process/terminate`` once the session is back, so it leaves nothing running.

Recovery retries what may pass (connect errors, the executor briefly offline, the old
connection not yet detached on the server: -32010) until 25 s have gone by, which
leaves margin inside the server's detached-session window. If it gives up, the client
fails for good with one message; a fresh session is the caller's decision.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from codexexec.client.client import DEFAULT_CLIENT_NAME, ExecServerClient
from codexexec.client.errors import ExecServerError, StartInterrupted
from codexexec.client.notices import tell_connection
from codexexec.protocol.jsonrpc import SESSION_ALREADY_ATTACHED
from codexexec.tasks import TaskSet
from codexexec.transport.base import MessageTransport

log = logging.getLogger(__name__)

SESSION_RECOVERY_TIMEOUT_SECONDS = 25.0
# Safe to send again after a drop that may or may not have delivered them: process/read
# and the queries change nothing, and process/write carries a writeId the server dedups.
REPLAYABLE_METHODS = frozenset(
    {
        "process/read",
        "process/write",
        "environment/info",
        "environment/status",
        "environmentConfig/read",
        "fs/readFile",
        "fs/getMetadata",
        "fs/readDirectory",
        "fs/canonicalize",
    }
)


class OpenFailed(ExecServerError):
    """Opening a transport failed; ``retryable`` says whether trying again may help."""

    def __init__(self, message: str, *, retryable: bool) -> None:
        super().__init__(message)
        self.retryable = retryable


Reopen = Callable[[], Awaitable[MessageTransport]]
RetryDelay = Callable[[int], float]


def retry_every_100ms(attempt: int) -> float:
    """Codex's delay between recovery attempts over a websocket."""
    return 0.1


class RecoveringClient(ExecServerClient):
    def __init__(
        self, description: str, on_close: Callable[[], Awaitable[None]] | None = None
    ) -> None:
        super().__init__(description, on_close)
        self._reopen: Reopen | None = None
        self._retry_delay: RetryDelay = retry_every_100ms
        self._client_name = DEFAULT_CLIENT_NAME
        self._initialize_timeout: float | None = None
        self._recovery: asyncio.Task[None] | None = None
        self._closing = False
        self.recovery_timeout = SESSION_RECOVERY_TIMEOUT_SECONDS
        # Why the session is lost for good; None while it is usable or recovering.
        self.failure: str | None = None
        self.recoveries = 0
        self._cleanups = TaskSet()

    def enable_recovery(
        self,
        reopen: Reopen,
        *,
        client_name: str = DEFAULT_CLIENT_NAME,
        initialize_timeout: float | None = None,
        retry_delay: RetryDelay = retry_every_100ms,
    ) -> None:
        """From now on a dropped connection is replaced through ``reopen`` and resumed."""
        self._reopen = reopen
        self._client_name = client_name
        self._initialize_timeout = initialize_timeout
        self._retry_delay = retry_delay
        if not super().connected:  # it dropped already
            self._start_recovery()

    @property
    def connected(self) -> bool:
        """False only once the session is lost for good (or the client was closed)."""
        if self._reopen is None:
            return super().connected
        return self.failure is None and not self._closing

    @property
    def lost_reason(self) -> str:
        return self.failure or super().lost_reason

    @property
    def recovering(self) -> bool:
        return self._recovery is not None and not self._recovery.done()

    async def close(self) -> None:
        self._closing = True
        for cleanup in self._cleanups:
            cleanup.cancel()
        if self._recovery is not None:
            self._recovery.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._recovery
        await super().close()

    # -- calls ----------------------------------------------------------------------

    async def _call(self, method: str, params: Any, timeout: float | None = None) -> Any:
        if self._reopen is None:
            return await self._call_once(method, params, timeout)
        await self._usable()
        peer = self._peer
        try:
            return await self._call_once(method, params, timeout)
        except ExecServerError as exc:
            if not peer.closed.is_set():
                raise
            if method == "process/start":
                self._terminate_in_background(params)
                raise StartInterrupted(
                    f"the connection was lost while the command was starting ({exc}); it may "
                    "have started, and is stopped once the session is back"
                ) from None
            if method not in REPLAYABLE_METHODS:
                raise
        await self._usable()
        return await self._call_once(method, params, timeout)

    def _terminate_in_background(self, params: Any) -> None:
        """A start cut off by the drop may have happened: once the session is back, make
        sure it leaves no process behind that nobody will read (as Codex does)."""
        process_id = params.get("processId") if isinstance(params, dict) else None
        if process_id is None:
            return

        async def terminate() -> None:
            with contextlib.suppress(ExecServerError):
                await self._usable()
                await self._call_once("process/terminate", {"processId": process_id})

        self._cleanups.spawn(terminate())

    async def _usable(self) -> None:
        """Wait out a recovery in progress (starting it if the drop is news)."""
        if self.failure is None and not self._closing and self._peer.closed.is_set():
            self._start_recovery()
        if self._recovery is not None and not self._recovery.done():
            # Shielded: a caller that gives up must not cancel everyone's recovery.
            await asyncio.shield(self._recovery)
        if self.failure is not None:
            raise ExecServerError(self.failure)
        if self._closing:
            raise ExecServerError(f"the client of {self.description} is closed")

    # -- recovery -------------------------------------------------------------------

    def _connection_lost(self) -> None:
        if self._reopen is not None and not self._closing and self.failure is None:
            self._start_recovery()
        super()._connection_lost()

    def _start_recovery(self) -> asyncio.Task[None]:
        if self._recovery is None or self._recovery.done():
            self._recovery = asyncio.create_task(self._recover())
        return self._recovery

    async def _recover(self) -> None:
        assert self._reopen is not None
        lost = self._peer.close_reason or "connection closed"
        reason = f"exec-server transport disconnected: {lost}"
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.recovery_timeout
        last = f"recovery timed out after {self.recovery_timeout:g}s"
        log.info("%s: %s; resuming session %s", self.description, reason, self.session_id)
        tell_connection(
            f"lost the connection to {self.description} ({lost}); reconnecting for up to "
            f"{self.recovery_timeout:g} s"
        )
        attempt = 0
        while True:
            try:
                async with asyncio.timeout_at(deadline):
                    await self._resume_once(self._reopen)
            except TimeoutError:
                break
            except ExecServerError as exc:
                last = str(exc)
                if not (isinstance(exc, OpenFailed) and exc.retryable):
                    break
            else:
                log.info("%s: resumed session %s", self.description, self.session_id)
                tell_connection(f"reconnected to {self.description}; the session goes on")
                self.recoveries += 1
                for buffer in self._buffers.values():
                    buffer.reconnected()
                return
            delay = self._retry_delay(attempt)
            attempt += 1
            if loop.time() + delay >= deadline:
                break
            await asyncio.sleep(delay)
        self.failure = f"{reason}; failed to resume exec-server session: {last}"
        log.warning("%s: %s", self.description, self.failure)
        self._wake_all()

    async def _resume_once(self, reopen: Reopen) -> None:
        transport = await reopen()
        self._attach(transport)
        try:
            result = await self._initialize(
                self._client_name, self.session_id, self._initialize_timeout
            )
        except ExecServerError as exc:
            await transport.close()
            # No code: the new connection dropped or timed out too. -32010: the old one
            # is not detached on the server yet. Any other answer is a refusal.
            retryable = exc.code is None or exc.code == SESSION_ALREADY_ATTACHED
            raise OpenFailed(str(exc), retryable=retryable) from None
        except BaseException:
            await transport.close()
            raise
        if result.get("sessionId") != self.session_id:
            await transport.close()
            raise OpenFailed(
                f"exec-server initialized an unexpected session {result.get('sessionId')}",
                retryable=False,
            )
        self.environment_info = result.get("environmentInfo") or self.environment_info
