"""Per-process event buffering on the client side.

Notifications land here from the connection's reader. While someone iterates the
process, a full buffer makes the reader wait (backpressure all the way to the child);
otherwise the oldest events are dropped and the iterator fills the gap from the
server's retained output with ``process/read``.
"""

from __future__ import annotations

import asyncio
from collections import deque
from typing import Any

import msgspec

from codexexec.client.errors import ExecServerError

MAX_BUFFERED_EVENTS = 50_000
# While someone iterates, the reader waits above this (backpressure to the child).
MAX_BUFFERED_BYTES = 8 * 1024 * 1024
# While nobody iterates (or a gap is being re-read), older events are dropped above
# this. Larger than the backpressure mark, so a short re-read under load loses nothing
# the iterator still needs; still a hard bound per process.
MAX_UNCONSUMED_BYTES = 64 * 1024 * 1024


class Output(msgspec.Struct, frozen=True):
    seq: int
    stream: str
    data: bytes


class Exited(msgspec.Struct, frozen=True):
    seq: int | None
    exit_code: int | None
    sandbox_denied: bool
    # codexexec servers say why: {reason, backend, path, snippet}; None from Codex.
    denial: dict[str, Any] | None = None


class Closed(msgspec.Struct, frozen=True):
    seq: int | None


class OutputGap(msgspec.Struct, frozen=True):
    """Output between these seqs was dropped by the server's retention limit."""

    first_missing: int
    next_available: int


ProcessEvent = Output | Exited | Closed | OutputGap


class ReadResponse(msgspec.Struct, frozen=True):
    """A ``process/read`` result, chunks decoded."""

    chunks: list[Output]
    next_seq: int
    exited: bool
    exit_code: int | None
    closed: bool
    failure: str | None
    sandbox_denied: bool
    denial: dict[str, Any] | None = None


class SeqGap(ExecServerError):
    """The buffer skips ahead of the reader's cursor: something must be re-read."""

    def __init__(self, next_seq: int) -> None:
        super().__init__(f"the output skips ahead to seq {next_seq}")
        self.next_seq = next_seq


def _size(event: ProcessEvent) -> int:
    return len(event.data) if isinstance(event, Output) else 0


class EventBuffer:
    def __init__(self, *, complete: bool) -> None:
        # True while the buffer holds every event since the process started: created
        # before process/start and never overflowed, so no catch-up read is needed.
        self.complete = complete
        self._events: deque[Output | Exited | Closed] = deque()
        self._bytes = 0
        self.blocking = False
        # Set when the connection was replaced: notifications may have been lost in
        # between, so the reader must re-read from its cursor.
        self.resync = False
        self._changed = asyncio.Event()
        self._space = asyncio.Event()
        self._space.set()

    def _full(self) -> bool:
        return len(self._events) >= MAX_BUFFERED_EVENTS or self._bytes >= MAX_BUFFERED_BYTES

    async def push(self, event: Output | Exited | Closed) -> None:
        while self.blocking and self._full():
            self._space.clear()
            await self._space.wait()
        self._insert(event)
        self._bytes += _size(event)
        while len(self._events) > MAX_BUFFERED_EVENTS or self._bytes > MAX_UNCONSUMED_BYTES:
            self._bytes -= _size(self._events.popleft())
            self.complete = False
        self._changed.set()

    def _insert(self, event: Output | Exited | Closed) -> None:
        """Keep the buffer in seq order: Codex pushes events out of order (an exit ahead
        of the output before it), and a reader takes them from the front by seq."""
        events = self._events
        seq = event.seq
        if seq is None or not events:
            events.append(event)
            return
        position = len(events)
        while position > 0:
            before = events[position - 1].seq
            if before is None or before <= seq:
                break
            position -= 1
        events.insert(position, event)

    def holds(self, kind: type[Exited] | type[Closed]) -> bool:
        """Whether an event of this kind is waiting in the buffer."""
        return any(isinstance(event, kind) for event in self._events)

    def set_blocking(self, blocking: bool) -> None:
        self.blocking = blocking
        if not blocking:
            self._space.set()

    def take_next(self, cursor: int) -> Output | Exited | Closed | None:
        """The event right after ``cursor`` (older duplicates are discarded).

        Returns None when nothing is buffered; raises SeqGap, leaving the event in
        place, when the next buffered event is further ahead than ``cursor + 1``.
        """
        while self._events:
            event = self._events[0]
            seq = event.seq if event.seq is not None else cursor + 1
            if seq <= cursor:
                self._bytes -= _size(self._events.popleft())
                continue
            if seq > cursor + 1:
                raise SeqGap(seq)
            self._events.popleft()
            self._bytes -= _size(event)
            self._space.set()
            return event
        return None

    async def wait_changed(self) -> None:
        self._changed.clear()
        await self._changed.wait()

    def wake(self) -> None:
        self._changed.set()
        self._space.set()

    def reconnected(self) -> None:
        self.complete = False
        self.resync = True
        self.wake()
