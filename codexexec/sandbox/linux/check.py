"""`sandbox-check` for Linux: what this host can enforce, proven by running probes.

Host facts (bwrap, user namespaces, Landlock, seccomp) come first, each with the fix
for a failure; then real probe commands run through the executor's own sandboxed
spawn path under each backend that is available.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import socket
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from typing import Any

from codexexec.sandbox.linux import bwrap as bw
from codexexec.sandbox.linux.backend import FORCE_BACKEND_ENV


@dataclass(frozen=True, slots=True)
class Finding:
    check: str
    ok: bool
    detail: str
    fix: str = ""


@dataclass(slots=True)
class Report:
    host: list[Finding]
    probes: dict[str, list[Finding]]
    default_backend: str | None

    @property
    def enforced(self) -> bool:
        backend = self.default_backend
        return backend is not None and all(f.ok for f in self.probes.get(backend, []))

    def to_json(self) -> dict[str, Any]:
        return {
            "enforced": self.enforced,
            "defaultBackend": self.default_backend,
            "host": [asdict(f) for f in self.host],
            "probes": {k: [asdict(f) for f in v] for k, v in self.probes.items()},
        }


def _read(path: str) -> str | None:
    try:
        with open(path) as handle:
            return handle.read().strip()
    except OSError:
        return None


def _userns_fix(complaint: str) -> str:
    if _read("/proc/sys/kernel/unprivileged_userns_clone") == "0":
        return "sysctl -w kernel.unprivileged_userns_clone=1"
    if _read("/proc/sys/user/max_user_namespaces") == "0":
        return "sysctl -w user.max_user_namespaces=15000"
    if _read("/proc/sys/kernel/apparmor_restrict_unprivileged_userns") == "1":
        return (
            "sysctl -w kernel.apparmor_restrict_unprivileged_userns=0, "
            "or give bwrap an AppArmor profile that allows userns"
        )
    if "Operation not permitted" in complaint:
        return (
            "allow user namespaces in this container (e.g. a seccomp/AppArmor profile "
            "that permits clone(CLONE_NEWUSER))"
        )
    return "see the bwrap error above"


def host_findings() -> tuple[list[Finding], bool, bool]:
    from codexexec.sandbox.linux.landlock import SCOPE_ABI, landlock_abi
    from codexexec.sandbox.linux.seccomp import seccomp_available

    findings: list[Finding] = []
    bwrap = bw.find_bwrap()
    findings.append(
        Finding(
            "bubblewrap installed",
            bwrap is not None,
            bwrap or bw.missing_bwrap_reason(),
            "" if bwrap else "apt-get install bubblewrap",
        )
    )
    bwrap_ok = False
    if bwrap is not None:
        complaint = bw.probe_bwrap(bwrap)
        bwrap_ok = complaint is None
        findings.append(
            Finding(
                "user namespaces for bwrap",
                bwrap_ok,
                "bwrap can create user, pid and net namespaces" if bwrap_ok else complaint or "",
                "" if bwrap_ok else _userns_fix(complaint or ""),
            )
        )
    abi = landlock_abi()
    findings.append(
        Finding(
            "Landlock",
            abi >= SCOPE_ABI,
            f"ABI {abi}" if abi else "not available",
            ""
            if abi >= SCOPE_ABI
            else f"a kernel ≥ 6.12 (Landlock ABI {SCOPE_ABI}, which scopes signals) with "
            "CONFIG_SECURITY_LANDLOCK and landlock in the lsm= boot list",
        )
    )
    seccomp = seccomp_available()
    findings.append(
        Finding(
            "seccomp (libseccomp)",
            seccomp,
            "filters load" if seccomp else "libseccomp.so.2 not loadable",
            "" if seccomp else "apt-get install libseccomp2",
        )
    )
    landlock_ok = abi >= SCOPE_ABI and seccomp
    return findings, bwrap_ok and seccomp, landlock_ok


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


async def _probe(client: Any, argv: list[str], cwd: str, mode: str) -> tuple[int | None, bool, str]:
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


async def _probes(backend: str) -> list[Finding]:
    from codexexec.client import ExecServerClient

    workspace = tempfile.mkdtemp(prefix="codexexec-check-", dir="/var/tmp")
    os.mkdir(os.path.join(workspace, ".git"))
    outside = os.path.join("/var", f"codexexec-check-{os.getpid()}")
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    port = listener.getsockname()[1]
    connect = [
        sys.executable,
        "-c",
        f"import socket; socket.create_connection(('127.0.0.1', {port}), timeout=2)",
    ]
    write_outside = ["/bin/sh", "-c", f"echo x > {outside}"]
    cases = [
        (
            "workspace-write: write inside the workspace",
            ["/bin/sh", "-c", "echo ok > p.txt"],
            False,
            "workspace-write",
        ),
        ("workspace-write: write outside writable roots", write_outside, True, "workspace-write"),
        (
            "workspace-write: write to .git",
            ["/bin/sh", "-c", "echo x > .git/probe"],
            True,
            "workspace-write",
        ),
        ("workspace-write: network connect", connect, True, "workspace-write"),
        ("read-only: write outside", write_outside, True, "read-only"),
        ("read-only: network connect", connect, True, "read-only"),
    ]
    findings = []
    try:
        with _forced(backend):
            async with await ExecServerClient.connect("local") as client:
                for name, argv, should_block, mode in cases:
                    code, denied, error = await _probe(client, argv, workspace, mode)
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
                        ok = code != 0 and denied
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
        shutil.rmtree(workspace, ignore_errors=True)
        with contextlib.suppress(OSError):
            os.unlink(outside)
    return findings


def run_check() -> Report:
    host, bwrap_ok, landlock_ok = host_findings()
    probes: dict[str, list[Finding]] = {}
    if bwrap_ok:
        probes["bubblewrap"] = asyncio.run(_probes("bwrap"))
    if landlock_ok:
        probes["landlock"] = asyncio.run(_probes("landlock"))
    default = "bubblewrap" if bwrap_ok else "landlock" if landlock_ok else None
    return Report(host, probes, default)
