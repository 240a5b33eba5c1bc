"""The Landlock fallback's supervisor: confine a child, run the command in it, and let
nothing the command started outlive it.

    python -I -S confine.py SPEC_JSON -- ARGV...

Without bubblewrap there is no PID namespace whose end takes every process with it, so this
process stands in for one (docs/sandbox-hardening.md §4). It becomes a child subreaper, so
whatever the command double-forks or detaches with setsid is re-parented here, and forks
the command. The child drops every capability, restricts itself with Landlock (scoped: it
cannot signal this supervisor, the executor or any other process outside its domain) and
seccomp, then execs. When the command ends, or the executor's end of the lifeline pipe
(SPEC's ``lifeline`` fd) closes — the executor asked for the kill or died, even by
SIGKILL — every remaining descendant is killed and reaped, and the supervisor exits with
the command's status.

The supervisor stays in the command's process group and ignores the signals a group or a
terminal receives, so an interrupt reaches the command and the supervisor still cleans up.
Any failure to confine exits 126 with the reason on stderr (the word "sandbox" in it lets
the denial heuristic see it) rather than running the command unconfined.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import select
import signal
import sys
from typing import Any, NoReturn

_PR_SET_PDEATHSIG = 1
_PR_SET_CHILD_SUBREAPER = 36
# Signals sent to the whole group (interrupts, hangups, termination): the command's.
_GROUP_SIGNALS = (signal.SIGINT, signal.SIGQUIT, signal.SIGTERM, signal.SIGHUP, signal.SIGTSTP)
# Kill rounds before giving up on a tree that keeps forking (each round kills all it sees).
_MAX_KILL_ROUNDS = 1000

_libc = ctypes.CDLL(None, use_errno=True)


def _confine(spec: dict[str, Any]) -> None:
    from codexexec.sandbox.linux.capabilities import drop_all_capabilities
    from codexexec.sandbox.linux.landlock import apply_landlock
    from codexexec.sandbox.linux.seccomp import SeccompMode, apply_seccomp

    drop_all_capabilities()
    apply_landlock(
        read_roots=["/"],
        write_roots=spec["write_roots"],
        tcp_connect_ports=spec["tcp_connect_ports"],
        scoped=True,
    )
    apply_seccomp(SeccompMode(spec["seccomp"]), host_namespaces=True)


def _run_command(spec: dict[str, Any], command: list[str], supervisor: int) -> NoReturn:
    """In the forked child: confine, then become the command. Never returns."""
    for signum in (*_GROUP_SIGNALS, signal.SIGCHLD):
        signal.signal(signum, signal.SIG_DFL)
    signal.set_wakeup_fd(-1)
    _libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != supervisor:
        os._exit(126)
    try:
        _confine(spec)
    except Exception as exc:  # fail closed, whatever went wrong
        sys.stderr.write(f"codexexec sandbox: cannot confine the command: {exc}\n")
        os._exit(126)
    from codexexec.sandbox.linux import stage

    stage.become(command, spec)


def _descendants(root: int) -> list[int]:
    """Every live process below ``root``, parents before their children, from /proc (a
    parent's children are listed by each child's ppid, so the whole table is read once)."""
    children: dict[int, list[int]] = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat", "rb") as handle:
                stat = handle.read()
        except OSError:
            continue  # gone meanwhile
        # "pid (comm) state ppid ...": comm may hold spaces and parentheses.
        fields = stat[stat.rfind(b")") + 2 :].split()
        children.setdefault(int(fields[1]), []).append(int(name))
    found: list[int] = []
    seen = {root}
    queue = [root]
    while queue:
        for child in children.get(queue.pop(0), ()):
            if child not in seen:
                seen.add(child)
                found.append(child)
                queue.append(child)
    return found


def _reap_all() -> None:
    with contextlib.suppress(ChildProcessError):
        while os.waitpid(-1, os.WNOHANG)[0] > 0:
            pass


def _kill_tree() -> None:
    """Kill and reap everything below this process; orphans of the killed come back here
    (subreaper), so rounds repeat until nothing is left. Parents go first, so none of them
    reports a child's death on the command's output."""
    me = os.getpid()
    for _ in range(_MAX_KILL_ROUNDS):
        found = _descendants(me)
        if not found:
            break
        for pid in found:
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)
        _reap_all()
    with contextlib.suppress(ChildProcessError):
        while True:
            os.waitpid(-1, 0)


def _exit_like(status: int) -> None:
    """Leave as the command did: the same exit code, or death by the same signal."""
    if os.WIFSIGNALED(status):
        signum = os.WTERMSIG(status)
        signal.signal(signum, signal.SIG_DFL)
        os.kill(os.getpid(), signum)
        os._exit(128 + signum)  # a signal that does not end a process
    os._exit(os.waitstatus_to_exitcode(status))


def _supervise(command_pid: int, lifeline: int, wake_r: int) -> None:
    # Output and input belong to the command: holding them would keep its pipes open.
    devnull = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(devnull, fd)
    os.close(devnull)
    status: int | None = None
    while status is None:
        readable, _, _ = select.select([wake_r, lifeline], [], [])
        if lifeline in readable:
            # The executor closed its end (process/terminate) or is gone.
            _kill_tree()
            os.kill(os.getpid(), signal.SIGKILL)
        with contextlib.suppress(BlockingIOError):
            os.read(wake_r, 4096)
        with contextlib.suppress(ChildProcessError):
            while True:
                pid, child_status = os.waitpid(-1, os.WNOHANG)
                if pid == 0:
                    break
                if pid == command_pid:
                    status = child_status
    _kill_tree()
    _exit_like(status)


def main(argv: list[str]) -> None:
    from codexexec.sandbox.linux import stage

    spec, command = stage.parse("confine", argv)
    lifeline = int(spec["lifeline"])
    for signum in _GROUP_SIGNALS:
        signal.signal(signum, signal.SIG_IGN)
    # A handler (not SIG_IGN) so exits wake the select below through the wakeup fd.
    signal.signal(signal.SIGCHLD, lambda *_: None)
    if _libc.prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
        err = ctypes.get_errno()
        sys.stderr.write(f"codexexec sandbox: cannot supervise the command: {os.strerror(err)}\n")
        os._exit(126)
    # Before the fork, so an exit that comes at once still wakes the supervisor.
    wake_r, wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
    signal.set_wakeup_fd(wake_w)
    supervisor = os.getpid()
    pid = os.fork()
    if pid == 0:
        os.close(lifeline)
        _run_command(spec, command, supervisor)
    try:
        _supervise(pid, lifeline, wake_r)
    except BaseException:
        _kill_tree()
        raise


if __name__ == "__main__":
    # Run as `python -I -S FILE` (backend.py): the package is found from this file alone.
    sys.path.insert(0, os.path.abspath(__file__).rsplit(os.sep, 4)[0])
    main(sys.argv[1:])
