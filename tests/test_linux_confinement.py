"""seccomp and Landlock confinement, exercised for real in child processes.

Each filter is installed in a fresh `python -c` child (filters can never be removed, so
the test process itself must stay unconfined); the child tries a list of operations and
prints one JSON object mapping each to "ok" or "ERRNAME: strerror".
"""

from __future__ import annotations

import ctypes
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

if not sys.platform.startswith("linux"):
    pytest.skip("Linux confinement only", allow_module_level=True)

from codexexec.sandbox.linux import landlock, seccomp

REPO = str(Path(__file__).resolve().parents[1])
EPERM = "EPERM: Operation not permitted"
EACCES = "EACCES: Permission denied"
NOBODY = 65534

PRELUDE = f"""
import ctypes, errno, json, os, socket, sys
sys.path.insert(0, {REPO!r})
from codexexec.sandbox.linux import landlock, seccomp
libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long
results = {{}}

def attempt(name, fn):
    try:
        fn()
        results[name] = "ok"
    except OSError as e:
        results[name] = f"{{errno.errorcode[e.errno]}}: {{e.strerror}}"

def raw(nr, *args):
    rc = libc.syscall(ctypes.c_long(nr), *[ctypes.c_long(a) for a in args])
    if rc < 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))
    return rc

def sock(domain):
    socket.socket(domain, socket.SOCK_STREAM).close()

def raw_socket(domain):
    # The raw syscall lets the test set the upper 32 bits that libc would clear.
    os.close(raw(41, domain, socket.SOCK_STREAM, 0))

def pair(domain):
    for s in socket.socketpair(domain, socket.SOCK_STREAM):
        s.close()

def io_uring_setup():
    params = ctypes.create_string_buffer(120)
    os.close(raw(425, 1, ctypes.addressof(params)))

def process_vm_readv():
    raw(310, os.getpid(), 0, 0, 0, 0, 0)  # zero iovecs: a no-op when allowed
"""

SOCKET_PROBES = """
attempt("inet", lambda: sock(socket.AF_INET))
attempt("inet6", lambda: sock(socket.AF_INET6))
attempt("unix", lambda: sock(socket.AF_UNIX))
attempt("vsock", lambda: sock(40))
attempt("unix_pair", lambda: pair(socket.AF_UNIX))
attempt("hi_unix", lambda: raw_socket((1 << 32) | socket.AF_UNIX))
attempt("hi_inet", lambda: raw_socket((1 << 32) | socket.AF_INET))
attempt("hi_vsock", lambda: raw_socket((1 << 32) | 40))
attempt("io_uring_setup", io_uring_setup)
attempt("process_vm_readv", process_vm_readv)
"""


def system_python() -> str | None:
    """A Python an unprivileged user may run (the venv's interpreter may live under /root)."""
    for candidate in ("/usr/bin/python3", "/usr/local/bin/python3"):
        if os.access(candidate, os.X_OK):
            return candidate
    return None


