"""`sandbox-check` for Linux, the host's side: which backends this host has (bwrap, user
namespaces, Landlock, seccomp), each with the fix for a failure, and the report's shape.
The probes that run real commands through an executor are the CLI's
(``cli/sandbox_probes.py``): the sandbox package holds no client code.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from codexexec.sandbox.linux import bwrap as bw


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
