"""Seatbelt (SBPL) profile generation for a resolved sandbox plan (docs/sandbox-intent.md §4).

The command runs as ``/usr/bin/sandbox-exec -p <profile> -DKEY=VALUE ... -- <argv>``.
Host paths never appear in the profile text: each one is canonicalized with
``os.path.realpath`` and passed as a ``-D`` parameter that the text names with
``(param "KEY")``. The single exception is the regex that keeps protected metadata
names (``.git``, ``.agents``, ``.codex``, ``.aws``) out of reach inside a writable root; SBPL
regexes cannot take parameters, so the root is spelled into it with every regex
metacharacter (and the string delimiter) escaped.

Sections, in order: base, file read, file write, denied paths, network. Seatbelt lets
a later matching rule override an earlier one, which is why the denials follow the
allows they carve holes in.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType
from typing import Final

from codexexec.sandbox.plan import PROTECTED_METADATA_NAMES, SandboxPlan

SANDBOX_TYPE: Final = "macosSeatbelt"
# Hard-coded: looking it up on PATH would let the environment substitute another binary.
SANDBOX_EXEC: Final = "/usr/bin/sandbox-exec"
# Added to the child's environment so tools can tell they run under Seatbelt.
SEATBELT_ENV: Final[Mapping[str, str]] = MappingProxyType({"CODEX_SANDBOX": "seatbelt"})

_HEADER = "(version 1)\n(deny default)"

# What nearly every command needs, whatever the plan says.
_BASE = """\
; ---- base ----
; Run and fork programs; signal and inspect only processes inside this sandbox.
(allow process-exec)
(allow process-fork)
(allow signal (target same-sandbox))
(allow process-info* (target same-sandbox))

; Discarding output into the null device is always fine.
(allow file-write-data
  (require-all (literal "/dev/null") (vnode-type CHARACTER-DEVICE)))

; Harmless system facts that runtimes probe at start-up.
(allow sysctl-read
  (sysctl-name "hw.activecpu")
  (sysctl-name "hw.logicalcpu")
  (sysctl-name "hw.logicalcpu_max")
  (sysctl-name "hw.memsize")
  (sysctl-name "hw.ncpu")
  (sysctl-name "hw.pagesize")
  (sysctl-name "hw.physicalcpu")
  (sysctl-name "hw.physicalcpu_max")
  (sysctl-name-prefix "hw.optional.")
  (sysctl-name "kern.argmax")
  (sysctl-name "kern.hostname")
  (sysctl-name "kern.maxfilesperproc")
  (sysctl-name "kern.maxproc")
  (sysctl-name "kern.osproductversion")
  (sysctl-name "kern.osrelease")
  (sysctl-name "kern.ostype")
  (sysctl-name "kern.osversion")
  (sysctl-name "kern.version")
  (sysctl-name-prefix "kern.proc.pid.")
  (sysctl-name "machdep.cpu.brand_string")
  (sysctl-name "sysctl.proc_cputype")
  (sysctl-name "vm.loadavg"))

