"""One child process as the protocol sees it: output, exit, close, stdin, signals."""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import functools
import logging
import os
import signal
import struct
import termios
from collections import deque
from collections.abc import Callable
from typing import Any, Literal, Protocol

from codexexec.protocol import output_notification
from codexexec.protocol.jsonrpc import encode_json, encode_notification
from codexexec.protocol.limits import (
    EXITED_PROCESS_RETENTION_SECONDS,
    OUTPUT_READ_CHUNK_BYTES,
    REMEMBERED_WRITE_IDS_PER_PROCESS,
)
from codexexec.protocol.output_notification import OutputMessage
from codexexec.sandbox.denial import DenialReport, classify
from codexexec.sandbox.enforce import remove_created_paths
from codexexec.server import spawn
from codexexec.server.errors import ServerError
from codexexec.server.output import OutputLog

log = logging.getLogger(__name__)

# How long a sandboxed process's late output may trail its exit (Codex's grace).
SANDBOX_OUTPUT_GRACE_SECONDS = 0.020

# Bounded so a grandchild flooding the pipe cannot stall the event loop at exit.
EXIT_DRAIN_LIMIT_BYTES = 1024 * 1024

WriteStatus = Literal["accepted", "unknownProcess", "stdinClosed", "starting"]


class Publisher(Protocol):
    """Where a process's notifications go: its session's current connection, if any."""

    def publish(self, message: bytes | OutputMessage) -> None: ...

    def congested(self) -> bool: ...

    def when_drained(self, callback: Callable[[], None]) -> None: ...


class StdinClosed(ServerError):
    """The child's stdin can no longer be written."""


def exit_code_of(returncode: int) -> int:
    # A child killed by a signal reports 128 + signal, as a shell would.
    return returncode if returncode >= 0 else 128 - returncode


