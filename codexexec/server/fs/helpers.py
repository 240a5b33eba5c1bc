"""Long-lived sandboxed filesystem helpers, one pool per connection.

Starting a helper (bubblewrap or Landlock, then a Python interpreter) costs tens of
milliseconds, far more than the operation; so a helper stays up after its operation and
serves the next one under the very same confinement. A helper is reused only for a
request whose confinement has the same key (``Confinement.key``: the same intent, and the
very same files at the protected and denied paths), so reuse never widens what an
operation can reach: a `.git` that appears or is replaced gets a new helper. Helpers run
one operation at a time, are bounded per connection, retire after a short idle time, and
end with the connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import signal
import socket
from dataclasses import dataclass, field
from typing import Any

import msgspec

from codexexec.protocol.jsonrpc import INTERNAL_ERROR, RpcError
from codexexec.sandbox.enforce import SandboxedCommand
from codexexec.server.fs.helper_protocol import HelperProtocolError, frame, receive_reply
from codexexec.server.fs.sandboxed import Confinement, prepare_helper
from codexexec.tasks import TaskSet

# Helpers one connection may keep: operations beyond this wait for a free helper.
MAX_HELPERS_PER_CONNECTION = 4
# An unused helper is stopped after this long (it holds a process and bwrap's mounts).
HELPER_IDLE_SECONDS = 30.0
_MAX_STDERR_BYTES = 64 * 1024
# Reaps and releases under way: the event loop keeps only weak references to tasks.
_background = TaskSet()


def _failed(reason: str) -> RpcError:
    return RpcError(INTERNAL_ERROR, f"filesystem sandbox helper failed: {reason}")


@dataclass(eq=False)
class _Helper:
    key: bytes
    process: asyncio.subprocess.Process
    channel: socket.socket
    command: SandboxedCommand
    idle_timer: asyncio.TimerHandle | None = field(default=None)
    # The end of what the helper wrote to stderr: read all along, so a chatty helper never
    # blocks on a full pipe, and kept for the error if it dies.
    stderr_tail: bytearray = field(default_factory=bytearray)
    drain: asyncio.Task[None] | None = field(default=None)
    stopped: bool = field(default=False)

    def __post_init__(self) -> None:
        self.drain = asyncio.get_running_loop().create_task(self._drain_stderr())

    async def _drain_stderr(self) -> None:
        assert self.process.stderr is not None
        while chunk := await self.process.stderr.read(65536):
            self.stderr_tail += chunk
            del self.stderr_tail[:-_MAX_STDERR_BYTES]

    async def call(self, request: bytes) -> tuple[bytes, list[int]] | None:
        """The reply and its descriptors; None if the helper ended before answering."""
        exchange = asyncio.ensure_future(asyncio.to_thread(self._exchange, request))
        try:
            return await asyncio.shield(exchange)
        except HelperProtocolError as exc:
            raise _failed(str(exc)) from None
        except asyncio.CancelledError:
            # The thread goes on until the helper is stopped; an opened descriptor that
            # arrives meanwhile must still be closed.
            exchange.add_done_callback(_close_received_fds)
            raise

    def _exchange(self, request: bytes) -> tuple[bytes, list[int]] | None:
        try:
            self.channel.sendall(frame(request))
        except (BrokenPipeError, ConnectionResetError):
            return None  # the helper is gone; its stderr says why
        return receive_reply(self.channel)

    async def last_words(self) -> str:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(5):
                await self.process.wait()
                if self.drain is not None:
                    await self.drain
        lines = self.stderr_tail.decode(errors="replace").strip().splitlines()
        return lines[-1] if lines else f"exit status {self.process.returncode}"

    def stop(self) -> None:
        """Kill the helper; its socket closes and bwrap's mount points go once it is reaped.

        Only the first call acts: the mount points are released exactly once, and a group
        id that may be reused once the helper is reaped is never signalled again."""
        if self.stopped:
            return
        self.stopped = True
        if self.idle_timer is not None:
            self.idle_timer.cancel()
        if self.process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGKILL)
        # Wakes a thread still waiting for this helper's reply; the socket is closed once
        # the helper is reaped, when no thread can be using it any more.
        with contextlib.suppress(OSError):
            self.channel.shutdown(socket.SHUT_RDWR)
        _background.spawn(self._reap())

    async def _reap(self) -> None:
        await self.process.wait()
        self.channel.close()
        self.command.discard()


class SandboxedHelpers:
    """The sandboxed helpers of one connection."""

    def __init__(self) -> None:
        self._idle: dict[bytes, list[_Helper]] = {}
        self._count = 0
        self._freed = asyncio.Condition()
        self._closed = False

    async def run(self, confined: Confinement, op: str, args: dict[str, Any]) -> Any:
        """Run ``op`` under ``confined``; an opener's result is the received fd."""
        request = msgspec.json.encode({"op": op, "args": args})
        helper, reused = await self._take(confined)
        try:
            reply = await helper.call(request)
            if reply is None and reused:
                # An idle helper can die unseen (killed, out of memory) before it reads the
                # request; the operation has not run, so it gets one fresh helper.
                helper.stop()
                helper = await self._start(helper.key, confined)
                reply = await helper.call(request)
            if reply is None:
                raise _failed(await helper.last_words())
        except BaseException:
            # Failed or cancelled mid-operation: its state is unknown, so it is not reused.
            helper.stop()
            await self._release_slot()
            raise
        await self._give_back(helper)
        return _result(*reply)

    def close(self) -> None:
        """The connection ended: stop every idle helper (busy ones stop when done)."""
        self._closed = True
        for helpers in self._idle.values():
            for helper in helpers:
                helper.stop()
        self._idle.clear()

    async def _take(self, confined: Confinement) -> tuple[_Helper, bool]:
        """An idle helper for this confinement (reused: True), else a new one."""
        key = confined.key()
        async with self._freed:
            while True:
                idle = self._idle.get(key)
                if idle:
                    helper = idle.pop()
                    if helper.idle_timer is not None:
                        helper.idle_timer.cancel()
                    if helper.process.returncode is None:
                        return helper, True
                    helper.stop()
                    self._count -= 1
                    continue
                if self._count < MAX_HELPERS_PER_CONNECTION or self._retire_one_idle():
                    self._count += 1
                    break
                try:
                    await self._freed.wait()
                except asyncio.CancelledError:
                    # Python 3.11 drops a wake-up that reached a waiter cancelled before it
                    # ran: pass it on, or the next waiter stays asleep beside a free slot.
                    self._freed.notify()
                    raise
        try:
            return await self._start(key, confined), False
        except BaseException:
            await self._release_slot()
            raise

    def _retire_one_idle(self) -> bool:
        """Make room by stopping an idle helper of another sandbox."""
        for key, helpers in self._idle.items():
            if helpers:
                helpers.pop(0).stop()
                if not helpers:
                    del self._idle[key]
                self._count -= 1
                return True
        return False

    async def _start(self, key: bytes, confined: Confinement) -> _Helper:
        command = prepare_helper(confined)
        ours, theirs = socket.socketpair()
        # Shielded: a start cancelled half way cannot be undone by asyncio (3.11 can even
        # hang), so it runs to its end and the helper is then stopped, giving back its
        # socket and mount points.
        starting = asyncio.ensure_future(_spawn(command, theirs))
        try:
            process = await asyncio.shield(starting)
        except OSError as exc:
            ours.close()
            command.discard()
            raise _failed(str(exc)) from None
        except BaseException:
            starting.add_done_callback(functools.partial(_abandon, key, ours, command))
            raise
        return _Helper(key, process, ours, command)

    async def _give_back(self, helper: _Helper) -> None:
        if self._closed:
            helper.stop()
            await self._release_slot()
            return
        loop = asyncio.get_running_loop()
        helper.idle_timer = loop.call_later(HELPER_IDLE_SECONDS, self._expire, helper)
        async with self._freed:
            self._idle.setdefault(helper.key, []).append(helper)
            self._freed.notify()

    def _expire(self, helper: _Helper) -> None:
        helpers = self._idle.get(helper.key)
        if helpers and helper in helpers:
            helpers.remove(helper)
            if not helpers:
                del self._idle[helper.key]
            helper.idle_timer = None
            helper.stop()
            _background.spawn(self._release_slot())

    async def _release_slot(self) -> None:
        async with self._freed:
            self._count -= 1
            self._freed.notify()