; Terminals: open new pseudo-terminals, use the ones handed to us.
(allow pseudo-tty)
(allow file-read* file-write* file-ioctl (literal "/dev/ptmx"))
(allow file-read* file-write*
  (require-all (regex #"^/dev/ttys[0-9]+$") (extension "com.apple.sandbox.pty")))
(allow file-ioctl (regex #"^/dev/ttys[0-9]+$"))

; POSIX semaphores (Python multiprocessing locks).
(allow ipc-posix-sem)"""

# Services that name resolution and TLS certificate checks talk to; needed whenever
# any network access is allowed, including through a managed proxy.
_NETWORK_SUPPORT = """\
(allow system-socket (require-all (socket-domain AF_SYSTEM) (socket-protocol 2)))
(allow mach-lookup
  (global-name "com.apple.SecurityServer")
  (global-name "com.apple.SystemConfiguration.DNSConfiguration")
  (global-name "com.apple.SystemConfiguration.configd")
  (global-name "com.apple.bsd.dirhelper")
  (global-name "com.apple.networkd")
  (global-name "com.apple.ocspd")
  (global-name "com.apple.system.opendirectoryd.membership")
  (global-name "com.apple.trustd.agent"))
(allow sysctl-read (sysctl-name-prefix "net.routetable"))"""

# Characters with a meaning in Seatbelt regexes, plus the literal's own delimiter.
_REGEX_SPECIAL = frozenset('\\.^$|?*+()[]{}"')


@dataclass(frozen=True)
class SeatbeltProfile:
    text: str
    # Passed as -DKEY=VALUE, in insertion order.
    params: dict[str, str]


def seatbelt_regex_escape(text: str) -> str:
    """``text`` as a regex that matches exactly it, safe inside a ``#"..."`` literal."""
    return "".join("\\" + ch if ch in _REGEX_SPECIAL else ch for ch in text)


def _name_pattern(name: str) -> str:
    """A case-insensitive pattern for one metadata name.

    The default macOS file systems ignore case, so ``mkdir .CODEX`` would otherwise slip
    past a rule that only spells ``.codex``.
    """
    parts = []
    for ch in name:
        if ch.lower() != ch.upper():
            parts.append(f"[{ch.upper()}{ch.lower()}]")
        else:
            parts.append(seatbelt_regex_escape(ch))
    return "".join(parts)


def protected_names_regex(root: str) -> str:
    """The body of the regex matching the protected metadata names directly under ``root``."""
    names = "|".join(_name_pattern(name) for name in PROTECTED_METADATA_NAMES)
    return f"^{seatbelt_regex_escape(root.rstrip('/'))}/({names})(/.*)?$"


def _canonical(path: str) -> str:
    return os.path.realpath(path)


def _within(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip("/") + "/")


def _unique(paths: Sequence[str]) -> list[str]:
    return list(dict.fromkeys(paths))


def _validated_ports(ports: Sequence[int]) -> list[int]:
    valid: list[int] = []
    for port in ports:
        if isinstance(port, bool) or not isinstance(port, int) or not 0 < port < 65536:
            raise ValueError(f"invalid loopback proxy port {port!r}")
        if port not in valid:
            valid.append(port)
    return valid


class _Builder:
    def __init__(self) -> None:
        self.params: dict[str, str] = {}

    def param(self, key: str, path: str) -> str:
        self.params[key] = path
        return f'(param "{key}")'


def _read_section(plan: SandboxPlan, builder: _Builder) -> list[str]:
    lines = ["; ---- file read ----"]
    if plan.full_read:
        lines.append("(allow file-read*)")
        return lines
    for index, root in enumerate(_unique([_canonical(p) for p in plan.readable_roots])):
        ref = builder.param(f"READABLE_ROOT_{index}", root)
        lines.append(f"(allow file-read* (subpath {ref}))")
    return lines


def _write_section(plan: SandboxPlan, builder: _Builder) -> list[str]:
    lines = ["; ---- file write ----"]
    if plan.full_write:
        lines.append('(allow file-write* (regex #"^/"))')
        return lines
    roots = _unique([_canonical(root.path) for root in plan.writable_roots])
    # Read-only carve-outs hold wherever they fall, like read-only bind mounts on Linux:
    # a worktree's gitdir may sit under a different writable root than its `.git` file.
    carve_outs = _unique(
        [
            _canonical(path)
            for root in plan.writable_roots
            for path in (*root.read_only, *root.missing_protected)
        ]
    )
    for index, root in enumerate(roots):
        key = f"WRITABLE_ROOT_{index}"
        clauses = [f"(subpath {builder.param(key, root)})"]
        inside = [path for path in carve_outs if path != root and _within(path, root)]
        for ro_index, path in enumerate(inside):
            ref = builder.param(f"{key}_RO_{ro_index}", path)
            # `literal` as well as `subpath`, so a missing path cannot even be created.
            clauses.append(f"(require-not (literal {ref}))")
            clauses.append(f"(require-not (subpath {ref}))")
        clauses.append(f'(require-not (regex #"{protected_names_regex(root)}"))')
        body = "\n".join(f"    {clause}" for clause in clauses)
        lines.append(f"(allow file-write*\n  (require-all\n{body}))")
    return lines


def _denied_section(plan: SandboxPlan, builder: _Builder) -> list[str]:
    lines = ["; ---- denied paths ----"]
    for index, path in enumerate(_unique([_canonical(p) for p in plan.denied])):
        ref = builder.param(f"DENIED_PATH_{index}", path)
        lines.append(f"(deny file-read* (subpath {ref}))")
        lines.append(f"(deny file-write* (subpath {ref}))")
    return lines


def _network_section(plan: SandboxPlan, ports: list[int], allow_local_binding: bool) -> list[str]:
    lines = ["; ---- network ----"]
    if ports:
        # Managed proxy: the proxy enforces the network policy, so the command may reach
        # only the proxy's own loopback ports (and, if asked, servers it runs itself).
        lines += [f'(allow network-outbound (remote ip "localhost:{port}"))' for port in ports]
        if allow_local_binding:
            lines += [
                '(allow network-bind (local ip "localhost:*"))',
                '(allow network-inbound (local ip "localhost:*"))',
                '(allow network-outbound (remote ip "localhost:*"))',
            ]
        lines.append(_NETWORK_SUPPORT)
    elif plan.network_enabled:
        lines += [
            "(allow network-outbound)",
            "(allow network-inbound)",
            "(allow system-socket (socket-domain AF_UNIX))",
            _NETWORK_SUPPORT,
        ]
    return lines


def seatbelt_profile(
    plan: SandboxPlan, *, loopback_ports: Sequence[int] = (), allow_local_binding: bool = False
) -> SeatbeltProfile:
    """The Seatbelt profile text and its parameters for ``plan``.

    ``loopback_ports`` are the managed proxy's ports: when any are given the command may
    connect only to them, whatever ``plan.network_enabled`` says (the proxy decides).
    With none, network access follows ``plan.network_enabled``.
    """
    ports = _validated_ports(loopback_ports)
    builder = _Builder()
    sections = [
        _HEADER,
        _BASE,
        "\n".join(_read_section(plan, builder)),
        "\n".join(_write_section(plan, builder)),
        "\n".join(_denied_section(plan, builder)),
        "\n".join(_network_section(plan, ports, allow_local_binding)),
    ]
    return SeatbeltProfile("\n\n".join(sections) + "\n", builder.params)


def wrap_command(
    plan: SandboxPlan,
    argv: list[str],
    *,
    loopback_ports: Sequence[int] = (),
    allow_local_binding: bool = False,
) -> list[str]:
    """``argv`` wrapped in sandbox-exec under the profile for ``plan``."""
    profile = seatbelt_profile(
        plan, loopback_ports=loopback_ports, allow_local_binding=allow_local_binding
    )
    defines = [f"-D{key}={value}" for key, value in profile.params.items()]
    return [SANDBOX_EXEC, "-p", profile.text, *defines, "--", *argv]