class _OutputReader(asyncio.Protocol):
    def __init__(self, process: ManagedProcess, stream: str) -> None:
        self._process = process
        self._stream = stream
        self.transport: asyncio.ReadTransport | None = None
        self._ended = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.ReadTransport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self._process._on_output(self._stream, data, self)

    def connection_lost(self, exc: Exception | None) -> None:
        self._end()

    def _end(self) -> None:
        if not self._ended:
            self._ended = True
            if self.transport is not None:
                self.transport.close()
            self._process._on_stream_end()

    def drain_ready(self, limit: int) -> None:
        """Read what the pipe already holds, so it is sequenced before the exit event."""
        if self.transport is None or self.transport.is_closing():
            return
        fd = self.transport.get_extra_info("pipe").fileno()
        taken = 0
        while taken < limit:
            try:
                data = os.read(fd, OUTPUT_READ_CHUNK_BYTES)
            except (BlockingIOError, InterruptedError, OSError):
                return
            if not data:
                # EOF, seen with the exit: the close is then sent with it, not a loop
                # iteration later (over a relay both share one frame).
                self._end()
                return
            taken += len(data)
            self.data_received(data)

    def pause(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.pause_reading()

    def resume(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.resume_reading()


def _same(protocol: _OutputReader) -> _OutputReader:
    return protocol


class _StdinWriter(asyncio.Protocol):
    def __init__(self) -> None:
        self.transport: asyncio.WriteTransport | None = None
        self._writable = asyncio.Event()
        self._writable.set()
        self.lost = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.WriteTransport)
        self.transport = transport

    def pause_writing(self) -> None:
        self._writable.clear()

    def resume_writing(self) -> None:
        self._writable.set()

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        self._writable.set()

    async def write(self, data: bytes) -> None:
        if self.lost or self.transport is None or self.transport.is_closing():
            raise StdinClosed("stdin is closed")
        self.transport.write(data)
        await self._writable.wait()
        if self.lost:
            raise StdinClosed("stdin is closed")

    def close(self) -> None:
        """End of input: the pipe closes once what was written has gone out."""
        if self.transport is not None:
            self.transport.close()


class ManagedProcess:
    def __init__(
        self,
        process_id: str,
        publisher: Publisher,
        *,
        tty: bool,
        pipe_stdin: bool,
        on_expired: Callable[[ManagedProcess], None],
        on_closed: Callable[[ManagedProcess], None] = lambda _: None,
        sandbox_type: str = "none",
        sandbox_backend: str = "",
        created_paths: list[str] | None = None,
        network_off: bool = False,
        managed_network: bool = False,
        network_decisions: Callable[[], list[dict[str, Any]]] = list,
        on_disposed: Callable[[], None] | None = None,
    ) -> None:
        self.process_id = process_id
        self.tty = tty
        self.pipe_stdin = pipe_stdin
        self.sandbox_type = sandbox_type
        self.sandbox_backend = sandbox_backend
        self.sandbox_denied = False
        self.managed_network = managed_network
        self.network_off = network_off  # no network at all in its sandbox (denial reports)
        # What the managed proxy decided for it, and what to release once it is gone.
        self.network_decisions = network_decisions
        self.on_disposed = on_disposed
        # Told the exit code once it is known (the audit log).
        self.on_exited: Callable[[int], None] | None = None
        self.denial: DenialReport | None = None
        # Paths created on the host only as mount points for masks; removed after exit.
        self.created_paths: list[str] = list(created_paths or ())
        self.output = OutputLog()
        self.starting = True
        self._publisher = publisher
        self._on_expired = on_expired
        self._on_closed = on_closed
        self._child: spawn.Child | None = None
        self._exit_watched = False
        self._stdin: _StdinWriter | None = None
        self._open_streams = 0
        self._readers: list[_OutputReader] = []
        # Until the start response is on the wire, notifications wait here, so a
        # client never sees output for a process it has not been told about.
        self._early: list[bytes | OutputMessage] | None = []
        self._write_ids: deque[str] = deque()
        self._write_id_set: set[str] = set()
        self._pidfd: int | None = None
        self._expiry: asyncio.TimerHandle | None = None
        self._grace: asyncio.TimerHandle | None = None
        self._quoted_id = encode_json(process_id)

    # -- lifecycle ------------------------------------------------------------------

    async def attach(self, child: spawn.Child) -> None:
        loop = asyncio.get_running_loop()
        self._child = child
        self.starting = False
        for stream, fd in child.outputs.items():
            reader = _OutputReader(self, stream)
            self._readers.append(reader)
            self._open_streams += 1
            await loop.connect_read_pipe(
                functools.partial(_same, reader), os.fdopen(fd, "rb", buffering=0)
            )
            reader.pause()  # until begin_publishing
        if child.stdin is not None:
            writer = _StdinWriter()
            await loop.connect_write_pipe(lambda: writer, os.fdopen(child.stdin, "wb", buffering=0))
            self._stdin = writer
        self._watch_exit(loop)

    def begin_publishing(self) -> None:
        early, self._early = self._early, None
        for message in early or ():
            self._publisher.publish(message)
        for reader in self._readers:
            reader.resume()

    def _watch_exit(self, loop: asyncio.AbstractEventLoop) -> None:
        assert self._child is not None
        self._exit_watched = True
        try:
            self._pidfd = os.pidfd_open(self._child.pid)
        except OSError:
            # No pidfd: a thread waits instead, and reaps before anyone could deregister.
            spawn.forget(self._child)
            loop.run_in_executor(None, self._child.popen.wait).add_done_callback(
                lambda _: self._on_exit()
            )
            return
        loop.add_reader(self._pidfd, self._on_pidfd_ready, loop)

    def _on_pidfd_ready(self, loop: asyncio.AbstractEventLoop) -> None:
        assert self._child is not None and self._pidfd is not None
        spawn.forget(self._child)  # readable: it has exited, and is reaped next
        if self._child.popen.poll() is None:
            return
        loop.remove_reader(self._pidfd)
        os.close(self._pidfd)
        self._pidfd = None
        self._on_exit()

    def _on_exit(self) -> None:
        if self.sandbox_type != "none" and self._open_streams > 0:
            # Give a denial message written at exit a moment to arrive (Codex: up to
            # 20 ms); the streams closing ends the wait early.
            self._grace = asyncio.get_running_loop().call_later(
                SANDBOX_OUTPUT_GRACE_SECONDS, self._record_exit
            )
        else:
            self._record_exit()

    def _record_exit(self) -> None:
        assert self._child is not None
        if self._grace is not None:
            self._grace.cancel()
            self._grace = None
        # Output written before exit must not be numbered after it.
        for reader in self._readers:
            reader.drain_ready(EXIT_DRAIN_LIMIT_BYTES)
        returncode = self._child.popen.returncode
        code = -1 if returncode is None else exit_code_of(returncode)
        if self.sandbox_type != "none":
            self._classify_denial(code)
        self._remove_created_paths()
        if self.on_exited is not None:
            self.on_exited(code)
        seq = self.output.record_exit(code)
        params: dict[str, Any] = {
            "processId": self.process_id,
            "seq": seq,
            "exitCode": code,
            "sandboxDenied": self.sandbox_denied,
        }
        if self.denial is not None:
            params["sandboxDenial"] = self.denial.to_json()
        if self.managed_network and (blocked := self.network_decisions()):
            params["networkDecisions"] = blocked  # codexexec extension: what the proxy refused
        self._emit("process/exited", params)
        self._close_stdin()
        self._maybe_close()

    def _classify_denial(self, exit_code: int) -> None:
        chunks = self.output.retained()
        stdout = b"".join(c.data for c in chunks if c.stream != "stderr")
        stderr = b"".join(c.data for c in chunks if c.stream == "stderr")
        aggregated = b"".join(c.data for c in chunks)
        self.denial = classify(
            self.sandbox_type,
            self.sandbox_backend,
            exit_code,
            stdout.decode(errors="replace"),
            stderr.decode(errors="replace"),
            aggregated.decode(errors="replace"),
            managed_network=self.managed_network,
            network_off=self.network_off,
            masks=tuple(self.created_paths),
        )
        blocked = self.network_decisions()
        if self.denial is None and exit_code != 0 and blocked:
            # The proxy said no; the tool may have hidden why (curl -f does).
            first = blocked[0]
            self.denial = DenialReport(
                "network_policy_denied",
                "managed_network_proxy",
                f"{first['host']}:{first['port']}",
                stderr.decode(errors="replace").strip()[:512],
            )
        self.sandbox_denied = self.denial is not None

    def _remove_created_paths(self) -> None:
        remove_created_paths(self.created_paths)
        self.created_paths = []

    def _on_stream_end(self) -> None:
        self._open_streams -= 1
        if self._grace is not None and self._open_streams == 0:
            self._record_exit()
        self._maybe_close()

    def _maybe_close(self) -> None:
        if self._open_streams > 0 or not self.output.exited or self.output.closed:
            return
        seq = self.output.record_close()
        self._emit("process/closed", {"processId": self.process_id, "seq": seq})
        loop = asyncio.get_running_loop()
        self._expiry = loop.call_later(EXITED_PROCESS_RETENTION_SECONDS, self._on_expired, self)
        self._on_closed(self)

    # -- output ---------------------------------------------------------------------

    def _on_output(self, stream: str, data: bytes, reader: _OutputReader) -> None:
        chunk = self.output.append(stream, data)
        # Hand-built: this is the hottest path in the server.
        message = output_notification.OutputMessage(
            self.process_id, self._quoted_id, chunk.seq, stream, data
        )
        if self._early is not None:
            self._early.append(message)
            reader.pause()
            return
        self._publisher.publish(message)
        if self._publisher.congested():
            reader.pause()
            self._publisher.when_drained(reader.resume)

    def _emit(self, method: str, params: dict[str, Any]) -> None:
        message = encode_notification(method, params)
        if self._early is not None:
            self._early.append(message)
        else:
            self._publisher.publish(message)

    # -- control --------------------------------------------------------------------

    async def write(self, data: bytes, write_id: str, *, close: bool = False) -> WriteStatus:
        if self.starting:
            return "starting"
        if not (self.tty or self.pipe_stdin) or self._stdin is None:
            return "stdinClosed"
        if write_id in self._write_id_set:
            return "accepted"
        if data:
            await self._stdin.write(data)
        if close:
            self._stdin.close()
        self._write_ids.append(write_id)
        self._write_id_set.add(write_id)
        if len(self._write_ids) > REMEMBERED_WRITE_IDS_PER_PROCESS:
            self._write_id_set.discard(self._write_ids.popleft())
        return "accepted"

    def interrupt(self) -> None:
        if self._child is not None and not self.output.exited:
            spawn.signal_group(self._child, signal.SIGINT)

    def terminate(self) -> bool:
        """Kill the process's group; True if the process itself was still running. One
        that has exited while what it started still holds its output open (`sleep &`) has
        that group killed too, so its output can end: the answer stays False, as in Codex."""
        if self._child is None:
            return False
        if self.output.exited:
            if self._open_streams > 0:
                spawn.signal_group(self._child, signal.SIGKILL)
            return False
        spawn.signal_group(self._child, signal.SIGKILL)
        return True

    def resize(self, rows: int, cols: int) -> bool:
        """Set the terminal's size (its foreground job gets SIGWINCH); False once the
        terminal is gone."""
        transport = self._stdin.transport if self._stdin is not None else None
        if not self.tty or transport is None or transport.is_closing():
            return False
        pipe = transport.get_extra_info("pipe")
        try:
            fcntl.ioctl(pipe.fileno(), termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))
        except (OSError, ValueError):
            return False
        return True

    def _close_stdin(self) -> None:
        if self._stdin is not None and self._stdin.transport is not None:
            self._stdin.transport.close()

    def dispose(self) -> None:
        """Kill what is left and release every resource; the process is being dropped."""
        if self.on_disposed is not None:
            self.on_disposed()
            self.on_disposed = None
        if self._expiry is not None:
            self._expiry.cancel()
        if self._child is not None and not self.output.exited:
            spawn.signal_group(self._child, signal.SIGKILL)
        for reader in self._readers:
            if reader.transport is not None:
                reader.transport.close()
        self._close_stdin()
        if self._pidfd is not None:
            with contextlib.suppress(Exception):
                asyncio.get_running_loop().remove_reader(self._pidfd)
            os.close(self._pidfd)
            self._pidfd = None
            self._reap_in_background()
        elif self._child is not None and not self._exit_watched:
            self._reap_in_background()  # attaching failed or was cancelled half way

    def _reap_in_background(self) -> None:
        """No exit watcher will reap it now: deregister, reap in a thread (no zombie), then
        give back the sandbox's mount points once nothing of it can run any more."""
        assert self._child is not None
        spawn.forget(self._child)
        reaped = asyncio.get_running_loop().run_in_executor(None, self._child.popen.wait)
        reaped.add_done_callback(lambda _: self._remove_created_paths())
