"""Dropping every capability for good, in the process that is about to exec a command.

bubblewrap does this itself (``--cap-drop ALL``); the Landlock backend has no user namespace
to take them away, so a root executor's child would otherwise keep all of them: remount
file systems, kill any process, read any file's secrets through ptrace. The order matters
(docs/sandbox-hardening.md §1): lock the securebits that let root regain capabilities on
exec, empty the bounding set, then the ambient, inheritable, permitted and effective sets.
"""

from __future__ import annotations

import ctypes
import errno
import os

from codexexec.sandbox.errors import SandboxError

_PR_CAPBSET_READ = 23
_PR_CAPBSET_DROP = 24
_PR_GET_SECUREBITS = 27
_PR_SET_SECUREBITS = 28
_PR_CAP_AMBIENT = 47
_PR_CAP_AMBIENT_CLEAR_ALL = 4
_CAP_SETPCAP = 8
_LINUX_CAPABILITY_VERSION_3 = 0x20080522
# noroot, no-setuid-fixup, keep-caps off, no-ambient-raise, each with its lock bit.
_SECBIT_NOROOT_AND_LOCKS = 0b1_1110_1111
_SECBIT_KEEP_CAPS = 1 << 4
_LAST_CAP_LIMIT = 64

_libc = ctypes.CDLL(None, use_errno=True)


class CapabilityError(SandboxError, OSError):
    """A capability could not be dropped; the command must not run."""


class _Header(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class _Data(ctypes.Structure):
    _fields_ = [
        ("effective", ctypes.c_uint32),
        ("permitted", ctypes.c_uint32),
        ("inheritable", ctypes.c_uint32),
    ]


def _prctl(option: int, arg2: int = 0, arg3: int = 0) -> int:
    rc = int(_libc.prctl(option, ctypes.c_ulong(arg2), ctypes.c_ulong(arg3), ctypes.c_ulong(0), 0))
    if rc < 0:
        err = ctypes.get_errno()
        raise CapabilityError(err, f"prctl({option}) failed: {os.strerror(err)}")
    return rc


def _capsets(operation: str) -> tuple[_Header, ctypes.Array[_Data]]:
    header = _Header(_LINUX_CAPABILITY_VERSION_3, 0)
    data = (_Data * 2)()
    if getattr(_libc, operation)(ctypes.byref(header), data) != 0:
        err = ctypes.get_errno()
        raise CapabilityError(err, f"{operation} failed: {os.strerror(err)}")
    return header, data


def _has_effective(capability: int) -> bool:
    _, data = _capsets("capget")
    return bool(data[capability // 32].effective & (1 << capability % 32))


def drop_all_capabilities() -> None:
    """Leave the calling thread, and whatever it execs, without any capability."""
    if _has_effective(_CAP_SETPCAP):
        # Without CAP_SETPCAP neither step is possible, and neither is needed: a process
        # that never had it cannot gain capabilities through exec under no_new_privs.
        bits = _prctl(_PR_GET_SECUREBITS)
        _prctl(_PR_SET_SECUREBITS, (bits & ~_SECBIT_KEEP_CAPS) | _SECBIT_NOROOT_AND_LOCKS)
        for capability in range(_LAST_CAP_LIMIT):
            try:
                _prctl(_PR_CAPBSET_DROP, capability)
            except CapabilityError as exc:
                if exc.errno == errno.EINVAL and capability > 0:
                    break  # past the kernel's last capability
                raise
            if _prctl(_PR_CAPBSET_READ, capability):
                raise CapabilityError(errno.EPERM, f"capability {capability} stayed bounded")
    _prctl(_PR_CAP_AMBIENT, _PR_CAP_AMBIENT_CLEAR_ALL)
    header = _Header(_LINUX_CAPABILITY_VERSION_3, 0)
    if _libc.capset(ctypes.byref(header), (_Data * 2)()) != 0:
        err = ctypes.get_errno()
        raise CapabilityError(err, f"capset failed: {os.strerror(err)}")
    _, data = _capsets("capget")
    if any(d.effective or d.permitted or d.inheritable for d in data):
        raise CapabilityError(errno.EPERM, "capabilities remained after capset")
