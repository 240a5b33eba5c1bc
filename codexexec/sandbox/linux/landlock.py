"""Landlock confinement of the calling thread through raw syscalls (no libc wrappers exist).

This is the fallback filesystem (and optionally TCP) confinement (docs/sandbox-hardening.md
§3): read+execute beneath read roots, everything beneath write roots, /dev/null writable.
Landlock only ever removes rights, survives execve and needs no privilege (just
no_new_privs), so it is applied in the helper process right before it execs the command.
Denied accesses fail with EACCES ("Permission denied"), which the denial heuristic catches.
"""

from __future__ import annotations

import ctypes
import errno
import os
import stat
from collections.abc import Iterable

from codexexec.sandbox.errors import SandboxError
from codexexec.sandbox.linux.prctl import set_no_new_privs

__all__ = ["LandlockError", "LandlockUnavailable", "apply_landlock", "landlock_abi"]


class LandlockError(SandboxError, OSError):
    """A Landlock syscall failed; the message names the call and the errno text."""


class LandlockUnavailable(LandlockError):
    """The kernel lacks Landlock or it is disabled (not in the `lsm=` list)."""


# Syscall numbers are shared by every architecture (unified table, Linux 5.13+).
_SYS_CREATE_RULESET = 444
_SYS_ADD_RULE = 445
_SYS_RESTRICT_SELF = 446
_CREATE_RULESET_VERSION = 1 << 0
_RULE_PATH_BENEATH = 1
_RULE_NET_PORT = 2

# Filesystem access rights (uapi/linux/landlock.h).
_EXECUTE = 1 << 0
_WRITE_FILE = 1 << 1
_READ_FILE = 1 << 2
_READ_DIR = 1 << 3
_REMOVE_DIR = 1 << 4
_REMOVE_FILE = 1 << 5
_MAKE_CHAR = 1 << 6
_MAKE_DIR = 1 << 7
_MAKE_REG = 1 << 8
_MAKE_SOCK = 1 << 9
_MAKE_FIFO = 1 << 10
_MAKE_BLOCK = 1 << 11
_MAKE_SYM = 1 << 12
_REFER = 1 << 13  # ABI 2
_TRUNCATE = 1 << 14  # ABI 3
_IOCTL_DEV = 1 << 15  # ABI 5

_NET_BIND_TCP = 1 << 0  # ABI 4
_NET_CONNECT_TCP = 1 << 1  # ABI 4

_READ_EXEC = _EXECUTE | _READ_FILE | _READ_DIR
# Rights that make sense on a non-directory; the kernel rejects any other bit (EINVAL)
# in a rule whose path is not a directory.
_FILE_RIGHTS = _EXECUTE | _WRITE_FILE | _READ_FILE | _TRUNCATE | _IOCTL_DEV


def _fs_rights_for_abi(abi: int) -> int:
    """Every FS right this ABI knows. Handling an unknown bit makes create_ruleset fail,
    and leaving a known one unhandled would silently allow that operation."""
    rights = (1 << 13) - 1  # the 13 rights of ABI 1
    if abi >= 2:
        rights |= _REFER
    if abi >= 3:
        rights |= _TRUNCATE
    if abi >= 5:
        rights |= _IOCTL_DEV
    return rights


class _RulesetAttr(ctypes.Structure):
    # The kernel accepts a shorter struct from older userspace: `scoped` (ABI 6) is sent
    # only to kernels that know it.
    _fields_ = [
        ("handled_access_fs", ctypes.c_uint64),
        ("handled_access_net", ctypes.c_uint64),
        ("scoped", ctypes.c_uint64),
    ]


_SCOPED_OFFSET = _RulesetAttr.scoped.offset
# ABI 6: no signals to, and no abstract Unix sockets of, processes outside the domain.
_SCOPE_ABSTRACT_UNIX_SOCKET = 1 << 0
_SCOPE_SIGNAL = 1 << 1
SCOPE_ABI = 6


class _PathBeneathAttr(ctypes.Structure):
    _pack_ = 1  # packed in the uapi header: 12 bytes, not 16
    _fields_ = [("allowed_access", ctypes.c_uint64), ("parent_fd", ctypes.c_int32)]


class _NetPortAttr(ctypes.Structure):
    _fields_ = [("allowed_access", ctypes.c_uint64), ("port", ctypes.c_uint64)]


_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long


def _syscall(name: str, nr: int, *args: object) -> int:
    """syscall(2) with integer args widened to long (ctypes would pass a 32-bit int)."""
    wide = [ctypes.c_long(a) if isinstance(a, int) else a for a in args]
    rc = int(_libc.syscall(ctypes.c_long(nr), *wide))
    if rc < 0:
        err = ctypes.get_errno()
        raise LandlockError(err, f"{name} failed: {os.strerror(err)}")
    return rc