async def _spawn(command: SandboxedCommand, theirs: socket.socket) -> asyncio.subprocess.Process:
    try:
        return await asyncio.create_subprocess_exec(
            *command.argv,
            stdin=theirs.fileno(),
            stdout=theirs.fileno(),
            stderr=asyncio.subprocess.PIPE,
            pass_fds=command.pass_fds,
            start_new_session=True,
        )
    finally:
        theirs.close()
        command.release()


def _abandon(
    key: bytes,
    ours: socket.socket,
    command: SandboxedCommand,
    started: asyncio.Future[asyncio.subprocess.Process],
) -> None:
    """Undo a helper start whose operation was cancelled meanwhile."""
    if started.cancelled() or started.exception() is not None:
        ours.close()
        command.discard()
        return
    _Helper(key, started.result(), ours, command).stop()


def _close_received_fds(exchange: asyncio.Future[tuple[bytes, list[int]] | None]) -> None:
    if exchange.cancelled() or exchange.exception() is not None:
        return
    reply = exchange.result()
    for fd in reply[1] if reply is not None else ():
        os.close(fd)


def _result(reply: bytes, fds: list[int]) -> Any:
    for extra in fds[1:]:
        os.close(extra)
    fd = fds[0] if fds else None
    try:
        answer = msgspec.json.decode(reply)
    except msgspec.DecodeError:
        answer = {}
    if answer.get("fd") and fd is not None:
        return fd
    if fd is not None:
        os.close(fd)
    if "error" in answer:
        raise RpcError(answer["error"]["code"], answer["error"]["message"])
    if "result" not in answer:
        raise _failed("it sent no answer")
    return answer["result"]
