"""Retained, sequenced process output: the part of a process a reader sees.

One sequence counter per process covers output chunks, the exit event and the close
event, from 1, in the order they happen. The ring keeps at most 1 MiB and 50,000
chunks; older chunks are dropped from the front, so a slow reader sees a seq gap
rather than a server that grows without bound.
"""

from __future__ import annotations

import asyncio
from collections import deque

import msgspec

from codexexec.protocol.limits import (
    RETAINED_OUTPUT_BYTES_PER_PROCESS,
    RETAINED_OUTPUT_CHUNKS_PER_PROCESS,
)


class Chunk(msgspec.Struct):
    seq: int
    stream: str
    data: bytes


class ReadResult(msgspec.Struct):
    chunks: list[Chunk]
    next_seq: int
    exited: bool
    exit_code: int | None
    closed: bool


class OutputLog:
    def __init__(self) -> None:
        self._chunks: deque[Chunk] = deque()
        self._retained_bytes = 0
        self.next_seq = 1
        self.exit_code: int | None = None
        self.exited = False
        self.closed = False
        self._changed = asyncio.Event()

    def _bump(self) -> int:
        seq = self.next_seq
        self.next_seq += 1
        # Wake every waiting reader, then arm a fresh event for the next change.
        self._changed.set()
        self._changed = asyncio.Event()
        return seq

    def append(self, stream: str, data: bytes) -> Chunk:
        chunk = Chunk(self._bump(), stream, data)
        self._chunks.append(chunk)
        self._retained_bytes += len(data)
        while (
            self._retained_bytes > RETAINED_OUTPUT_BYTES_PER_PROCESS
            or len(self._chunks) > RETAINED_OUTPUT_CHUNKS_PER_PROCESS
        ):
            self._retained_bytes -= len(self._chunks.popleft().data)
        return chunk

    def record_exit(self, exit_code: int) -> int:
        self.exit_code = exit_code
        self.exited = True
        return self._bump()

    def record_close(self) -> int:
        self.closed = True
        return self._bump()

    def retained(self) -> list[Chunk]:
        return list(self._chunks)

    def snapshot(self, after_seq: int, max_bytes: int | None) -> ReadResult:
        chunks = self._chunks
        start = len(chunks)
        # Readers usually ask for the newest chunks: search from the end.
        while start > 0 and chunks[start - 1].seq > after_seq:
            start -= 1
        selected: list[Chunk] = []
        total = 0
        for index in range(start, len(chunks)):
            chunk = chunks[index]
            if max_bytes is not None and selected and total + len(chunk.data) > max_bytes:
                break
            selected.append(chunk)
            total += len(chunk.data)
            if max_bytes is not None and total >= max_bytes:
                break
        if selected and max_bytes is not None:
            next_seq = selected[-1].seq + 1
        else:
            next_seq = self.next_seq
        return ReadResult(selected, next_seq, self.exited, self.exit_code, self.closed)

    async def read(self, after_seq: int, max_bytes: int | None, wait_seconds: float) -> ReadResult:
        """Codex's process/read: answer at once when there is news, else long-poll."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + wait_seconds
        while True:
            result = self.snapshot(after_seq, max_bytes)
            if (
                result.chunks
                or result.closed
                or (result.exited and after_seq < result.next_seq - 1)
            ):
                return result
            remaining = deadline - loop.time()
            if remaining <= 0:
                return result
            changed = self._changed
            try:
                await asyncio.wait_for(changed.wait(), remaining)
            except TimeoutError:
                return self.snapshot(after_seq, max_bytes)
