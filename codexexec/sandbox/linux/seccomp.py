"""seccomp network/escape filter for sandboxed children, built with libseccomp via ctypes.

The filter mirrors Codex's linux-sandbox (sandbox-and-network.md §3.5): the default action
is ALLOW and every matching rule fails the syscall with EPERM. EPERM (not a kill) matters:
"Operation not permitted" is what the denial heuristic recognises, whereas a bare network
namespace only yields ENETUNREACH, which it would miss.

libseccomp compares syscall arguments as 64-bit values, but the kernel truncates the
`domain` argument of socket(2)/socketpair(2) to an int. A rule such as "domain == AF_VSOCK"
would therefore miss `syscall(SYS_socket, (1 << 32) | AF_VSOCK, ...)`. All domain tests
below are expressed with SCMP_CMP_MASKED_EQ on the low 32 bits only, so the filter sees the
same value the kernel acts on (this is what seccompiler's 32-bit "Dword" compare does).

Native-arch only: libseccomp's default bad-arch action kills the process, so i386 or x32
system calls (including the i386 `socketcall` multiplexer) cannot be used to bypass the rules.
"""

from __future__ import annotations

import ctypes
import enum
import errno
import os
import socket
from collections.abc import Iterable, Sequence

from codexexec.sandbox.linux.prctl import set_no_new_privs

__all__ = [
    "SeccompError",
    "SeccompMode",
    "SeccompUnavailable",
    "apply_seccomp",
    "export_bpf",
    "seccomp_available",
]


class SeccompError(OSError):
    """A libseccomp or prctl call failed; the message names the call and the errno text."""


class SeccompUnavailable(SeccompError):
    """libseccomp.so.2 cannot be loaded, so no filter can be built."""


class SeccompMode(enum.Enum):
    RESTRICTED = "restricted"
    PROXY_ROUTED = "proxy_routed"
    VM_SOCKET_RESTRICTED = "vm_socket_restricted"


# libseccomp ABI constants (seccomp.h); stable across libseccomp 2.x.
_SCMP_ACT_ALLOW = 0x7FFF0000
_SCMP_ACT_ERRNO_EPERM = 0x00050000 | errno.EPERM
_SCMP_CMP_MASKED_EQ = 7
_NR_SCMP_ERROR = -1
_LOW32 = 0xFFFF_FFFF

_AF_UNIX = int(socket.AF_UNIX)
_AF_INET = int(socket.AF_INET)
_AF_INET6 = int(socket.AF_INET6)
_AF_VSOCK = 40  # socket.AF_VSOCK is missing on some builds; the kernel value is fixed.

# io_uring can open sockets and files without ever calling socket()/open(), bypassing the rules.
_IO_URING = ("io_uring_setup", "io_uring_enter", "io_uring_register")
# Inspecting or writing another process's memory would let a child escape its own filter.
_PROCESS_ACCESS = ("ptrace", "process_vm_readv", "process_vm_writev")
# Offline mode: no socket operation except creating Unix sockets. recvfrom is deliberately
# allowed (tools such as cargo talk over socketpairs) and so are sendmsg/recvmsg.
_RESTRICTED_NET = (
    "connect",
    "accept",
    "accept4",
    "bind",
    "listen",
    "getpeername",
    "getsockname",
    "shutdown",
    "sendto",
    "sendmmsg",
    "recvmmsg",
    "getsockopt",
    "setsockopt",
)


class _ArgCmp(ctypes.Structure):
    """struct scmp_arg_cmp."""

    _fields_ = [
        ("arg", ctypes.c_uint),
        ("op", ctypes.c_int),
        ("datum_a", ctypes.c_uint64),
        ("datum_b", ctypes.c_uint64),
    ]


# A rule is (syscall name, optional (mask, value) pair on arg0 that must match).
_Rule = tuple[str, tuple[int, int] | None]


def _low32_not_in(allowed: Iterable[int]) -> list[tuple[int, int]]:
    """(mask, value) pairs whose union is exactly "low 32 bits of the argument not in allowed".

    libseccomp has no masked not-equal, and separate rules for one syscall are OR-ed, so
    the complement is covered by walking a binary trie of the allowed values from the top
    bit down: wherever a prefix leaves every allowed value, one masked-equal rule covers
    the whole subtree. At most 32 * len(allowed) rules, none of them overlapping.
    """
    values = {v & _LOW32 for v in allowed}
    pairs: list[tuple[int, int]] = []
    mask = 0
    prefixes = {0}
    for bit in range(31, -1, -1):
        mask |= 1 << bit
        next_prefixes = {v & mask for v in values}
        for prefix in sorted(prefixes):
            for child in (prefix, prefix | 1 << bit):
                if child not in next_prefixes:
                    pairs.append((mask, child))
        prefixes = next_prefixes
    return pairs


def _rules(mode: SeccompMode, allow_unix_sockets: bool) -> list[_Rule]:
    rules: list[_Rule] = [(name, None) for name in _IO_URING]
    if mode is not SeccompMode.VM_SOCKET_RESTRICTED:
        rules += [(name, None) for name in _PROCESS_ACCESS]

    def domain_not_in(name: str, allowed: Sequence[int]) -> list[_Rule]:
        return [(name, pair) for pair in _low32_not_in(allowed)]

    if mode is SeccompMode.RESTRICTED:
        rules += [(name, None) for name in _RESTRICTED_NET]
        rules += domain_not_in("socket", [_AF_UNIX])
        rules += domain_not_in("socketpair", [_AF_UNIX])
    elif mode is SeccompMode.PROXY_ROUTED:
        # The netns only reaches the loopback proxy bridges, so IP sockets are harmless;
        # Unix sockets could reach host daemons, hence opt-in only.
        inet = [_AF_INET, _AF_INET6] + ([_AF_UNIX] if allow_unix_sockets else [])
        rules += domain_not_in("socket", inet)
        rules += domain_not_in("socketpair", [_AF_UNIX])
    else:
        # WSL2 exposes host interop over vsock; that is the only thing blocked here.
        rules += [(name, (_LOW32, _AF_VSOCK)) for name in ("socket", "socketpair")]
    return rules


