"""seccomp network/escape filter for sandboxed children, built with libseccomp via ctypes.

The network rules mirror Codex's linux-sandbox: the default action is ALLOW and every
matching rule fails the syscall with EPERM; on top come the hardening rules of
docs/sandbox-hardening.md, which Codex does not have. EPERM (not a kill) matters:
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
import stat
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from codexexec.sandbox.errors import SandboxError
from codexexec.sandbox.linux.prctl import set_no_new_privs

__all__ = [
    "SeccompError",
    "SeccompMode",
    "SeccompUnavailable",
    "apply_seccomp",
    "export_bpf",
    "seccomp_available",
]


class SeccompError(SandboxError, OSError):
    """A libseccomp or prctl call failed; the message names the call and the errno text."""


class SeccompUnavailable(SeccompError):
    """libseccomp.so.2 cannot be loaded, so no filter can be built."""


class SeccompMode(enum.Enum):
    RESTRICTED = "restricted"
    PROXY_ROUTED = "proxy_routed"
    VM_SOCKET_RESTRICTED = "vm_socket_restricted"


# libseccomp ABI constants (seccomp.h); stable across libseccomp 2.x.
_SCMP_ACT_ALLOW = 0x7FFF0000
_SCMP_ACT_ERRNO = 0x00050000
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
# Refused in every mode (docs/sandbox-hardening.md §2): what changes the mounts, enters or
# makes namespaces, reaches the kernel's keyrings, BPF, perf, modules, the clocks or the
# host's identity. Capabilities are dropped too; this is the second wall, and it holds for
# a root executor on the Landlock fallback, where no user namespace takes them away.
_HARDENING = (
    "mount",
    "umount2",
    "pivot_root",
    "chroot",
    "move_mount",
    "open_tree",
    "fsopen",
    "fsconfig",
    "fsmount",
    "fspick",
    "mount_setattr",
    "setns",
    "open_by_handle_at",
    "name_to_handle_at",
    "keyctl",
    "add_key",
    "request_key",
    "bpf",
    "perf_event_open",
    "userfaultfd",
    "init_module",
    "finit_module",
    "delete_module",
    "kexec_load",
    "kexec_file_load",
    "clock_settime",
    "clock_adjtime",
    "settimeofday",
    "adjtimex",
    "sethostname",
    "setdomainname",
    "swapon",
    "swapoff",
    "reboot",
    "acct",
    "quotactl",
    "quotactl_fd",
    "syslog",
    "vhangup",
    "iopl",
    "ioperm",
    "lookup_dcookie",
)
# Changing a file's mode, owner, times or extended attributes: Landlock has no right for
# these, so where Landlock alone keeps the file system read-only they are refused outright.
_METADATA = (
    "chmod",
    "fchmod",
    "fchmodat",
    "fchmodat2",
    "chown",
    "fchown",
    "lchown",
    "fchownat",
    "utime",
    "utimes",
    "futimesat",
    "utimensat",
    "setxattr",
    "lsetxattr",
    "fsetxattr",
    "removexattr",
    "lremovexattr",
    "fremovexattr",
    "setxattrat",
    "removexattrat",
    "file_setattr",
)
# SysV and POSIX IPC objects live in the IPC namespace: shared with the host where no
# namespace of its own is made (the Landlock backend), where they would reach (or remove)
# the host's message queues, semaphores and shared memory.
_HOST_IPC = (
    "msgget",
    "msgsnd",
    "msgrcv",
    "msgctl",
    "semget",
    "semop",
    "semtimedop",
    "semctl",
    "shmget",
    "shmat",
    "shmdt",
    "shmctl",
    "mq_open",
    "mq_unlink",
    "mq_timedsend",
    "mq_timedreceive",
    "mq_notify",
    "mq_getsetattr",
)
# Syscalls newer than the libseccomp of older distributions; numbers since 424 are the same
# on every architecture.
_NUMBERS = {"fchmodat2": 452, "setxattrat": 463, "removexattrat": 466, "file_setattr": 469}

# Flags that make a namespace (clone(2) and unshare(2) take them in argument 0).
_CLONE_NEW = {
    "CLONE_NEWTIME": 0x80,
    "CLONE_NEWNS": 0x20000,
    "CLONE_NEWCGROUP": 0x2000000,
    "CLONE_NEWUTS": 0x4000000,
    "CLONE_NEWIPC": 0x8000000,
    "CLONE_NEWUSER": 0x10000000,
    "CLONE_NEWPID": 0x20000000,
    "CLONE_NEWNET": 0x40000000,
}
# chmod-family syscalls and the argument holding the mode: a set-user-ID or set-group-ID
# file written from inside would run with the executor's ids when anyone runs it outside.
_CHMODS = (("chmod", 1), ("fchmod", 1), ("fchmodat", 2), ("fchmodat2", 2))
_SETID_BITS = (stat.S_ISUID, stat.S_ISGID)
# ioctls that push input into a terminal (TIOCSTI) or drive the console (TIOCLINUX).
_TIOCSTI = 0x5412
_TIOCLINUX = 0x541C
# Unix socket types that can send to any path by address (SOCK_RAW is a datagram socket
# for AF_UNIX). Stream and seqpacket sockets need connect(), which offline mode refuses.
_SOCK_TYPE_MASK = 0xF
_ADDRESSED_UNIX_TYPES = (socket.SOCK_DGRAM, socket.SOCK_RAW)


class _ArgCmp(ctypes.Structure):
    """struct scmp_arg_cmp."""

    _fields_ = [
        ("arg", ctypes.c_uint),
        ("op", ctypes.c_int),
        ("datum_a", ctypes.c_uint64),
        ("datum_b", ctypes.c_uint64),
    ]


# A dataclass, not a msgspec Struct: the Landlock stage imports this module in a Python
# started without site-packages (backend.py).
@dataclass(frozen=True, slots=True)
class _Rule:
    """Fail ``syscall`` with ``errno`` when every (argument, mask, value) condition holds."""

    syscall: str
    conditions: tuple[tuple[int, int, int], ...] = ()
    errno: int = errno.EPERM


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


def _hardening_rules() -> list[_Rule]:
    rules = [_Rule(name) for name in (*_IO_URING, *_HARDENING)]
    for flag in _CLONE_NEW.values():
        rules += [_Rule(name, ((0, flag, flag),)) for name in ("clone", "unshare")]
    # clone3 passes its flags in memory seccomp cannot read; ENOSYS makes libc fall back
    # to clone, whose flags are checked above.
    rules.append(_Rule("clone3", errno=errno.ENOSYS))
    rules += [_Rule("ioctl", ((1, _LOW32, cmd),)) for cmd in (_TIOCSTI, _TIOCLINUX)]
    rules += [_Rule(name, ((arg, bit, bit),)) for name, arg in _CHMODS for bit in _SETID_BITS]
    return rules


def _addressed_unix(name: str) -> list[_Rule]:
    """``name`` (socket or socketpair) refused for Unix datagram sockets: sendmsg(2) with
    an address reaches a host socket file even from one end of a socketpair."""
    return [
        _Rule(name, ((0, _LOW32, _AF_UNIX), (1, _SOCK_TYPE_MASK, kind)))
        for kind in _ADDRESSED_UNIX_TYPES
    ]


def _rules(mode: SeccompMode, allow_unix_sockets: bool, host_namespaces: bool) -> list[_Rule]:
    rules = _hardening_rules()
    if host_namespaces:
        rules += [_Rule(name) for name in (*_METADATA, *_HOST_IPC)]
    if mode is not SeccompMode.VM_SOCKET_RESTRICTED:
        rules += [_Rule(name) for name in _PROCESS_ACCESS]

    def domain_not_in(name: str, allowed: Sequence[int]) -> list[_Rule]:
        return [_Rule(name, ((0, mask, value),)) for mask, value in _low32_not_in(allowed)]

    if mode is SeccompMode.RESTRICTED:
        rules += [_Rule(name) for name in _RESTRICTED_NET]
        rules += domain_not_in("socket", [_AF_UNIX])
        rules += domain_not_in("socketpair", [_AF_UNIX])
        rules += _addressed_unix("socket") + _addressed_unix("socketpair")
    elif mode is SeccompMode.PROXY_ROUTED:
        # The netns only reaches the loopback proxy bridges, so IP sockets are harmless;
        # Unix sockets could reach host daemons, hence opt-in only.
        inet = [_AF_INET, _AF_INET6] + ([_AF_UNIX] if allow_unix_sockets else [])
        rules += domain_not_in("socket", inet)
        rules += domain_not_in("socketpair", [_AF_UNIX])
        if not allow_unix_sockets:
            rules += _addressed_unix("socketpair")
    else:
        # WSL2 exposes host interop over vsock; that is the only socket blocked here.
        rules += [_Rule(name, ((0, _LOW32, _AF_VSOCK),)) for name in ("socket", "socketpair")]
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


def _syscall_number(lib: ctypes.CDLL, name: str) -> int:
    nr: int = lib.seccomp_syscall_resolve_name(name.encode())
    if nr == _NR_SCMP_ERROR:
        nr = _NUMBERS.get(name, _NR_SCMP_ERROR)
    if nr == _NR_SCMP_ERROR:
        raise SeccompError(
            errno.EINVAL, f"seccomp_syscall_resolve_name failed: unknown syscall {name}"
        )
    return nr


def _build(lib: ctypes.CDLL, rules: list[_Rule]) -> int:
    ctx: int | None = lib.seccomp_init(_SCMP_ACT_ALLOW)
    if not ctx:
        raise SeccompError(errno.ENOMEM, "seccomp_init failed: could not allocate a filter")
    try:
        for rule in rules:
            nr = _syscall_number(lib, rule.syscall)
            compares = (_ArgCmp * max(1, len(rule.conditions)))()
            for slot, (arg, mask, value) in enumerate(rule.conditions):
                compares[slot] = _ArgCmp(arg, _SCMP_CMP_MASKED_EQ, mask, value)
            action = _SCMP_ACT_ERRNO | rule.errno
            rc: int = lib.seccomp_rule_add_array(
                ctx, action, nr, len(rule.conditions), compares if rule.conditions else None
            )
            _check(f"seccomp_rule_add_array({rule.syscall})", rc)
    except BaseException:
        lib.seccomp_release(ctx)
        raise
    return ctx


def apply_seccomp(
    mode: SeccompMode, *, allow_unix_sockets: bool = False, host_namespaces: bool = False
) -> None:
    """Install the filter for `mode` on the calling thread; it survives execve.

    Call it in the single-threaded helper right before exec: other threads would keep
    running unfiltered, and bridge children forked afterwards would inherit the filter.
    ``host_namespaces``: the child shares the host's mount and IPC namespaces (the Landlock
    backend), so chmod, chown, utimes, xattr changes and IPC objects are refused too.
    """
    lib = _libseccomp()
    # NNP is what lets an unprivileged process install a filter; it also stops setuid
    # binaries from regaining privileges (it is set here, not earlier, because it breaks
    # a setuid bwrap).
    set_no_new_privs()
    ctx = _build(lib, _rules(mode, allow_unix_sockets, host_namespaces))
    try:
        _check("seccomp_load", lib.seccomp_load(ctx))
    finally:
        lib.seccomp_release(ctx)


def export_bpf(
    mode: SeccompMode, *, allow_unix_sockets: bool = False, host_namespaces: bool = False
) -> bytes:
    """The compiled classic-BPF program (struct sock_filter array) for `mode`.

    Nothing is loaded into the caller. The bytes can be written to a pipe or memfd and
    handed to `bwrap --add-seccomp-fd FD`.
    """
    lib = _libseccomp()
    ctx = _build(lib, _rules(mode, allow_unix_sockets, host_namespaces))
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