def run_child(
    body: str,
    *,
    unprivileged: bool = False,
    pass_fds: tuple[int, ...] = (),
    wrapper: list[str] | None = None,
) -> dict[str, str]:
    python = sys.executable
    argv: list[str] = []
    if unprivileged:
        setpriv, python_ = shutil.which("setpriv"), system_python()
        if setpriv is None or python_ is None or os.geteuid() != 0:
            pytest.skip("needs root, setpriv and a system python3 to drop privileges")
        argv = [setpriv, f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups"]
        python = python_
    code = PRELUDE + body + "\nresults['uid'] = str(os.getuid())\nprint(json.dumps(results))\n"
    proc = subprocess.run(
        [*argv, *(wrapper or []), python, "-c", code],
        capture_output=True,
        text=True,
        timeout=60,
        pass_fds=pass_fds,
        cwd="/",
    )
    assert proc.returncode == 0, proc.stderr
    result: dict[str, str] = json.loads(proc.stdout.strip().splitlines()[-1])
    uid = result.pop("uid")
    if unprivileged:
        assert uid == str(NOBODY), "the child did not drop privileges"
    return result


# ---------------------------------------------------------------------------- seccomp

needs_seccomp = pytest.mark.skipif(not seccomp.seccomp_available(), reason="no libseccomp")

OK = "ok"
EXPECTED = {
    seccomp.SeccompMode.RESTRICTED: {
        "inet": EPERM,
        "inet6": EPERM,
        "unix": OK,
        "vsock": EPERM,
        "unix_pair": OK,
        "hi_unix": OK,
        "hi_inet": EPERM,
        "hi_vsock": EPERM,
        "io_uring_setup": EPERM,
        "process_vm_readv": EPERM,
    },
    seccomp.SeccompMode.PROXY_ROUTED: {
        "inet": OK,
        "inet6": OK,
        "unix": EPERM,
        "vsock": EPERM,
        "unix_pair": OK,
        "hi_unix": EPERM,
        "hi_inet": OK,
        "hi_vsock": EPERM,
        "io_uring_setup": EPERM,
        "process_vm_readv": EPERM,
    },
    seccomp.SeccompMode.VM_SOCKET_RESTRICTED: {
        "inet": OK,
        "inet6": OK,
        "unix": OK,
        "vsock": EPERM,
        "unix_pair": OK,
        "hi_unix": OK,
        "hi_inet": OK,
        "hi_vsock": EPERM,
        "io_uring_setup": EPERM,
        "process_vm_readv": OK,
    },
}


def test_unfiltered_baseline() -> None:
    """Without a filter none of the probes fails with EPERM, so the EPERMs below are ours."""
    results = run_child(SOCKET_PROBES)
    assert not [name for name, res in results.items() if res == EPERM], results
    assert results["inet"] == OK and results["io_uring_setup"] == OK


@needs_seccomp
@pytest.mark.parametrize("mode", list(seccomp.SeccompMode), ids=lambda m: m.value)
def test_seccomp_mode_matrix(mode: seccomp.SeccompMode) -> None:
    results = run_child(
        f"seccomp.apply_seccomp(seccomp.SeccompMode({mode.value!r}))\n" + SOCKET_PROBES
    )
    assert results == EXPECTED[mode]


@needs_seccomp
def test_seccomp_network_error_message_is_operation_not_permitted() -> None:
    results = run_child(
        "seccomp.apply_seccomp(seccomp.SeccompMode.RESTRICTED)\n"
        "try:\n"
        "    socket.create_connection(('127.0.0.1', 9))\n"
        "    results['msg'] = 'connected'\n"
        "except OSError as e:\n"
        "    results['msg'] = str(e)\n"
    )
    assert results["msg"] == "[Errno 1] Operation not permitted"


@needs_seccomp
def test_proxy_routed_allow_unix_sockets() -> None:
    results = run_child(
        "seccomp.apply_seccomp(seccomp.SeccompMode.PROXY_ROUTED, allow_unix_sockets=True)\n"
        + SOCKET_PROBES
    )
    assert results["unix"] == OK and results["inet"] == OK
    assert results["vsock"] == EPERM and results["io_uring_setup"] == EPERM


@needs_seccomp
def test_seccomp_restricted_unprivileged() -> None:
    results = run_child(
        "seccomp.apply_seccomp(seccomp.SeccompMode.RESTRICTED)\n" + SOCKET_PROBES, unprivileged=True
    )
    assert results == EXPECTED[seccomp.SeccompMode.RESTRICTED]


def _seccomp_filter_count() -> str:
    with open("/proc/self/status") as status:
        return next((line for line in status if line.startswith("Seccomp")), "none")


@needs_seccomp
@pytest.mark.parametrize("mode", list(seccomp.SeccompMode), ids=lambda m: m.value)
def test_export_bpf_shape_and_not_loaded(mode: seccomp.SeccompMode) -> None:
    before = _seccomp_filter_count()
    program = seccomp.export_bpf(mode)
    assert program and len(program) % 8 == 0  # struct sock_filter is 8 bytes
    assert len(program) // 8 <= 4096  # BPF_MAXINSNS
    assert _seccomp_filter_count() == before  # exporting loads nothing into the caller


@needs_seccomp
def test_export_bpf_under_bwrap() -> None:
    bwrap = shutil.which("bwrap")
    if bwrap is None:
        pytest.skip("bwrap not installed")
    program = seccomp.export_bpf(seccomp.SeccompMode.RESTRICTED)
    read_fd, write_fd = os.pipe()
    try:
        os.write(write_fd, program)
        os.close(write_fd)
        write_fd = -1
        wrapper = [
            bwrap,
            "--bind",
            "/",
            "/",
            "--dev",
            "/dev",
            "--die-with-parent",
            "--add-seccomp-fd",
            str(read_fd),
            "--",
        ]
        results = run_child(SOCKET_PROBES, pass_fds=(read_fd,), wrapper=wrapper)
    finally:
        os.close(read_fd)
        if write_fd >= 0:
            os.close(write_fd)
    assert results["inet"] == EPERM
    assert results["unix"] == OK
    assert results["io_uring_setup"] == EPERM


def test_seccomp_unavailable(monkeypatch: pytest.MonkeyPatch) -> None:
    def no_library(*_args: object, **_kwargs: object) -> None:
        raise OSError("libseccomp.so.2: cannot open shared object file")

    monkeypatch.setattr(seccomp, "_lib", None)
    monkeypatch.setattr(ctypes, "CDLL", no_library)
    assert not seccomp.seccomp_available()
    with pytest.raises(seccomp.SeccompUnavailable, match=r"libseccomp\.so\.2"):
        seccomp.export_bpf(seccomp.SeccompMode.RESTRICTED)
    assert issubclass(seccomp.SeccompUnavailable, OSError)


@pytest.mark.parametrize("allowed", [[1], [2, 10], [1, 2, 10], [0], [0xFFFF_FFFF]])
def test_low32_complement_is_exact(allowed: list[int]) -> None:
    pairs = seccomp._low32_not_in(allowed)
    samples = [
        *range(64),
        0xFFFF_FFFF,
        1 << 31,
        *(a | 7 << 32 for a in allowed),
        *(a ^ 1 << b for a in allowed for b in range(40)),
    ]
    for value in samples:
        hits = sum((value & mask) == want for mask, want in pairs)
        assert hits == (0 if value & 0xFFFF_FFFF in allowed else 1), hex(value)


# ---------------------------------------------------------------------------- Landlock

needs_landlock = pytest.mark.skipif(landlock.landlock_abi() == 0, reason="no Landlock")


@pytest.fixture
def tree() -> Iterator[Path]:
    """World-accessible scratch tree (tmp_path is 0700 root, unusable by nobody)."""
    base = Path(tempfile.mkdtemp(prefix="cx-landlock-"))
    for sub in ("read", "write", "outside"):
        (base / sub).mkdir()
        (base / sub / "file.txt").write_text(f"{sub} data\n")
    (base / "lonely.txt").write_text("a single-file root\n")
    for path in (base, *base.rglob("*")):
        os.chmod(path, 0o777 if path.is_dir() else 0o666)
    try:
        yield base
    finally:
        shutil.rmtree(base)


def landlock_probes(base: Path, *, extra: str = "") -> str:
    return f"""
base = {str(base)!r}
landlock.apply_landlock(
    read_roots=[base + "/read", base + "/lonely.txt", base + "/missing"],
    write_roots=[base + "/write", base + "/write/file.txt"],
    {extra}
)
def write(p):
    with open(p, "w") as f:
        f.write("x")
def read(p):
    with open(p) as f:
        f.read()
attempt("write_inside", lambda: write(base + "/write/new.txt"))
attempt("truncate_inside", lambda: write(base + "/write/file.txt"))
attempt("mkdir_inside", lambda: os.mkdir(base + "/write/sub"))
attempt("read_write_root", lambda: read(base + "/write/file.txt"))
attempt("read_inside", lambda: read(base + "/read/file.txt"))
attempt("list_inside", lambda: os.listdir(base + "/read"))
attempt("read_file_root", lambda: read(base + "/lonely.txt"))
attempt("write_read_root", lambda: write(base + "/read/new.txt"))
attempt("write_file_root", lambda: write(base + "/lonely.txt"))
attempt("write_outside", lambda: write(base + "/outside/new.txt"))
attempt("read_outside", lambda: read(base + "/outside/file.txt"))
attempt("write_tmp", lambda: write("/tmp/cx-landlock-escape.txt"))
attempt("dev_null", lambda: write("/dev/null"))
"""


LANDLOCK_EXPECTED = {
    "write_inside": OK,
    "truncate_inside": OK,
    "mkdir_inside": OK,
    "read_write_root": OK,
    "read_inside": OK,
    "list_inside": OK,
    "read_file_root": OK,
    "write_read_root": EACCES,
    "write_file_root": EACCES,
    "write_outside": EACCES,
    "read_outside": EACCES,
    "write_tmp": EACCES,
    "dev_null": OK,
}


@needs_landlock
def test_landlock_filesystem(tree: Path) -> None:
    assert run_child(landlock_probes(tree)) == LANDLOCK_EXPECTED
    assert (tree / "write" / "new.txt").read_text() == "x"
    assert not (tree / "read" / "new.txt").exists()
    assert not Path("/tmp/cx-landlock-escape.txt").exists()


@needs_landlock
def test_landlock_filesystem_unprivileged(tree: Path) -> None:
    assert run_child(landlock_probes(tree), unprivileged=True) == LANDLOCK_EXPECTED


@pytest.fixture
def listeners() -> Iterator[tuple[int, int]]:
    socks = []
    for _ in range(2):
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.bind(("127.0.0.1", 0))
        s.listen(8)
        socks.append(s)
    try:
        yield socks[0].getsockname()[1], socks[1].getsockname()[1]
    finally:
        for s in socks:
            s.close()


NET_PROBES = """
def connect(port):
    # Not create_connection: its getaddrinfo lazily imports the idna codec, a file read
    # that the confined child is (rightly) not allowed to do.
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        s.settimeout(5)
        s.connect(("127.0.0.1", port))
    finally:
        s.close()
def bind():
    s = socket.socket()
    try:
        s.bind(("127.0.0.1", 0))
    finally:
        s.close()
attempt("allowed", lambda: connect(ALLOWED))
attempt("other", lambda: connect(OTHER))
attempt("bind", bind)
"""


@needs_landlock
def test_landlock_tcp_connect(tree: Path, listeners: tuple[int, int]) -> None:
    if landlock.landlock_abi() < 4:
        pytest.skip("Landlock network rules need ABI 4")
    allowed, other = listeners
    body = (
        f"ALLOWED, OTHER = {allowed}, {other}\n"
        + landlock_probes(tree, extra=f"tcp_connect_ports=[{allowed}],")
        + NET_PROBES
    )
    results = run_child(body)
    assert results["allowed"] == OK
    assert results["other"] == EACCES
    assert results["bind"] == EACCES
    assert results["write_inside"] == OK and results["write_outside"] == EACCES


@needs_landlock
def test_landlock_without_ports_leaves_tcp_alone(tree: Path, listeners: tuple[int, int]) -> None:
    allowed, other = listeners
    results = run_child(
        f"ALLOWED, OTHER = {allowed}, {other}\n" + landlock_probes(tree) + NET_PROBES
    )
    assert results["allowed"] == results["other"] == results["bind"] == OK


def test_landlock_unavailable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(landlock, "landlock_abi", lambda: 0)
    with pytest.raises(landlock.LandlockUnavailable):
        landlock.apply_landlock(read_roots=["/"], write_roots=[])


@needs_landlock
def test_landlock_rejects_bad_port() -> None:
    # In a child: should validation ever regress, the pytest process must not get confined.
    results = run_child(
        "try:\n"
        "    landlock.apply_landlock(read_roots=['/'], write_roots=[], tcp_connect_ports=[70000])\n"
        "    results['outcome'] = 'applied'\n"
        "except ValueError as e:\n"
        "    results['outcome'] = str(e)\n"
    )
    assert "0-65535" in results["outcome"]


HARDENING_PROBES = """
import fcntl, stat, subprocess, termios, threading
def nr(name):
    return {"mount": 165, "umount2": 166, "pivot_root": 155, "unshare": 272, "setns": 308,
            "keyctl": 250, "add_key": 248, "bpf": 321, "perf_event_open": 298,
            "init_module": 175, "finit_module": 313, "clock_settime": 227,
            "open_by_handle_at": 304, "clone3": 435, "chmod": 90, "sethostname": 170,
            "userfaultfd": 323, "fsopen": 430}[name]
attempt("mount", lambda: raw(nr("mount"), 0, 0, 0, 0, 0))
attempt("umount2", lambda: raw(nr("umount2"), 0, 0))
attempt("pivot_root", lambda: raw(nr("pivot_root"), 0, 0))
attempt("fsopen", lambda: raw(nr("fsopen"), 0, 0))
attempt("unshare_user", lambda: raw(nr("unshare"), 0x10000000))
attempt("unshare_mount", lambda: raw(nr("unshare"), 0x20000))
attempt("unshare_files", lambda: raw(nr("unshare"), 0x400))
attempt("setns", lambda: raw(nr("setns"), -1, 0))
attempt("keyctl", lambda: raw(nr("keyctl"), 0, 0))
attempt("add_key", lambda: raw(nr("add_key"), 0, 0, 0, 0, 0))
attempt("bpf", lambda: raw(nr("bpf"), 0, 0, 0))
attempt("perf_event_open", lambda: raw(nr("perf_event_open"), 0, 0, 0, 0, 0))
attempt("init_module", lambda: raw(nr("init_module"), 0, 0, 0))
attempt("finit_module", lambda: raw(nr("finit_module"), -1, 0, 0))
attempt("clock_settime", lambda: raw(nr("clock_settime"), 0, 0))
attempt("open_by_handle_at", lambda: raw(nr("open_by_handle_at"), -1, 0, 0))
attempt("userfaultfd", lambda: raw(nr("userfaultfd"), 0))
attempt("sethostname", lambda: raw(nr("sethostname"), 0, 0))
attempt("clone3", lambda: raw(nr("clone3"), 0, 0))
attempt("tiocsti", lambda: fcntl.ioctl(0, termios.TIOCSTI, b"x"))
path = os.path.join(os.environ["PROBE_DIR"], "f")
open(path, "w").close()
attempt("chmod_setuid", lambda: os.chmod(path, 0o4755))
attempt("chmod_setgid", lambda: os.chmod(path, 0o2755))
attempt("chmod_plain", lambda: os.chmod(path, 0o755))
attempt("unix_dgram", lambda: socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM).close())
attempt("unix_stream_pair", lambda: pair(socket.AF_UNIX))
attempt("subprocess", lambda: subprocess.run(["true"], check=True))
def thread():
    t = threading.Thread(target=lambda: None)
    t.start()
    t.join()
attempt("thread", thread)
"""

REFUSED_IN_EVERY_MODE = [
    "mount",
    "umount2",
    "pivot_root",
    "fsopen",
    "unshare_user",
    "unshare_mount",
    "setns",
    "keyctl",
    "add_key",
    "bpf",
    "perf_event_open",
    "init_module",
    "finit_module",
    "clock_settime",
    "open_by_handle_at",
    "userfaultfd",
    "sethostname",
    "tiocsti",
    "chmod_setuid",
    "chmod_setgid",
]


@needs_seccomp
@pytest.mark.parametrize("mode", list(seccomp.SeccompMode), ids=lambda m: m.value)
def test_hardening_rules_in_every_mode(mode: seccomp.SeccompMode, tmp_path: Path) -> None:
    """What docs/sandbox-hardening.md §2 refuses is refused (EPERM, clone3 ENOSYS so libc
    falls back to clone), and what tools need — subprocesses, threads, a plain chmod,
    stream socketpairs — still works."""
    os.environ["PROBE_DIR"] = str(tmp_path)
    try:
        results = run_child(
            f"seccomp.apply_seccomp(seccomp.SeccompMode({mode.value!r}))\n" + HARDENING_PROBES
        )
    finally:
        del os.environ["PROBE_DIR"]
    assert {name: results[name] for name in REFUSED_IN_EVERY_MODE} == dict.fromkeys(
        REFUSED_IN_EVERY_MODE, EPERM
    )
    assert results["clone3"] == "ENOSYS: Function not implemented"
    assert results["unshare_files"] == OK
    assert results["chmod_plain"] == OK and results["subprocess"] == OK
    assert results["thread"] == OK and results["unix_stream_pair"] == OK
    # Offline, no Unix datagram socket (sendmsg reaches host sockets by path); proxy-routed,
    # no Unix socket at all; with the network on, nothing is refused for Unix sockets.
    networked = mode is seccomp.SeccompMode.VM_SOCKET_RESTRICTED
    assert results["unix_dgram"] == (OK if networked else EPERM)