_lib: ctypes.CDLL | None = None


def _libseccomp() -> ctypes.CDLL:
    global _lib
    if _lib is not None:
        return _lib
    try:
        lib = ctypes.CDLL("libseccomp.so.2", use_errno=True)
    except OSError as exc:
        raise SeccompUnavailable(
            errno.ENOSYS, f"libseccomp.so.2 cannot be loaded ({exc}); install libseccomp2"
        ) from exc
    lib.seccomp_init.argtypes = [ctypes.c_uint32]
    lib.seccomp_init.restype = ctypes.c_void_p
    lib.seccomp_release.argtypes = [ctypes.c_void_p]
    lib.seccomp_release.restype = None
    lib.seccomp_syscall_resolve_name.argtypes = [ctypes.c_char_p]
    lib.seccomp_syscall_resolve_name.restype = ctypes.c_int
    lib.seccomp_rule_add_array.argtypes = [
        ctypes.c_void_p,
        ctypes.c_uint32,
        ctypes.c_int,
        ctypes.c_uint,
        ctypes.POINTER(_ArgCmp),
    ]
    lib.seccomp_rule_add_array.restype = ctypes.c_int
    lib.seccomp_load.argtypes = [ctypes.c_void_p]
    lib.seccomp_load.restype = ctypes.c_int
    lib.seccomp_export_bpf.argtypes = [ctypes.c_void_p, ctypes.c_int]
    lib.seccomp_export_bpf.restype = ctypes.c_int
    _lib = lib
    return lib


def seccomp_available() -> bool:
    """True when libseccomp can be loaded and the kernel supports seccomp filters."""
    try:
        _libseccomp()
    except SeccompUnavailable:
        return False
    # /proc/self/status has a "Seccomp:" line only on kernels built with CONFIG_SECCOMP.
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            return any(line.startswith("Seccomp:") for line in status)
    except OSError:
        return True  # no /proc: trust the library; loading will report a real failure


def _check(func: str, rc: int) -> None:
    """libseccomp returns -errno on failure."""
    if rc < 0:
        raise SeccompError(-rc, f"{func} failed: {os.strerror(-rc)}")


def _build(lib: ctypes.CDLL, mode: SeccompMode, allow_unix_sockets: bool) -> int:
    ctx: int | None = lib.seccomp_init(_SCMP_ACT_ALLOW)
    if not ctx:
        raise SeccompError(errno.ENOMEM, "seccomp_init failed: could not allocate a filter")
    try:
        for name, cmp in _rules(mode, allow_unix_sockets):
            nr: int = lib.seccomp_syscall_resolve_name(name.encode())
            if nr == _NR_SCMP_ERROR:
                raise SeccompError(
                    errno.EINVAL, f"seccomp_syscall_resolve_name failed: unknown syscall {name}"
                )
            if cmp is None:
                rc: int = lib.seccomp_rule_add_array(ctx, _SCMP_ACT_ERRNO_EPERM, nr, 0, None)
            else:
                arg = _ArgCmp(0, _SCMP_CMP_MASKED_EQ, cmp[0], cmp[1])
                rc = lib.seccomp_rule_add_array(
                    ctx, _SCMP_ACT_ERRNO_EPERM, nr, 1, ctypes.byref(arg)
                )
            _check(f"seccomp_rule_add_array({name})", rc)
    except BaseException:
        lib.seccomp_release(ctx)
        raise
    return ctx


def apply_seccomp(mode: SeccompMode, *, allow_unix_sockets: bool = False) -> None:
    """Install the filter for `mode` on the calling thread; it survives execve.

    Call it in the single-threaded helper right before exec: other threads would keep
    running unfiltered, and bridge children forked afterwards would inherit the filter.
    """
    lib = _libseccomp()
    # NNP is what lets an unprivileged process install a filter; it also stops setuid
    # binaries from regaining privileges (it is set here, not earlier, because it breaks
    # a setuid bwrap).
    set_no_new_privs()
    ctx = _build(lib, mode, allow_unix_sockets)
    try:
        _check("seccomp_load", lib.seccomp_load(ctx))
    finally:
        lib.seccomp_release(ctx)


def export_bpf(mode: SeccompMode, *, allow_unix_sockets: bool = False) -> bytes:
    """The compiled classic-BPF program (struct sock_filter array) for `mode`.

    Nothing is loaded into the caller. The bytes can be written to a pipe or memfd and
    handed to `bwrap --add-seccomp-fd FD`.
    """
    lib = _libseccomp()
    ctx = _build(lib, mode, allow_unix_sockets)
    try:
        # A memfd rather than a pipe: libseccomp writes the whole program in one go, and a
        # large program would block on a full pipe with nobody reading the other end.
        fd = os.memfd_create("codexexec-seccomp", os.MFD_CLOEXEC)
        try:
            _check("seccomp_export_bpf", lib.seccomp_export_bpf(ctx, fd))
            os.lseek(fd, 0, os.SEEK_SET)
            chunks = []
            while chunk := os.read(fd, 65536):
                chunks.append(chunk)
            return b"".join(chunks)
        finally:
            os.close(fd)
    finally:
        lib.seccomp_release(ctx)
