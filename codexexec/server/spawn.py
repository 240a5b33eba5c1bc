"""Starting a child process the way an executor must: OS details live only here.

Each child leads its own session and process group so signals reach its whole tree, and
stdin is /dev/null unless the caller asked for a writable stdin. A killed server leaves no
orphans: bubblewrap's --die-with-parent ends sandboxed children and the warden
(``warden.py``) the process groups of the others, so no Python runs between fork and exec
(a terminal's session and controlling terminal come from ``setsid --ctty``). Where that is
not possible (an arg0 override, no warden or setsid, binfmt_misc formats) a pre-exec hook
does it and sets PR_SET_PDEATHSIG.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import functools
import os
import select
import shutil
import signal
import struct
import subprocess
import sys
import termios
from collections.abc import Callable

import msgspec

_PR_SET_PDEATHSIG = 1
_F_SETPIPE_SZ = 1031
_PIPE_BYTES = 1024 * 1024
_DEFAULT_PTY_ROWS, _DEFAULT_PTY_COLS = 24, 80

_libc = ctypes.CDLL(None, use_errno=True)


class Child(msgspec.Struct):
    popen: subprocess.Popen[bytes]
    # Output fds by stream name: {"stdout", "stderr"} for pipes, {"pty"} for a terminal.
    outputs: dict[str, int]
    # Where writes go: the stdin pipe, a dup of the PTY master, or None.
    stdin: int | None
    # Registered with the warden, which kills its group if the executor dies.
    warded: bool = False
    # A supervisor's lifeline (the Landlock sandbox): closing it kills the whole tree.
    lifeline: int | None = None

    @property
    def pid(self) -> int:
        return self.popen.pid


class _Warden:
    """The executor's side of ``warden.py``: one warden process, started on first use.

    The groups to kill live in a table the two share (a memfd of 4-byte slots, 0 when
    free), not in messages: registering a child is one ``pwrite`` and never wakes the
    warden, which reads the table only once the executor is gone. A start used to cost the
    warden two wake-ups, and on two cores that contention showed in every round trip.
    """

    def __init__(self) -> None:
        self._pipe: int | None = None  # the warden's lifeline: its end closes when we die
        self._table: int | None = None
        self._usable: bool | None = None  # None: not tried yet
        self._slots: dict[int, int] = {}  # pid -> slot
        self._free: list[int] = []
        self._watch = select.poll()

    def start(self) -> bool:
        """Whether children can be registered (else they need the pre-exec hook)."""
        if self._usable is None:
            self._usable = self._launch()
        return self._usable

    def _launch(self) -> bool:
        try:
            # Without pidfds the exit watcher reaps in a thread, before it could deregister.
            os.close(os.pidfd_open(os.getpid()))
            if self._table is None:
                self._table = os.memfd_create("codexexec-warden", os.MFD_CLOEXEC)
            read_end, write_end = os.pipe2(os.O_CLOEXEC)
        except (AttributeError, OSError):
            return False
        try:
            subprocess.Popen(
                [sys.executable, "-I", "-S", _WARDEN_SCRIPT, str(self._table)],
                env={},  # it needs nothing, and never the executor's credentials
                stdin=read_end,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                start_new_session=True,
                close_fds=True,
                pass_fds=(self._table,),
            )
        except OSError:
            os.close(write_end)
            return False
        finally:
            os.close(read_end)
        if self._pipe is not None:
            self._watch.unregister(self._pipe)
            os.close(self._pipe)
        self._pipe = write_end
        self._watch.register(write_end, select.POLLERR)
        return True

    def register(self, pid: int) -> bool:
        # A killed warden is replaced first: the new one inherits the whole table.
        if self._pipe is None or (self._watch.poll(0) and not self._relaunch()):
            return False
        if pid in self._slots:  # its slot already holds it (a stale entry, the pid reused)
            return True
        slot = self._free.pop() if self._free else len(self._slots)
        if self._write(slot, pid):
            self._slots[pid] = slot
            return True
        self._free.append(slot)
        return False

    def deregister(self, pid: int) -> None:
        slot = self._slots.pop(pid, None)
        if slot is not None:
            self._write(slot, 0)
            self._free.append(slot)

    def _relaunch(self) -> bool:
        self._usable = self._launch()
        return self._usable

    def _write(self, slot: int, pid: int) -> bool:
        assert self._table is not None
        try:
            os.pwrite(self._table, _SLOT.pack(pid), slot * _SLOT.size)
        except OSError:
            return False
        return True


_SLOT = struct.Struct("<I")
_WARDEN_SCRIPT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "warden.py")
_warden = _Warden()


def forget(child: Child) -> None:
    """Call before reaping the child: its pid may be reused afterwards."""
    _cut_lifeline(child)
    if child.warded:
        child.warded = False
        _warden.deregister(child.pid)


def _child_setup(tty: bool, parent_pid: int) -> Callable[[], None]:
    def setup() -> None:
        # Runs in the child between fork and exec: only async-signal-safe work here.
        _libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
        if os.getppid() != parent_pid:
            os._exit(1)
        if tty:
            fcntl.ioctl(0, termios.TIOCSCTTY, 0)
        else:
            # A session of its own: a process group for signals, and no controlling
            # terminal of ours that a sandboxed child could inject input into.
            os.setsid()

    return setup


def _grow_pipe(fd: int) -> None:
    # A larger pipe means fewer wake-ups per megabyte; a refusal only costs speed.
    with contextlib.suppress(OSError):
        fcntl.fcntl(fd, _F_SETPIPE_SZ, _PIPE_BYTES)


def spawn(
    argv: list[str],
    *,
    cwd: str,
    env: dict[str, str],
    tty: bool,
    pipe_stdin: bool,
    arg0: str | None,
    pass_fds: tuple[int, ...] = (),
    dies_with_parent: bool = False,
    lifeline: int | None = None,
    takes_terminal: bool = False,
) -> Child:
    """Start ``argv``; raises OSError (with the OS's reason) when it cannot start.

    ``dies_with_parent``: ``argv`` already ends with the server (bubblewrap's
    --die-with-parent), so the child needs no set-up code of ours between fork and exec,
    and Python can use vfork: ~0.1 ms instead of ~4 ms for a server of 40 MB.
    """
    args = [arg0 if arg0 else argv[0], *argv[1:]]
    if tty and takes_terminal:
        # The sandboxed command makes the terminal its own (setsid --ctty inside): bwrap
        # gets a session of its own without one.
        child = _spawn_pty(argv[0], args, cwd, env, None, pass_fds, new_session=True)
        child.lifeline = lifeline
        return child
    setup = _child_setup(tty, os.getpid())
    if tty:
        program = argv[0] if "/" in argv[0] else _find_for_terminal(argv[0], env)
        setsid = _setsid()
        ended = dies_with_parent or _warden.start()
        if arg0 is not None or setsid is None or not ended or _binfmt_misc_in_use():
            child = _spawn_pty(argv[0], args, cwd, env, setup, pass_fds)
            child.lifeline = lifeline
            return child
        # setsid(1) makes the session and takes the terminal, so no Python runs between
        # fork and exec. The program is checked first, as exec would: setsid's own exec
        # failure would only reach the terminal, and it runs a file of no known format
        # with /bin/sh where exec refuses it.
        if not dies_with_parent:
            _check_executable(program, cwd)
        child = _spawn_pty(setsid, [setsid, "--ctty", "--", *args], cwd, env, None, pass_fds)
        child.warded = not dies_with_parent and _warden.register(child.pid)
        child.lifeline = lifeline
        return child
    warded = not dies_with_parent and _warden.start()
    hook = None if dies_with_parent or warded else setup
    stdout_r, stdout_w = os.pipe2(os.O_CLOEXEC)
    stderr_r, stderr_w = os.pipe2(os.O_CLOEXEC)
    stdin_r, stdin_w = os.pipe2(os.O_CLOEXEC) if pipe_stdin else (None, None)
    _grow_pipe(stdout_r)
    try:
        popen = subprocess.Popen(
            args,
            executable=argv[0],
            cwd=cwd,
            env=env,
            stdin=stdin_r if stdin_r is not None else subprocess.DEVNULL,
            stdout=stdout_w,
            stderr=stderr_w,
            start_new_session=hook is None,
            preexec_fn=hook,
            close_fds=True,
            pass_fds=pass_fds,
        )
    except BaseException:
        for fd in (stdout_r, stderr_r, stdin_w):
            if fd is not None:
                os.close(fd)
        raise
    finally:
        for fd in (stdout_w, stderr_w, stdin_r):
            if fd is not None:
                os.close(fd)
    child = Child(popen, {"stdout": stdout_r, "stderr": stderr_r}, stdin_w)
    child.warded = warded and _warden.register(popen.pid)
    child.lifeline = lifeline
    return child


def _spawn_pty(
    program: str,
    args: list[str],
    cwd: str,
    env: dict[str, str],
    setup: Callable[[], None] | None,
    pass_fds: tuple[int, ...],
    *,
    new_session: bool = False,
) -> Child:
    """``setup`` None: ``args`` makes its own session and takes the terminal (setsid -c),
    or with ``new_session`` it starts in a session of its own without one."""
    master, slave = os.openpty()
    fcntl.ioctl(
        slave, termios.TIOCSWINSZ, struct.pack("HHHH", _DEFAULT_PTY_ROWS, _DEFAULT_PTY_COLS, 0, 0)
    )
    os.set_inheritable(master, False)
    try:
        popen = subprocess.Popen(
            args,
            executable=program,
            cwd=cwd,
            env=env,
            stdin=slave,
            stdout=slave,
            stderr=slave,
            start_new_session=setup is not None or new_session,
            preexec_fn=setup,
            close_fds=True,
            pass_fds=pass_fds,
        )
    except BaseException:
        os.close(master)
        raise
    finally:
        os.close(slave)
    writer = os.dup(master)
    os.set_inheritable(writer, False)
    return Child(popen, {"pty": master}, writer)


def _find_for_terminal(program: str, env: dict[str, str]) -> str:
    """Look ``program`` up in the child's PATH as Codex 0.169's terminal spawner does, and
    fail with its words (an OSError without errno carries them verbatim)."""
    unable = f"Unable to spawn {program} because:\n"
    path = env.get("PATH")
    if path is None:
        raise OSError(0, unable + "Unable to resolve the PATH")
    reasons = []
    for directory in path.split(os.pathsep):
        if not directory:
            continue
        candidate = os.path.join(directory, program)
        if not os.path.exists(candidate):
            continue
        if os.path.isfile(candidate) and os.access(candidate, os.X_OK):
            return candidate
        reasons.append(f"{candidate} exists but is not executable.\n")
    raise OSError(0, unable + "".join(reasons) + f'No viable candidates found in PATH "{path}"')


@functools.cache
def _setsid() -> str | None:
    path = shutil.which("setsid")
    return path if path is not None and os.path.isabs(path) else None


def _check_executable(program: str, cwd: str) -> None:
    """Raise the OSError exec would for ``program`` (a path, absolute or from ``cwd``)."""
    path = os.path.join(cwd, program)
    _check_candidates([path], program)
    try:
        with open(path, "rb") as file:
            head = file.read(4)
    except OSError:
        return  # exec will say why
    if not head.startswith((b"\x7fELF", b"#!")):
        raise OSError(errno.ENOEXEC, os.strerror(errno.ENOEXEC), program)


@functools.cache
def _binfmt_misc_in_use() -> bool:
    """Extra executable formats the kernel knows: then only exec itself can judge a file."""
    try:
        return any(name not in ("register", "status") for name in os.listdir(_BINFMT_MISC))
    except OSError:
        return False


_BINFMT_MISC = "/proc/sys/fs/binfmt_misc"


def ensure_program_exists(program: str, env: dict[str, str], cwd: str) -> None:
    """Raise FileNotFoundError or PermissionError as execvp would, before a wrapper (bwrap)
    hides the cause: its own failure to exec reads like a sandbox denial."""
    if "/" in program:
        candidates = [os.path.join(cwd, program)]
    elif shutil.which(program, path=env.get("PATH", os.defpath)) is not None:
        return
    else:
        directories = env.get("PATH", os.defpath).split(os.pathsep)
        candidates = [os.path.join(cwd, d or ".", program) for d in directories]
    _check_candidates(candidates, program)


def _check_candidates(candidates: list[str], program: str) -> None:
    """ENOENT when no candidate exists, EACCES when none that does can be executed."""
    found = [path for path in candidates if os.path.exists(path)]
    if not found:
        raise FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), program)
    if all(os.path.isdir(path) or not os.access(path, os.X_OK) for path in found):
        raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), program)


def signal_group(child: Child, signum: int) -> None:
    """Signal the child's whole process group; a group already gone is not an error.

    A supervised child is killed through its lifeline: a SIGKILL would end the supervisor
    before it could end what the command left behind.
    """
    if signum == signal.SIGKILL and child.lifeline is not None:
        _cut_lifeline(child)
        return
    try:
        os.killpg(child.pid, signum)
    except ProcessLookupError:
        return
    except PermissionError:
        with contextlib.suppress(ProcessLookupError):
            os.kill(child.pid, signum)


def _cut_lifeline(child: Child) -> None:
    if child.lifeline is not None:
        os.close(child.lifeline)
        child.lifeline = None
