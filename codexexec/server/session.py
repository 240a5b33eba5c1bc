"""Sessions: the process table a client owns, surviving its connection for a while.

A session is attached to at most one connection. When that connection ends the
session is detached: its processes keep running and keep retaining output, and a
client may resume it with ``initialize {resumeSessionId}`` until the detached TTL
runs out; then its processes are killed and it is gone.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections import deque
from collections.abc import Callable

from codexexec.protocol.jsonrpc import INVALID_REQUEST, SESSION_ALREADY_ATTACHED, RpcError
from codexexec.protocol.limits import (
    MAX_CLOSED_PROCESSES_PER_SESSION,
    MAX_DETACHED_SESSIONS,
    MAX_RUNNING_PROCESSES_PER_SESSION,
)
from codexexec.protocol.output_notification import OutputMessage
from codexexec.rpc.outbox import Outbox
from codexexec.server.process import ManagedProcess

log = logging.getLogger(__name__)


class Session:
    def __init__(self, session_id: str) -> None:
        self.id = session_id
        self.processes: dict[str, ManagedProcess] = {}
        self.outbox: Outbox | None = None
        # Destinations this session's client allowed "for the session" (managed network).
        self.network_hosts: set[str] = set()
        self._expiry: asyncio.TimerHandle | None = None
        # Ids of closed processes, oldest first, to bound what the session retains, and how
        # many of ``processes`` have closed.
        self._closed: deque[str] = deque()
        self._closed_count = 0

    # Publisher, for this session's processes.
    def publish(self, message: bytes | OutputMessage) -> None:
        if self.outbox is not None:
            self.outbox.post(message)

    def congested(self) -> bool:
        return self.outbox is not None and self.outbox.congested()

    def when_drained(self, callback: Callable[[], None]) -> None:
        if self.outbox is None:
            callback()
        else:
            self.outbox.when_drained(callback)

    @property
    def attached(self) -> bool:
        return self.outbox is not None

    @property
    def running(self) -> int:
        return len(self.processes) - self._closed_count

    def check_room(self) -> None:
        """Refuse a start beyond the running-process bound (protocol/limits.py)."""
        running = self.running
        if running >= MAX_RUNNING_PROCESSES_PER_SESSION:
            raise RpcError(
                INVALID_REQUEST,
                f"too many running processes in this session ({running}, the limit is "
                f"{MAX_RUNNING_PROCESSES_PER_SESSION}); wait for some to exit",
            )

    def retain_closed(self, process: ManagedProcess) -> None:
        """``process`` has closed: keep it readable, within the session's bound."""
        self._closed.append(process.process_id)
        self._closed_count += 1
        while len(self._closed) > MAX_CLOSED_PROCESSES_PER_SESSION:
            oldest = self.processes.get(self._closed.popleft())
            if oldest is not None and oldest.output.closed:
                self.forget(oldest)

    def forget(self, process: ManagedProcess) -> None:
        if self.processes.get(process.process_id) is process:
            del self.processes[process.process_id]
            if process.output.closed:
                self._closed_count -= 1
            process.dispose()

    def dispose(self) -> None:
        if self._expiry is not None:
            self._expiry.cancel()
        for process in list(self.processes.values()):
            process.dispose()
        self.processes.clear()


class SessionRegistry:
    def __init__(self, detached_ttl_seconds: float) -> None:
        self.detached_ttl_seconds = detached_ttl_seconds
        self._sessions: dict[str, Session] = {}
        # Detached sessions, longest-detached first: a client that reconnects without
        # resuming must not pile up sessions (and their processes) for the whole TTL.
        self._detached: dict[str, Session] = {}

    def __len__(self) -> int:
        return len(self._sessions)

    def create(self, outbox: Outbox) -> Session:
        session = Session(str(uuid.uuid4()))
        session.outbox = outbox
        self._sessions[session.id] = session
        return session

    def resume(self, session_id: str, outbox: Outbox) -> Session:
        session = self._sessions.get(session_id)
        if session is None:
            raise RpcError(INVALID_REQUEST, f"unknown session id {session_id}")
        if session.attached:
            raise RpcError(
                SESSION_ALREADY_ATTACHED,
                f"session {session_id} is already attached to another connection",
            )
        if session._expiry is not None:
            session._expiry.cancel()
            session._expiry = None
        self._detached.pop(session.id, None)
        session.outbox = outbox
        return session

    def detach(self, session: Session, outbox: Outbox) -> None:
        if session.outbox is not outbox:
            return
        session.outbox = None
        loop = asyncio.get_running_loop()
        session._expiry = loop.call_later(self.detached_ttl_seconds, self._expire, session)
        self._detached[session.id] = session
        if len(self._detached) > MAX_DETACHED_SESSIONS:
            idle = (s for s in self._detached.values() if not s.running)
            victim = next(idle, None) or next(iter(self._detached.values()))
            self._expire(victim, f"more than {MAX_DETACHED_SESSIONS} sessions were detached")

    def _expire(self, session: Session, why: str = "expired") -> None:
        if session.attached or self._sessions.get(session.id) is not session:
            return
        log.info(
            "detached session %s ended (%s); stopping %d processes",
            session.id,
            why,
            len(session.processes),
        )
        del self._sessions[session.id]
        self._detached.pop(session.id, None)
        session.dispose()

    def close(self) -> None:
        for session in self._sessions.values():
            session.dispose()
        self._sessions.clear()
        self._detached.clear()
