"""Newline-delimited JSON over a pair of pipes: the server's stdin/stdout, or a child's.

Blank lines are ignored. A line longer than the message limit ends the stream: there
is no way to resynchronise inside it.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys

from codexexec.protocol.limits import MAX_MESSAGE_BYTES
from codexexec.transport.base import TransportClosed


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
            if line.strip():
                return line

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
        if self._process is not None and self._process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self._process.terminate()
            try:
                await asyncio.wait_for(self._process.wait(), 2.0)
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    self._process.kill()


async def stdio_server_transport() -> StreamTransport:
    """This process's own stdin/stdout, for ``serve --listen stdio``."""
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=MAX_MESSAGE_BYTES)
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    # Our own dup, so closing the transport never closes fd 1 under Python's feet.
    stdout = os.fdopen(os.dup(sys.stdout.fileno()), "wb", buffering=0)
    transport, protocol = await loop.connect_write_pipe(
        lambda: asyncio.streams.FlowControlMixin(), stdout
    )
    writer = asyncio.StreamWriter(transport, protocol, reader, loop)
    return StreamTransport(reader, writer, "stdio client")


async def spawn_stdio_transport(
    program: str, args: list[str], *, env: dict[str, str] | None = None, cwd: str | None = None
) -> StreamTransport:
    """Start ``program`` and speak JSON-RPC over its stdin/stdout (e.g. over ssh)."""
    try:
        process = await asyncio.create_subprocess_exec(
            program,
            *args,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            env=env,
            cwd=cwd,
            limit=MAX_MESSAGE_BYTES,
        )
    except OSError as exc:
        raise ConnectionError(f"cannot start `{program}`: {exc.strerror or exc}") from None
    assert process.stdin is not None and process.stdout is not None
    return StreamTransport(process.stdout, process.stdin, f"`{program}`", process)
