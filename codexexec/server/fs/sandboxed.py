"""Filesystem operations under a request's `sandbox`: the same enforcement as a command.

When the sandbox restricts the file system, the operation runs in a helper process
(``codexexec.server.fs.worker``) wrapped exactly as a sandboxed command would be
(``sandbox.enforce.prepare_command``: bubblewrap, or Landlock), so a file operation
reaches nothing a command under that sandbox could not. Opens come back as file
descriptors the helper opened inside the sandbox. Anything else runs in-process.

A sandbox that hides most of the file system also hides the Python runtime the helper
needs; for such sandboxes (only) the runtime's files are added as read-only paths, as
Codex adds its own helper executables.
"""

from __future__ import annotations

import array
import asyncio
import contextlib
import os
import signal
import socket
import struct
import sys
from dataclasses import dataclass
from functools import cache
from typing import Any

import msgspec

import codexexec
from codexexec.protocol.jsonrpc import INTERNAL_ERROR, INVALID_PARAMS, RpcError
from codexexec.protocol.limits import MAX_MESSAGE_BYTES
from codexexec.protocol.path_uri import PathUri
from codexexec.sandbox.enforce import (
    SandboxedCommand,
    SandboxRefused,
    prepare_command,
    remove_created_paths,
)
from codexexec.sandbox.plan import SandboxPlan, resolve_plan
from codexexec.sandbox.policy import PolicyError, parse_context

WORKER = [sys.executable, "-m", "codexexec.server.fs.worker"]
# The helper's working directory: always readable to it (it holds the helper's own code)
# and never an ancestor of bwrap (which prepare_command refuses, as a repo could plant one).
_WORKER_CWD = os.path.dirname(os.path.abspath(__file__))
_MAX_STDERR_BYTES = 64 * 1024


@dataclass(frozen=True, slots=True)
class Confinement:
    """A sandbox an operation must run under, bound to this host."""

    sandbox: dict[str, Any]
    plan: SandboxPlan


def confinement(sandbox: Any, *, reads_only: bool) -> Confinement | None:
    """How an operation must run: None in-process, else under the returned sandbox.

    A sandbox that leaves the file system unrestricted changes nothing; one that lets
    everything be read changes nothing for an operation that only reads (as in Codex).
    """
    if sandbox is None:
        return None
    if isinstance(sandbox, dict) and "permissions" not in sandbox:
        raise RpcError(INVALID_PARAMS, "missing field `permissions`")
    try:
        context = parse_context(sandbox)
    except PolicyError as exc:
        raise RpcError(INVALID_PARAMS, f"invalid sandbox intent: {exc}") from None
    profile = context.permissions
    if profile.type != "managed" or profile.file_system != "restricted":
        return None
    try:
        plan = resolve_plan(context, _WORKER_CWD)
    except PolicyError as exc:
        raise RpcError(INVALID_PARAMS, str(exc)) from None
    if plan.full_write or (reads_only and plan.full_read and not plan.denied):
        return None
    assert isinstance(sandbox, dict)
    return Confinement(sandbox, plan)


def _program_interpreter(executable: str) -> str | None:
    """The dynamic loader an ELF executable names (PT_INTERP), as the kernel looks it up."""
    try:
        with open(executable, "rb") as elf:
            header = elf.read(64)
            if header[:4] != b"\x7fELF" or header[4] != 2:  # 64-bit ELF only
                return None
            order = "<" if header[5] == 1 else ">"
            (phoff,) = struct.unpack_from(order + "Q", header, 32)
            phentsize, phnum = struct.unpack_from(order + "HH", header, 54)
            for index in range(phnum):
                elf.seek(phoff + index * phentsize)
                kind, _, offset, _, _, size = struct.unpack(order + "IIQQQQ", elf.read(40))
                if kind == 3:  # PT_INTERP
                    elf.seek(offset)
                    return elf.read(size).rstrip(b"\0").decode()
    except (OSError, struct.error, UnicodeDecodeError):
        return None
    return None


