"""Choosing and preparing Linux enforcement for a plan: bubblewrap + seccomp, else
Landlock + seccomp, else refuse (fail closed, never run unsandboxed silently).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import sys
from collections.abc import Callable
from functools import cache

import msgspec

from codexexec.sandbox import mount_points
from codexexec.sandbox.errors import SandboxError
from codexexec.sandbox.linux import bwrap as bw
from codexexec.sandbox.linux import loader_env
from codexexec.sandbox.plan import NetworkRouting, SandboxPlan

SANDBOX_TYPE = "linuxSeccomp"
FORCE_BACKEND_ENV = "CODEXEXEC_LINUX_SANDBOX"  # "bwrap" or "landlock", for tests and ops


class SandboxUnavailable(SandboxError, RuntimeError):
    """No backend on this host can enforce the plan; the message says what is missing."""


class PreparedCommand(msgspec.Struct):
    argv: list[str]
    backend: str
    pass_fds: tuple[int, ...] = ()
    # Mount points bwrap creates on the host for masks; removed again after exit.
    created_paths: list[str] = msgspec.field(default_factory=list)
    # The executor's end of the Landlock supervisor's lifeline: closing it kills the
    # command and everything it started (confine.py).
    lifeline: int | None = None
    # The command makes the terminal its own inside the sandbox (setsid --ctty), so the
    # executor must start bwrap in a session without one (see ``terminal_taker``).
    takes_terminal: bool = False
    # The environment to start the launcher with (None: the caller's own, unchanged).
    env: dict[str, str] | None = None


def _bridge_spec(
    routing: NetworkRouting, arg0: str | None, env_fd: int | None
) -> dict[str, object]:
    return {
        "routes": [{"port": port, "uds": path} for port, path in routing.routes],
        "allow_local_binding": routing.allow_local_binding,
        "argv0": arg0,
        "env_fd": env_fd,
    }


def seccomp_mode_name(plan: SandboxPlan) -> str:
    """The network rules; every mode carries the hardening rules as well."""
    if plan.routing is not None:
        return "proxy_routed"
    if not plan.network_enabled:
        return "restricted"
    return "vm_socket_restricted"


@cache
def _bpf(mode_name: str) -> bytes:
    from codexexec.sandbox.linux.seccomp import SeccompMode, export_bpf

    return export_bpf(SeccompMode(mode_name))


def _memfd_with(data: bytes, name: str = "codexexec-seccomp") -> int:
    try:
        fd = os.memfd_create(name, os.MFD_CLOEXEC)
    except OSError as exc:  # out of descriptors or memory: this command cannot start
        raise SandboxUnavailable(f"cannot create the sandbox's {name}: {exc.strerror}") from None
    try:
        os.write(fd, data)
        os.lseek(fd, 0, os.SEEK_SET)
    except OSError as exc:
        os.close(fd)
        raise SandboxUnavailable(f"cannot write the sandbox's {name}: {exc.strerror}") from None
    return fd


def _isolated_script(name: str) -> list[str]:
    """Our helper in a Python that ignores the environment it is given (the command's:
    PYTHONPATH there must not load code into this unconfined stage) and site-packages."""
    return [sys.executable, "-I", "-S", os.path.join(os.path.dirname(__file__), name)]


def _missing_paths(plan: SandboxPlan) -> list[str]:
    return [p for root in plan.writable_roots for p in root.missing_protected]


def _held_mount_points(plan: SandboxPlan) -> list[str]:
    return mount_points.hold(_missing_paths(plan), plan.all_read_only_paths)


def terminal_taker(plan: SandboxPlan) -> str | None:
    """setsid(1), when the sandbox lets the command run it: with it the command leads its
    own session with the pseudo-terminal as controlling terminal, inside the sandbox — so
    Ctrl-C reaches the command's foreground job, not bwrap (which would take the whole
    sandbox down), and a shell's job control works. The terminal is the command's own
    (the executor made it for this process), so nothing outside can be typed into."""
    setsid = shutil.which("setsid")
    if setsid is None or not os.path.isabs(setsid) or not (plan.full_read or plan.full_write):
        return None
    return setsid


def prepare(
    plan: SandboxPlan,
    command: list[str],
    *,
    arg0: str | None,
    tty: bool = False,
    env: dict[str, str] | None = None,
) -> PreparedCommand:
    """The launcher's argv (and fds) for ``command``. With ``env`` (the command's), the
    launcher is to be started with ``PreparedCommand.env`` instead: the variables that
    steer a loader reach the command only once it is confined (loader_env.py)."""
    launcher_env, held = loader_env.split(env) if env is not None else (None, {})
    forced = os.environ.get(FORCE_BACKEND_ENV, "")
    bwrap = bw.find_bwrap(plan.command_cwd) if forced in ("", "bwrap") else None
    if bwrap:
        problem = bw.probe_bwrap(bwrap)
    elif forced in ("", "bwrap"):
        problem = bw.missing_bwrap_reason()
    else:
        problem = f"bubblewrap is not used ({FORCE_BACKEND_ENV}={forced})"
    if bwrap is None or problem is not None:
        if forced not in ("", "landlock"):
            raise SandboxUnavailable(str(problem))
        reason = landlock_refusal(plan)
        if reason is not None:
            raise SandboxUnavailable(f"{problem}; Landlock fallback: {reason}")
    with contextlib.ExitStack() as opened:  # what is made here is closed unless handed over

        def made(fd: int) -> int:
            opened.callback(os.close, fd)
            return fd

        if bwrap is not None and problem is None:
            prepared = _with_bwrap(plan, command, arg0, tty, held, bwrap, made)
        else:
            prepared = _with_landlock(plan, command, arg0, held, made)
        prepared.env = launcher_env
        opened.pop_all()
        return prepared


def _with_bwrap(
    plan: SandboxPlan,
    command: list[str],
    arg0: str | None,
    tty: bool,
    held: dict[str, str],
    bwrap: str,
    made: Callable[[int], int],
) -> PreparedCommand:
    setsid = terminal_taker(plan) if tty and arg0 is None else None
    if setsid is not None:
        command = [setsid, "--ctty", "--", *command]
    if plan.routing is not None:
        # The in-namespace stage bridges the proxy ports and applies seccomp itself.
        env_fd = made(_held_for_stage(held)) if held else None
        spec = _bridge_spec(plan.routing, arg0, env_fd)
        inner = [*_isolated_script("netns_bridge.py"), msgspec.json.encode(spec).decode()]
        argv = bw.bwrap_argv(bwrap, plan, [*inner, "--", *command], arg0=None, seccomp_fd=None)
        fds: tuple[int, ...] = () if env_fd is None else (env_fd,)
    else:
        seccomp_fd = made(_memfd_with(_bpf(seccomp_mode_name(plan))))
        args_fd = made(_memfd_with(bw.setenv_args(held), _ENV_MEMFD)) if held else None
        argv = bw.bwrap_argv(
            bwrap, plan, command, arg0=arg0, seccomp_fd=seccomp_fd, args_fd=args_fd
        )
        fds = (seccomp_fd,) if args_fd is None else (seccomp_fd, args_fd)
    return PreparedCommand(
        argv, "bubblewrap", fds, _held_mount_points(plan), takes_terminal=bool(setsid)
    )


def _with_landlock(
    plan: SandboxPlan,
    command: list[str],
    arg0: str | None,
    held: dict[str, str],
    made: Callable[[int], int],
) -> PreparedCommand:
    lifeline, kept = os.pipe2(os.O_CLOEXEC)
    made(lifeline)
    made(kept)
    env_fd = made(_held_for_stage(held)) if held else None
    spec = landlock_spec(plan, seccomp_mode_name(plan), arg0, lifeline, env_fd)
    return PreparedCommand(
        [*_isolated_script("confine.py"), msgspec.json.encode(spec).decode(), "--", *command],
        "landlock",
        (lifeline,) if env_fd is None else (lifeline, env_fd),
        lifeline=kept,
    )


# The held variables travel in a memfd, not on a command line any local user can read in
# /proc/PID/cmdline.
_ENV_MEMFD = "codexexec-env"


def _held_for_stage(held: dict[str, str]) -> int:
    """A memfd of the held variables as NUL-terminated ``NAME=VALUE`` records, for a Python
    stage (stage.py) to read; ``os.fsencode`` keeps a value that is not UTF-8 as it was."""
    records = b"".join(os.fsencode(k) + b"=" + os.fsencode(v) + b"\0" for k, v in held.items())
    return _memfd_with(records, _ENV_MEMFD)


@cache
def _landlock_abi() -> int:
    from codexexec.sandbox.linux.landlock import landlock_abi

    return landlock_abi()


def landlock_refusal(plan: SandboxPlan) -> str | None:
    """Why Landlock cannot enforce this plan, or None if it can."""
    from codexexec.sandbox.linux.landlock import SCOPE_ABI

    abi = _landlock_abi()
    if abi == 0:
        return "Landlock is not available in this kernel"
    if abi < SCOPE_ABI:
        # Without scoping the command could signal the executor and reach host daemons'
        # abstract sockets: a known hole, so no run at all.
        return (
            f"Landlock ABI {abi} cannot keep the command from signalling processes outside "
            f"the sandbox (ABI {SCOPE_ABI}, Linux 6.12, is needed)"
        )
    if not plan.full_read:
        return "restricted read access needs bubblewrap"
    if plan.denied:
        return "deny entries need bubblewrap"
    if not plan.network_enabled and abi < 4:
        return "network isolation needs bubblewrap or Landlock ABI 4"
    # Landlock only adds access, it cannot take part of a writable root back.
    carve_outs = plan.all_read_only_paths + _missing_paths(plan)
    if carve_outs:
        return f"read-only paths inside writable roots ({', '.join(carve_outs)}) need bubblewrap"
    return None


def landlock_spec(
    plan: SandboxPlan, mode: str, arg0: str | None, lifeline: int, env_fd: int | None
) -> dict[str, object]:
    if plan.routing is not None:
        ports: list[int] | None = plan.routing.ports  # straight to the proxy on host loopback
    else:
        # No TCP at all without network access (Landlock ABI >= 4); None = unrestricted.
        ports = None if plan.network_enabled else []
    return {
        "write_roots": [r.path for r in plan.writable_roots],
        "tcp_connect_ports": ports,
        "seccomp": mode,
        "argv0": arg0,
        "lifeline": lifeline,
        "env_fd": env_fd,
    }
