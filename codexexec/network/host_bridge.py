"""Host side of the sandbox's way out: a Unix socket per proxy port, forwarded to it.

A sandboxed command lives in its own network namespace and cannot reach the host's
loopback. It can reach a Unix socket file, so for each proxy port the executor listens
on `<dir>/port-<N>.sock` and forwards every connection to 127.0.0.1:<N>. The directory
is bound read-only into the sandbox so the command cannot replace the sockets.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import tempfile

_BUFFER = 256 * 1024


async def _pump(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(_BUFFER):
            writer.write(data)
            await writer.drain()
    except (ConnectionError, OSError):
        pass
    finally:
        with contextlib.suppress(Exception):
            writer.close()


class HostBridges:
    def __init__(self) -> None:
        self._dir: str | None = None
        self._servers: dict[int, tuple[str, asyncio.AbstractServer]] = {}
        self._lock = asyncio.Lock()

    @property
    def directory(self) -> str | None:
        return self._dir

    async def socket_for(self, port: int) -> str:
        """The Unix socket that reaches 127.0.0.1:``port``, started on first use."""
        async with self._lock:
            existing = self._servers.get(port)
            if existing is not None:
                return existing[0]
            if self._dir is None:
                self._dir = tempfile.mkdtemp(prefix="codexexec-net-")
                os.chmod(self._dir, 0o755)
            path = os.path.join(self._dir, f"port-{port}.sock")

            async def forward(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
                try:
                    up_reader, up_writer = await asyncio.open_connection("127.0.0.1", port)
                except OSError:
                    writer.close()
                    return
                await asyncio.gather(_pump(reader, up_writer), _pump(up_reader, writer))

            server = await asyncio.start_unix_server(forward, path)
            os.chmod(path, 0o777)  # an unprivileged sandboxed user must be able to connect
            self._servers[port] = (path, server)
            return path

    def close(self) -> None:
        for _, server in self._servers.values():
            server.close()
        self._servers.clear()
        if self._dir is not None:
            shutil.rmtree(self._dir, ignore_errors=True)
            self._dir = None