@cache
def _runtime_paths() -> tuple[str, ...]:
    """What the helper's interpreter reads: its prefixes, codexexec, the loader and the
    libraries this server process has mapped (a superset of what the helper loads)."""
    executable = os.path.realpath(sys.executable)
    paths = {
        sys.prefix,
        sys.base_prefix,
        sys.exec_prefix,
        sys.base_exec_prefix,
        os.path.dirname(executable),
        os.path.dirname(os.path.abspath(codexexec.__file__)),
    }
    interpreter = _program_interpreter(executable)
    if interpreter:
        paths.add(interpreter)
    mapped: set[str] = set()
    with open("/proc/self/maps", encoding="utf-8", errors="replace") as maps:
        for line in maps:
            fields = line.split(maxsplit=5)[5:]
            if fields and fields[0].startswith("/"):
                mapped.add(fields[0].strip())
    paths |= mapped
    # The loader asks for sonames (libz.so.1), links beside the mapped files (libz.so.1.2.13).
    for directory in {os.path.dirname(path) for path in mapped}:
        with contextlib.suppress(OSError), os.scandir(directory) as listing:
            for entry in listing:
                if entry.is_symlink() and os.path.realpath(entry.path) in mapped:
                    paths.add(entry.path)
    return tuple(sorted(p for p in paths if os.path.exists(p)))


def _worker_context(sandbox: dict[str, Any], plan: SandboxPlan) -> dict[str, Any]:
    if plan.full_read:
        return sandbox
    writable = [root.path for root in plan.writable_roots]
    extra = [
        {"path": {"type": "path", "path": str(PathUri.from_host_native_path(p))}, "access": "read"}
        for p in _runtime_paths()
        if not any(os.path.commonpath([p, root]) == root for root in writable)
    ]
    permissions = dict(sandbox["permissions"])
    file_system = dict(permissions["file_system"])
    file_system["entries"] = [*file_system.get("entries", []), *extra]
    permissions["file_system"] = file_system
    return {**sandbox, "permissions": permissions}


def _prepare(confined: Confinement) -> SandboxedCommand:
    context = _worker_context(confined.sandbox, confined.plan)
    try:
        command = prepare_command(context, WORKER, _WORKER_CWD, None)
    except SandboxRefused as exc:
        raise RpcError(INVALID_PARAMS, str(exc)) from None
    if command is None:  # cannot happen for a restricting sandbox; never run unconfined
        raise RpcError(INVALID_PARAMS, "filesystem sandbox cannot be enforced on this executor")
    return command


def _exchange(channel: socket.socket, request: bytes) -> tuple[bytes, list[int]]:
    """Send the request, then read the whole reply and any descriptors sent with it."""
    try:
        channel.sendall(request)
        channel.shutdown(socket.SHUT_WR)
    except (BrokenPipeError, ConnectionResetError):
        pass  # the helper is gone; its reply (none) and its stderr say why
    reply = bytearray()
    fds: list[int] = []
    space = socket.CMSG_SPACE(array.array("i", [0]).itemsize)
    while True:
        data, ancillary, _, _ = channel.recvmsg(1024 * 1024, space)
        for level, kind, payload in ancillary:
            if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                received = array.array("i")
                received.frombytes(payload[: len(payload) - len(payload) % received.itemsize])
                fds.extend(received)
        if not data:
            return bytes(reply), fds
        reply += data
        if len(reply) > MAX_MESSAGE_BYTES:
            for fd in fds:
                os.close(fd)
            raise RpcError(INTERNAL_ERROR, "filesystem sandbox helper reply is too large")


def _failed(reason: str) -> RpcError:
    return RpcError(INTERNAL_ERROR, f"filesystem sandbox helper failed: {reason}")


async def run(confined: Confinement, op: str, args: dict[str, Any]) -> Any:
    """Run ``op`` in the sandboxed helper; an opener's result is the received fd."""
    command = _prepare(confined)
    ours, theirs = socket.socketpair()
    try:
        process = await asyncio.create_subprocess_exec(
            *command.argv,
            stdin=theirs.fileno(),
            stdout=theirs.fileno(),
            stderr=asyncio.subprocess.PIPE,
            pass_fds=command.pass_fds,
            start_new_session=True,
        )
    except OSError as exc:
        ours.close()
        raise _failed(str(exc)) from None
    finally:
        theirs.close()
        command.release()
    try:
        request = msgspec.json.encode({"op": op, "args": args})
        reply, fds = await asyncio.to_thread(_exchange, ours, request)
        assert process.stderr is not None
        stderr = await process.stderr.read(_MAX_STDERR_BYTES)
        await process.wait()
    except BaseException:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        raise
    finally:
        ours.close()
        remove_created_paths(command.created_paths)
    if not reply:
        for fd in fds:
            os.close(fd)
        lines = stderr.decode(errors="replace").strip().splitlines()
        raise _failed(lines[-1] if lines else f"exit status {process.returncode}")
    return _result(reply, fds)


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
