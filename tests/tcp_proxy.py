"""A loopback TCP proxy for tests: a real socket between a client and a real server.

It runs its own event loop in a thread, so both sync (CLI) and async tests can use it.
It counts accepted sockets, can cut every connection at once (both sides see the TCP
connection end), can refuse (accept and close at once) or stall (accept and never
forward a byte) new connections, and can swallow what the server sends (``replies_flow``)
so a request is delivered but its answer never is.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Coroutine
from typing import Any, Literal

Mode = Literal["forward", "refuse", "stall"]


class TcpProxy:
    def __init__(self, upstream_port: int, *, mode: Mode = "forward", port: int = 0) -> None:
        self.upstream_port = upstream_port
        self.mode: Mode = mode
        self.accepted = 0
        # While cleared, nothing the server sends reaches the client (it is dropped).
        self.replies_flow = threading.Event()
        self.replies_flow.set()
        self._writers: set[asyncio.StreamWriter] = set()
        self._clients: set[asyncio.StreamWriter] = set()
        self._handlers: set[asyncio.Task[None]] = set()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._thread.start()
        self._server = self._run(self._listen(port))
        self.port: int = self._server.sockets[0].getsockname()[1]

    def _run(self, coroutine: Coroutine[Any, Any, Any]) -> Any:
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result(10)

    async def _listen(self, port: int) -> asyncio.Server:
        return await asyncio.start_server(self._handle, "127.0.0.1", port)

    @property
    def open_connections(self) -> int:
        """Client sockets this proxy holds open (stalled or forwarding)."""
        return sum(1 for w in list(self._clients) if not w.is_closing())

    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}"

    def http_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.accepted += 1
        task = asyncio.current_task()
        assert task is not None
        self._handlers.add(task)
        task.add_done_callback(self._handlers.discard)
        if self.mode == "refuse":
            writer.close()
            return
        self._writers.add(writer)
        self._clients.add(writer)
        try:
            if self.mode == "stall":
                await reader.read()  # until the client gives up or we are cut
                return
            try:
                up_reader, up_writer = await asyncio.open_connection(
                    "127.0.0.1", self.upstream_port
                )
            except OSError:
                return
            self._writers.add(up_writer)
            try:
                await asyncio.gather(
                    _pipe(reader, up_writer), _pipe(up_reader, writer, self.replies_flow)
                )
            finally:
                self._writers.discard(up_writer)
                up_writer.close()
        finally:
            self._writers.discard(writer)
            self._clients.discard(writer)
            writer.close()

    def cut(self) -> None:
        """End every connection now (new ones are accepted according to ``mode``)."""

        async def cut_all() -> None:
            for writer in list(self._writers):
                with contextlib.suppress(OSError):
                    # An abortive close: the peer sees the connection reset, as on a
                    # network failure, not an orderly shutdown.
                    writer.transport.abort()

        self._run(cut_all())

    def stop(self) -> None:
        async def close() -> None:
            self._server.close()
            for writer in list(self._writers):
                writer.transport.abort()
            # Let the connections' tasks end before the loop stops, not die pending.
            if self._handlers:
                await asyncio.wait(list(self._handlers), timeout=5)

        self._run(close())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)


async def _pipe(
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    flowing: threading.Event | None = None,
) -> None:
    try:
        while data := await reader.read(65536):
            if flowing is not None and not flowing.is_set():
                continue  # held back: lost when the connection is cut
            writer.write(data)
            await writer.drain()
    except (ConnectionError, OSError):
        pass
    finally:
        writer.close()
