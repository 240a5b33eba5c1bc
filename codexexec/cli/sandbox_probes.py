"""`sandbox-check`'s probes: real commands run through an in-process executor's sandboxed
spawn path under each backend this host has, checked for what they could and could not do."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import socket
import sys
import tempfile
from collections.abc import Iterator

from codexexec.cli.errors import fail
from codexexec.client import ExecServerClient
from codexexec.sandbox.linux.backend import FORCE_BACKEND_ENV
from codexexec.sandbox.linux.check import Finding, Report, host_findings
from codexexec.sandbox.policy import LegacyMode


@contextlib.contextmanager
def _forced(backend: str) -> Iterator[None]:
    previous = os.environ.get(FORCE_BACKEND_ENV)
    os.environ[FORCE_BACKEND_ENV] = backend
    try:
        yield
    finally:
        if previous is None:
            os.environ.pop(FORCE_BACKEND_ENV, None)
        else:
            os.environ[FORCE_BACKEND_ENV] = previous


async def _probe(
    client: ExecServerClient, argv: list[str], cwd: str, mode: LegacyMode
) -> tuple[int | None, bool, str]:
    """(exit code, sandbox denied, error) for one sandboxed run."""
    from codexexec.client import ExecServerError, Exited

    try:
        process = await client.start(
            argv, cwd=cwd, sandbox=mode, inherit_env=False, env={"PATH": "/usr/bin:/bin"}
        )
    except ExecServerError as exc:
        return None, False, str(exc)
    exited: Exited | None = None
    async for event in process.events():
        if isinstance(event, Exited):
            exited = event
    assert exited is not None
    return exited.exit_code, exited.sandbox_denied, ""


def _outside_parent() -> str:
    """A directory this user can write that no workspace-write sandbox may: neither /tmp
    nor the executor's TMPDIR (both writable roots there) holds it."""
    roots = [os.path.realpath(p) for p in ("/tmp", os.environ.get("TMPDIR") or "/tmp")]
    for candidate in ("/var/tmp", os.path.expanduser("~")):
        real = os.path.realpath(candidate)
        inside = any(real == root or real.startswith(root.rstrip("/") + "/") for root in roots)
        if not inside and os.access(real, os.W_OK):
            return real
    fail("sandbox-check needs a writable directory outside /tmp and $TMPDIR")


async def _probes(backend: str) -> list[Finding]:
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    port = listener.getsockname()[1]
    made: list[str] = []
    findings = []
    try:
        try:
            workspace = tempfile.mkdtemp(prefix="codexexec-check-", dir="/var/tmp")
            made.append(workspace)
            os.mkdir(os.path.join(workspace, ".git"))
            # A place this user can write, outside every writable root: a write that fails
            # there failed because of the sandbox, not for want of permission.
            parent = _outside_parent()
            outside_dir = tempfile.mkdtemp(prefix="codexexec-check-outside-", dir=parent)
            made.append(outside_dir)
        except OSError as exc:
            fail(f"sandbox-check cannot make its probe directories: {exc.strerror}")
        outside = os.path.join(outside_dir, "probe")
        in_git = os.path.join(workspace, ".git", "probe")
        connect = [
            sys.executable,
            "-c",
            f"import socket; socket.create_connection(('127.0.0.1', {port}), timeout=2)",
        ]
        write_outside = ["/bin/sh", "-c", f"echo x > {outside}"]
        # (name, argv, whether it must be blocked, mode, the file it would write on the host)
        cases: list[tuple[str, list[str], bool, LegacyMode, str | None]] = [
            (
                "workspace-write: write inside the workspace",
                ["/bin/sh", "-c", "echo ok > p.txt"],
                False,
                "workspace-write",
                None,
            ),
            (
                "workspace-write: write outside writable roots",
                write_outside,
                True,
                "workspace-write",
                outside,
            ),
            (
                "workspace-write: write to .git",
                ["/bin/sh", "-c", "echo x > .git/probe"],
                True,
                "workspace-write",
                in_git,
            ),
            ("workspace-write: network connect", connect, True, "workspace-write", None),
            ("read-only: write outside", write_outside, True, "read-only", outside),
            ("read-only: network connect", connect, True, "read-only", None),
        ]
        with _forced(backend):
            async with await ExecServerClient.connect("local") as client:
                for name, argv, should_block, mode, target in cases:
                    code, denied, error = await _probe(client, argv, workspace, mode)
                    # Judged on the host too: the file a write probe aims at is absent. Each
                    # probe's own file only, removed after it, so one leak is not counted twice.
                    landed = target is not None and _took_away(target)
                    if error:
                        # Refusing is safe (nothing ran), but the command cannot run either.
                        reason = error.rsplit("Landlock fallback: ", 1)[-1]
                        findings.append(
                            Finding(
                                name,
                                should_block,
                                f"refused, nothing ran: {reason}",
                                "" if should_block else "install bubblewrap for this profile",
                            )
                        )
                    elif should_block:
                        ok = code != 0 and denied and not landed
                        findings.append(
                            Finding(
                                name,
                                ok,
                                "blocked and reported as a denial"
                                if ok
                                else f"NOT blocked (exit {code})",
                            )
                        )
                    else:
                        findings.append(Finding(name, code == 0, f"exit {code}"))
    finally:
        listener.close()
        for path in made:
            shutil.rmtree(path, ignore_errors=True)
    return findings


def _took_away(path: str) -> bool:
    """Whether a probe's write landed at ``path`` on the host; removed if so."""
    try:
        os.unlink(path)
    except FileNotFoundError:
        return False
    return True


def run_check() -> Report:
    host, bwrap_ok, landlock_ok = host_findings()
    probes: dict[str, list[Finding]] = {}
    if bwrap_ok:
        probes["bubblewrap"] = asyncio.run(_probes("bwrap"))
    if landlock_ok:
        probes["landlock"] = asyncio.run(_probes("landlock"))
    default = "bubblewrap" if bwrap_ok else "landlock" if landlock_ok else None
    return Report(host, probes, default)
