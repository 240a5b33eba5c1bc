"""RemoteProcess: one process on an exec-server, as an ordered stream of events.

Iteration yields every output chunk once and in seq order, then Exited, then Closed.
It takes events from pushed notifications and fills any hole (output produced before
we subscribed, a resumed session, a dropped local buffer) from the server's retained
output with ``process/read``; output the server no longer retains is reported as an
OutputGap instead of being silently skipped.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import TYPE_CHECKING

from codexexec.client.errors import ExecServerError
from codexexec.client.events import (
    Closed,
    Exited,
    Output,
    OutputGap,
    ProcessEvent,
    ReadResponse,
    SeqGap,
)

if TYPE_CHECKING:
    from codexexec.client.client import ExecServerClient

__all__ = ["Closed", "Exited", "Output", "OutputGap", "ProcessEvent", "RemoteProcess"]


class RemoteProcess:
    def __init__(self, client: ExecServerClient, process_id: str, sandbox_type: str | None) -> None:
        self.client = client
        self.process_id = process_id
        self.sandbox_type = sandbox_type

    async def write(self, data: bytes, write_id: str | None = None) -> str:
        return await self.client.write(self.process_id, data, write_id)

    async def close_stdin(self) -> str:
        """End the piped stdin (after everything written so far)."""
        return await self.client.write(self.process_id, b"", close_stdin=True)

    async def interrupt(self) -> None:
        await self.client.interrupt(self.process_id)

    async def terminate(self) -> bool:
        return await self.client.terminate(self.process_id)

    async def read(
        self, *, after_seq: int = 0, max_bytes: int | None = None, wait_ms: int = 0
    ) -> ReadResponse:
        return await self.client.read(
            self.process_id, after_seq=after_seq, max_bytes=max_bytes, wait_ms=wait_ms
        )

    async def wait(self) -> Exited:
        """Consume the process's events and return how it exited."""
        exited: Exited | None = None
        async for event in self.events():
            if isinstance(event, Exited):
                exited = event
        assert exited is not None
        return exited

    async def events(self, after_seq: int = 0) -> AsyncIterator[ProcessEvent]:
        buffer = self.client.buffer(self.process_id)
        cursor = after_seq
        exited_seen = False
        needs_read = not buffer.complete
        # The first buffered seq past a hole: a re-read fills only what lies before it,
        # since everything from it on is already here (Codex may push events out of order).
        gap_end: int | None = None
        try:
            while True:
                if buffer.resync:
                    buffer.resync = False
                    needs_read, gap_end = True, None
                if needs_read:
                    # Never block the connection's reader while we wait for our own read.
                    buffer.set_blocking(False)
                    response = await self.read(after_seq=cursor)
                    # An exit not yielded nor buffered yet may be the one seq of the hole.
                    exit_unaccounted = (
                        response.exited and not exited_seen and not buffer.holds(Exited)
                    )
                    for chunk in response.chunks:
                        if gap_end is not None and chunk.seq >= gap_end:
                            break
                        # One missing seq can be the exit event; more is lost output.
                        if chunk.seq > cursor + 2 or (
                            chunk.seq == cursor + 2 and not response.exited
                        ):
                            yield OutputGap(cursor + 1, chunk.seq)
                        cursor = chunk.seq
                        yield chunk
                    if response.exited and not exited_seen:
                        exited_seen = True
                        yield Exited(
                            None, response.exit_code, response.sandbox_denied, response.denial
                        )
                    if gap_end is not None:
                        # Seqs still unaccounted for before the buffered head: an exit or close
                        # event not received yet explains one each; anything more was lost
                        # output (the server no longer retains it).
                        events_between = int(exit_unaccounted) + int(
                            response.closed and not buffer.holds(Closed)
                        )
                        if gap_end - 1 - cursor > events_between:
                            yield OutputGap(cursor + 1, gap_end)
                        cursor = gap_end - 1
                    else:
                        cursor = max(cursor, response.next_seq - 1)
                        if response.closed:
                            yield Closed(None)
                            return
                    needs_read = False
                    gap_end = None
                    buffer.set_blocking(True)
                try:
                    event = buffer.take_next(cursor)
                except SeqGap as gap:
                    needs_read = True
                    gap_end = gap.next_seq
                    continue
                if event is None:
                    if not self.client.connected:
                        raise ExecServerError(self.client.lost_reason)
                    await buffer.wait_changed()
                    continue
                if event.seq is not None:
                    cursor = event.seq
                if isinstance(event, Exited):
                    if exited_seen:
                        continue
                    exited_seen = True
                yield event
                if isinstance(event, Closed):
                    return
        finally:
            buffer.set_blocking(False)
