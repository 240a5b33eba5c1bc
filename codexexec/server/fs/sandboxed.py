"""Filesystem operations under a request's `sandbox`: the same enforcement as a command.

When the sandbox restricts the file system, the operation runs in a helper process
(``codexexec.server.fs.worker``, kept by ``helpers``) wrapped exactly as a sandboxed
command would be (``sandbox.enforce.prepare_command``: bubblewrap, or Landlock), so a file
operation reaches nothing a command under that sandbox could not. Opens come back as file
descriptors the helper opened inside the sandbox. Anything else runs in-process.

A sandbox that hides most of the file system also hides the Python runtime the helper
needs; for such sandboxes (only) the runtime's files are added as read-only paths, as
Codex adds its own helper executables.
"""

from __future__ import annotations

import contextlib
import os
import struct
import sys
from dataclasses import dataclass
from functools import cache
from typing import Any

import msgspec

import codexexec
from codexexec.protocol.jsonrpc import INVALID_PARAMS, RpcError
from codexexec.protocol.path_uri import PathUri
from codexexec.sandbox import mount_points
from codexexec.sandbox.enforce import (
    SandboxedCommand,
    SandboxRefused,
    prepare_command,
)
from codexexec.sandbox.floor import (
    SandboxSettings,
    allowed_writes,
    below_floor,
    floor_sandbox,
    native_or,
    refusal,
)
from codexexec.sandbox.plan import SandboxPlan, resolve_plan
from codexexec.sandbox.policy import SandboxPolicyError, parse_context

WORKER = [sys.executable, "-m", "codexexec.server.fs.worker"]
# The helper's working directory: always readable to it (it holds the helper's own code)
# and never an ancestor of bwrap (which prepare_command refuses, as a repo could plant one).
_WORKER_CWD = os.path.dirname(os.path.abspath(__file__))


@dataclass(frozen=True, slots=True)
class Confinement:
    """A sandbox an operation must run under, bound to this host."""

    sandbox: dict[str, Any]
    plan: SandboxPlan

    def key(self) -> bytes:
        """Equal only for confinements one helper may serve alike, so a helper started
        earlier never reaches more than a new one would: the same intent and the same
        protected and denied paths, each the very same file (device, inode and ctime, as
        inode numbers are reused) as when the helper bound or masked it. A `.git` that
        appears, is replaced or changes gives a new key. A protected name that is missing
        gets masked; once a helper's own mount point stands there it counts as missing
        still, so that helper keeps serving."""
        plan = msgspec.to_builtins(self.plan)
        for root in plan["writable_roots"]:
            protected = sorted({*root.pop("read_only"), *root.pop("missing_protected")})
            root["protected"] = [[path, _identity(path)] for path in protected]
        plan["denied"] = [[path, _identity(path)] for path in self.plan.denied]
        return msgspec.json.encode([self.sandbox, plan], order="sorted")


def _identity(path: str) -> str | list[int]:
    """Which file stands at ``path``: "masked" when nothing of anyone else's does."""
    if mount_points.is_ours(path):
        return "masked"
    try:
        status = os.lstat(path)
    except FileNotFoundError:
        return "masked"
    except OSError:
        return "unknown"
    return [status.st_mode >> 12, *mount_points.file_identity(status)]


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
    except SandboxPolicyError as exc:
        raise RpcError(INVALID_PARAMS, f"invalid sandbox intent: {exc}") from None
    profile = context.permissions
    if profile.type != "managed" or profile.file_system != "restricted":
        return None
    try:
        plan = resolve_plan(context, _WORKER_CWD)
    except SandboxPolicyError as exc:
        raise RpcError(INVALID_PARAMS, str(exc)) from None
    if plan.full_write or (reads_only and plan.full_read and not plan.denied):
        return None
    assert isinstance(sandbox, dict)
    return Confinement(sandbox, plan)


def at_floor(confined: Confinement | None, sandbox: Any, settings: SandboxSettings) -> Confinement:
    """A write held to the executor's sandbox floor: raised to the floor's profile, or
    refused. A write with no sandbox context at all is refused: it names no workspace."""
    floor = settings.floor
    assert floor is not None
    if sandbox is None:
        raise RpcError(INVALID_PARAMS, refusal(floor, "file writes need a sandbox context"))
    context = parse_context(sandbox)
    cwd = native_or(context.cwd, _WORKER_CWD)
    why = below_floor(
        None if confined is None else confined.plan, floor, allowed_writes(context, cwd)
    )
    if why is None:
        assert confined is not None
        return confined
    if settings.floor_mode == "refuse":
        raise RpcError(INVALID_PARAMS, refusal(floor, why))
    cwd_uri = context.cwd or str(PathUri.from_host_native_path(cwd))
    raised = confinement(floor_sandbox(floor, sandbox, cwd_uri), reads_only=False)
    assert raised is not None  # a floor always restricts writes
    return raised


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


def prepare_helper(confined: Confinement) -> SandboxedCommand:
    """The helper's command line, wrapped for the confinement."""
    context = _worker_context(confined.sandbox, confined.plan)
    try:
        command = prepare_command(context, WORKER, _WORKER_CWD, None)
    except SandboxRefused as exc:
        raise RpcError(INVALID_PARAMS, str(exc)) from None
    if command is None:  # cannot happen for a restricting sandbox; never run unconfined
        raise RpcError(INVALID_PARAMS, "filesystem sandbox cannot be enforced on this executor")
    return command