def landlock_abi() -> int:
    """The Landlock ABI version of the running kernel, or 0 if unsupported or disabled."""
    try:
        return _syscall(
            "landlock_create_ruleset", _SYS_CREATE_RULESET, None, 0, _CREATE_RULESET_VERSION
        )
    except LandlockError as exc:
        if exc.errno in (errno.ENOSYS, errno.EOPNOTSUPP):
            return 0
        raise


def _add_path_rules(ruleset: int, roots: Iterable[str], access: int) -> None:
    for root in roots:
        try:
            fd = os.open(root, os.O_PATH | os.O_CLOEXEC)
        except FileNotFoundError:
            continue  # a missing root grants nothing; creating it is not our job
        try:
            allowed = access
            if not stat.S_ISDIR(os.fstat(fd).st_mode):
                allowed &= _FILE_RIGHTS
            if allowed:
                attr = _PathBeneathAttr(allowed, fd)
                _syscall(
                    f"landlock_add_rule({root})",
                    _SYS_ADD_RULE,
                    ruleset,
                    _RULE_PATH_BENEATH,
                    ctypes.byref(attr),
                    0,
                )
        finally:
            os.close(fd)


def apply_landlock(
    *,
    read_roots: list[str],
    write_roots: list[str],
    tcp_connect_ports: list[int] | None = None,
    scoped: bool = False,
) -> None:
    """Confine the calling thread (and everything it execs) for good.

    Reads and execution are allowed beneath `read_roots`, all filesystem access beneath
    `write_roots`, and writing /dev/null. When `tcp_connect_ports` is given, TCP connect is
    limited to those ports and TCP bind is denied, but only on ABI >= 4: older kernels cannot
    express it and it is skipped (best effort, like Codex), so callers that rely on it must
    check `landlock_abi() >= 4` themselves. UDP and other protocols are never restricted.
    With ``scoped`` the thread can neither signal nor reach through abstract Unix sockets
    any process outside its domain; that needs ABI 6 and fails on older kernels.
    """
    abi = landlock_abi()
    if abi == 0:
        raise LandlockUnavailable(
            errno.EOPNOTSUPP, "Landlock is not supported or is disabled by this kernel"
        )
    ports = sorted(set(tcp_connect_ports)) if tcp_connect_ports is not None else None
    if ports and not all(0 <= port <= 0xFFFF for port in ports):
        raise ValueError(f"TCP ports must be within 0-65535: {tcp_connect_ports}")
    handled_fs = _fs_rights_for_abi(abi)
    limit_net = ports is not None and abi >= 4
    if scoped and abi < SCOPE_ABI:
        raise LandlockUnavailable(
            errno.EOPNOTSUPP, f"Landlock ABI {abi} cannot scope signals and abstract sockets"
        )
    attr = _RulesetAttr(
        handled_fs,
        _NET_BIND_TCP | _NET_CONNECT_TCP if limit_net else 0,
        _SCOPE_ABSTRACT_UNIX_SOCKET | _SCOPE_SIGNAL if scoped else 0,
    )
    size = ctypes.sizeof(attr) if abi >= SCOPE_ABI else _SCOPED_OFFSET
    ruleset = _syscall("landlock_create_ruleset", _SYS_CREATE_RULESET, ctypes.byref(attr), size, 0)
    try:
        _add_path_rules(ruleset, read_roots, _READ_EXEC)
        _add_path_rules(ruleset, write_roots, handled_fs)
        # Shell redirections open /dev/null with O_TRUNC (TRUNCATE right) and isatty()
        # probes it with an ioctl (IOCTL_DEV); both would otherwise fail with EACCES.
        _add_path_rules(
            ruleset, ["/dev/null"], (_READ_FILE | _WRITE_FILE | _TRUNCATE | _IOCTL_DEV) & handled_fs
        )
        if limit_net and ports:
            for port in ports:
                net = _NetPortAttr(_NET_CONNECT_TCP, port)
                _syscall(
                    f"landlock_add_rule(tcp port {port})",
                    _SYS_ADD_RULE,
                    ruleset,
                    _RULE_NET_PORT,
                    ctypes.byref(net),
                    0,
                )
        # restrict_self refuses to run without NNP unless the caller has CAP_SYS_ADMIN;
        # set it unconditionally so root and unprivileged callers behave the same.
        set_no_new_privs()
        _syscall("landlock_restrict_self", _SYS_RESTRICT_SELF, ruleset, 0)
    finally:
        os.close(ruleset)
