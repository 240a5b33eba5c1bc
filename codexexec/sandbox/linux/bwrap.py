"""The bubblewrap command line for a sandbox plan (Codex's order, docs/sandbox-hardening.md).

Order matters: the base view first (`/` read-only, a fresh /dev), then writable roots
shallowest first, then read-only carve-outs and masks inside them, then namespaces.
"""

from __future__ import annotations

import atexit
import os
import shutil
import subprocess
import tempfile
from collections.abc import Mapping
from functools import cache

from codexexec.sandbox.linux.bundled_bwrap import bundled_bwrap
from codexexec.sandbox.plan import SandboxPlan

# Stderr texts that mean user namespaces are not available to us (Codex's list).
USERNS_FAILURES = (
    "loopback: Failed RTM_NEWADDR",
    "loopback: Failed RTM_NEWLINK",
    "setting up uid map: Permission denied",
    "No permissions to create a new namespace",
    "Creating new namespace failed",
)


# Where a distribution installs bwrap: trusted whatever the command's cwd (`cd /usr` must
# not make /usr/bin/bwrap look planted).
SYSTEM_BIN_DIRS = ("/usr/bin", "/usr/sbin", "/bin", "/sbin", "/usr/local/bin", "/usr/local/sbin")


def find_bwrap(command_cwd: str | None = None) -> str | None:
    """The system bwrap, unless one outside the system directories lives under the command's
    cwd (a repository could plant one on PATH); without one, the verified bundled bwrap."""
    found = shutil.which("bwrap")
    if found is None:
        return bundled_bwrap()[0]
    real = os.path.realpath(found)
    if os.path.dirname(real) in SYSTEM_BIN_DIRS:
        return real
    if command_cwd and real.startswith(os.path.realpath(command_cwd).rstrip("/") + "/"):
        return None
    return real


def missing_bwrap_reason() -> str:
    """Why ``find_bwrap`` found none, in words a user can act on."""
    found = shutil.which("bwrap")
    if found is None:
        return f"bwrap is not installed, and {bundled_bwrap()[1]}"
    return f"the bwrap on PATH ({found}) lies inside the command's working directory; not trusted"


@cache
def probe_bwrap(bwrap: str) -> str | None:
    """None when bwrap can create the namespaces we need, else bwrap's complaint."""
    try:
        result = subprocess.run(
            [
                bwrap,
                "--unshare-user",
                "--unshare-pid",
                "--unshare-net",
                "--ro-bind",
                "/",
                "/",
                "--dev",
                "/dev",
                "--proc",
                "/proc",
                "--",
                "/bin/true",
            ],
            capture_output=True,
            timeout=10,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return str(exc)
    if result.returncode == 0:
        return None
    return result.stderr.decode(errors="replace").strip() or f"exit status {result.returncode}"


_mask_file: str | None = None


def _unreadable_file() -> str:
    """An empty file no one may read (mode 000), bound read-only over a denied file: reading
    it fails with "Permission denied" and writing with "Read-only file system", as under
    Codex (docs/codex-0.169-observed.md §30)."""
    global _mask_file
    if _mask_file is None or not os.path.isfile(_mask_file):
        folder = tempfile.mkdtemp(prefix="codexexec-mask-")
        # Gone when this process ends (its sandboxes' mounts hold the file, not its name):
        # each `exec` with a deny entry otherwise left a directory in /tmp.
        atexit.register(shutil.rmtree, folder, ignore_errors=True)
        path = os.path.join(folder, "denied")
        os.close(os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o000))
        os.chmod(path, 0o000)
        _mask_file = path
    return _mask_file


def bwrap_argv(
    bwrap: str,
    plan: SandboxPlan,
    command: list[str],
    *,
    arg0: str | None,
    seccomp_fd: int | None,
    args_fd: int | None = None,
) -> list[str]:
    args = [bwrap, "--die-with-parent"]
    if plan.full_write:
        args += ["--bind", "/", "/", "--dev", "/dev"]
    elif plan.full_read:
        args += ["--ro-bind", "/", "/", "--dev", "/dev"]
    else:
        args += ["--tmpfs", "/", "--dev", "/dev"]
        for readable in plan.readable_roots:
            if os.path.exists(readable):
                args += ["--ro-bind", readable, readable]
    if not plan.full_write:
        roots = [root for root in plan.writable_roots if os.path.exists(root.path)]
        for root in roots:
            args += ["--bind", root.path, root.path]
        # Carve-outs after every writable bind: a read-only path of one root (a worktree's
        # gitdir) may lie inside another writable root, whose bind must not undo it.
        for root in roots:
            for path in root.read_only:
                args += ["--ro-bind", path, path]
            for path in root.missing_protected:
                args += ["--perms", "555", "--tmpfs", path, "--remount-ro", path]
    if plan.routing is not None:
        # The bridge sockets must be reachable but not replaceable from inside.
        args += ["--ro-bind", plan.routing.bridge_dir, plan.routing.bridge_dir]
    for path in plan.denied:
        if os.path.isdir(path):
            args += ["--perms", "000", "--tmpfs", path, "--remount-ro", path]
        elif os.path.exists(path):
            args += ["--ro-bind", _unreadable_file(), path]
    # bwrap keeps every capability of a root caller inside the user namespace (a mount
    # remount or umount undoes the view); drop them all, and keep the host's name, SysV IPC
    # and sysctls out of reach (docs/sandbox-hardening.md §1).
    args += ["--unshare-user", *([] if plan.share_pids else ["--unshare-pid"])]
    args += ["--unshare-uts", "--unshare-ipc"]
    args += ["--cap-drop", "ALL"]
    if not plan.network_enabled:
        args.append("--unshare-net")
    # A fresh procfs needs a PID namespace of our own; sharing the host's, its /proc is bound.
    args += ["--bind", "/proc", "/proc"] if plan.share_pids else ["--proc", "/proc"]
    args += ["--ro-bind", "/proc/sys", "/proc/sys"]
    args += ["--ro-bind-try", "/proc/sysrq-trigger", "/proc/sysrq-trigger"]
    args += ["--chdir", plan.command_cwd]
    if seccomp_fd is not None:
        args += ["--add-seccomp-fd", str(seccomp_fd)]
    if arg0:
        args += ["--argv0", arg0]
    if args_fd is not None:  # more arguments, read from a file (setenv_args)
        args += ["--args", str(args_fd)]
    return [*args, "--", *command]


def setenv_args(variables: Mapping[str, str]) -> bytes:
    """``--setenv NAME VALUE`` for each variable, NUL-separated as ``--args FD`` reads them:
    what bwrap itself must not be started with (loader_env.py), for the command alone."""
    return b"".join(
        b"--setenv\0" + os.fsencode(name) + b"\0" + os.fsencode(value) + b"\0"
        for name, value in variables.items()
    )
