"""Newline-delimited JSON over a pair of pipes: the server's stdin/stdout, or a child's.

Blank lines are ignored. A line longer than the message limit ends the stream: there
is no way to resynchronise inside it. A spawned exec-server (``spawn_stdio_transport``)
runs in its own process group, which is killed with it; a line from it that is not
JSON ends the stream too (it is not an exec-server, or something else writes to its
stdout), and the last lines of its stderr are kept to explain a failure.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import sys
from collections import deque

from codexexec.protocol.limits import MAX_MESSAGE_BYTES
from codexexec.transport.base import TransportClosed

log = logging.getLogger(__name__)

STDERR_LINES_KEPT = 20
STDERR_LINE_BYTES = 512
NOT_JSON_SHOWN_BYTES = 80
TERMINATE_GRACE_SECONDS = 2.0
STDERR_DRAIN_SECONDS = 1.0


class StreamTransport:
    def __init__(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        peer: str,
        process: asyncio.subprocess.Process | None = None,
    ) -> None:
        self._reader = reader
        self._writer = writer
        self._peer = peer
        self._process = process
        # The first line from a spawned child that was not JSON, shortened (for errors).
        self.not_json: str | None = None
        self._stderr_tail: deque[str] = deque(maxlen=STDERR_LINES_KEPT)
        self._stderr_task: asyncio.Task[None] | None = None
        if process is not None and process.stderr is not None:
            self._stderr_task = asyncio.create_task(self._drain_stderr(process.stderr))

    @property
    def peer(self) -> str:
        return self._peer

    async def receive(self) -> bytes | None:
        while True:
            try:
                line = await self._reader.readuntil(b"\n")
            except asyncio.IncompleteReadError as exc:
                line = exc.partial
                if not line.strip():
                    return None
            except (asyncio.LimitOverrunError, ValueError):
                return None
            except (ConnectionError, OSError):
                return None
            if not line.strip():
                continue
            if self._process is not None and line.lstrip()[:1] not in (b"{", b"["):
                text = line.strip()[:NOT_JSON_SHOWN_BYTES].decode("utf-8", "replace")
                self.not_json = text
                return None
            return line

    async def _drain_stderr(self, stderr: asyncio.StreamReader) -> None:
        while True:
            try:
                line = await stderr.readline()
            except (ValueError, OSError):  # a line over the limit: skip what is buffered
                continue
            if not line:
                return
            text = line[:STDERR_LINE_BYTES].decode("utf-8", "replace").rstrip()
            if text:
                log.debug("%s stderr: %s", self._peer, text)
                self._stderr_tail.append(text)

    def stderr_tail(self) -> list[str]:
        """The last lines the spawned program wrote to stderr (at most 20)."""
        return list(self._stderr_tail)

    @property
    def exit_code(self) -> int | None:
        return self._process.returncode if self._process is not None else None

    async def wait_exited(self, timeout: float) -> int | None:
        """The spawned program's exit code once it has exited within ``timeout``."""
        if self._process is None:
            return None
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._process.wait(), timeout)
        if self._stderr_task is not None:
            await asyncio.wait({self._stderr_task}, timeout=timeout)
        return self._process.returncode

    async def send(self, message: bytes) -> None:
        if self._writer.is_closing():
            raise TransportClosed(f"{self._peer} is closed")
        try:
            self._writer.write(message + b"\n")
            await self._writer.drain()
        except (ConnectionError, OSError) as exc:
            raise TransportClosed(f"{self._peer} is closed") from exc

    async def close(self) -> None:
        if not self._writer.is_closing():
            self._writer.close()
            with contextlib.suppress(ConnectionError, OSError):
                await self._writer.wait_closed()
        if self._process is not None:
            await _stop_group(self._process)
        if self._stderr_task is not None:
            # With the group gone stderr ends, unless something escaped the group.
            await asyncio.wait({self._stderr_task}, timeout=STDERR_DRAIN_SECONDS)
            self._stderr_task.cancel()


async def _stop_group(process: asyncio.subprocess.Process) -> None:
    """Stop a spawned exec-server and everything it started (its own process group)."""
    if process.returncode is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(process.wait(), TERMINATE_GRACE_SECONDS)
    # Children it left behind in its group go too, even after it exited itself.
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, signal.SIGKILL)
    if process.returncode is None:
        await process.wait()


class _WritePipeProtocol(asyncio.streams.FlowControlMixin):
    """Flow control for a write pipe, plus the close waiter StreamWriter.wait_closed needs."""

    def __init__(self) -> None:
        super().__init__()
        self._closed: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def connection_lost(self, exc: Exception | None) -> None:
        super().connection_lost(exc)
        if not self._closed.done():
            self._closed.set_result(None)

    def _get_close_waiter(self, stream: asyncio.StreamWriter) -> asyncio.Future[None]:
        return self._closed


async def stdio_server_transport() -> StreamTransport:
    """This process's own stdin/stdout, for ``serve --listen stdio``."""
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=MAX_MESSAGE_BYTES)
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    # Our own dup, so closing the transport never closes fd 1 under Python's feet.
    stdout = os.fdopen(os.dup(sys.stdout.fileno()), "wb", buffering=0)
    transport, protocol = await loop.connect_write_pipe(_WritePipeProtocol, stdout)
    writer = asyncio.StreamWriter(transport, protocol, reader, loop)
    return StreamTransport(reader, writer, "stdio client")


async def spawn_stdio_transport(
    program: str, args: list[str], *, env: dict[str, str] | None = None, cwd: str | None = None
) -> StreamTransport:
    """Start ``program`` and speak JSON-RPC over its stdin/stdout (e.g. over ssh).

    Raises OSError when the program cannot be started.
    """
    process = await asyncio.create_subprocess_exec(
        program,
        *args,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=env,
        cwd=cwd,
        limit=MAX_MESSAGE_BYTES,
        # Its own group (same session, so ssh can still ask at the terminal): stopping
        # the environment stops everything the program started.
        process_group=0,
    )
    assert process.stdin is not None and process.stdout is not None
    return StreamTransport(process.stdout, process.stdin, f"`{program}`", process)
