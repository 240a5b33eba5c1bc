"""The executor's entry point into sandboxing: intent in, a command to spawn out.

The server calls only this; which OS mechanism runs is decided here, per host.
"""

from __future__ import annotations

import os
import sys
from typing import Any

import msgspec

from codexexec.protocol.path_uri import PathUri
from codexexec.sandbox import mount_points
from codexexec.sandbox.errors import SandboxError
from codexexec.sandbox.floor import (
    SandboxSettings,
    allowed_writes,
    below_floor,
    floor_sandbox,
)
from codexexec.sandbox.plan import NetworkRouting, SandboxPlan, resolve_plan
from codexexec.sandbox.policy import SandboxPolicyError, parse_context


class SandboxRefused(SandboxError):
    """The intent is invalid (``invalid``) or cannot be enforced here; nothing was spawned."""

    def __init__(self, message: str, *, invalid: bool) -> None:
        super().__init__(message)
        self.invalid = invalid


class SandboxedCommand(msgspec.Struct):
    argv: list[str]
    sandbox_type: str
    backend: str
    pass_fds: tuple[int, ...] = ()
    created_paths: list[str] = msgspec.field(default_factory=list)
    passes_arg0: bool = True
    # Held by the executor while the command runs; closing it ends the command's whole
    # tree (the Landlock supervisor's lifeline), and so does the executor's death.
    lifeline: int | None = None
    # No network at all: neither the intent's nor a managed proxy's (for denial reports).
    network_off: bool = False
    # With a terminal: the command takes it inside the sandbox (``terminal_taker``).
    takes_terminal: bool = False
    # What to start ``argv`` with instead of the command's environment (linux/loader_env.py).
    env: dict[str, str] | None = None

    def release(self) -> None:
        """Close fds only the child needed, once it has started."""
        for fd in self.pass_fds:
            os.close(fd)
        self.pass_fds = ()

    def discard(self) -> None:
        """The command was never started: give back everything prepared for it."""
        self.release()
        remove_created_paths(self.created_paths)
        self.created_paths = []
        if self.lifeline is not None:
            os.close(self.lifeline)
            self.lifeline = None


def remove_created_paths(paths: list[str]) -> None:
    """The sandboxed process is gone: drop its mount points nobody else relies on."""
    mount_points.release(paths)


# Managed network without a file-system intent: everything but the network is open.
_PROXY_ONLY = {
    "permissions": {
        "type": "managed",
        "file_system": {"type": "unrestricted"},
        "network": "restricted",
    }
}


def prepare_command(
    sandbox: Any,
    argv: list[str],
    cwd: str,
    arg0: str | None,
    routing: NetworkRouting | None = None,
    settings: SandboxSettings = SandboxSettings(),
    *,
    tty: bool = False,
    env: dict[str, str] | None = None,
) -> SandboxedCommand | None:
    """Wrap ``argv`` for the sandbox intent; None when the intent asks for no sandbox (and
    the executor's floor allows none).

    With ``routing`` the command may reach the network only through those proxy ports,
    whatever the intent says about the network.
    """
    try:
        plan = _plan(sandbox, cwd, routing)
        if settings.floor is not None:
            plan = _at_floor(plan, sandbox, cwd, routing, settings)
    except SandboxPolicyError as exc:
        raise SandboxRefused(f"invalid sandbox intent: {exc}", invalid=True) from None
    if plan is None:
        return None
    plan.share_pids = settings.pid_namespace == "inherit"
    network_off = not plan.network_enabled and plan.routing is None
    if sys.platform.startswith("linux"):
        from codexexec.sandbox.linux.backend import SANDBOX_TYPE, SandboxUnavailable, prepare

        try:
            prepared = prepare(plan, argv, arg0=arg0, tty=tty, env=env)
        except SandboxPolicyError as exc:
            raise SandboxRefused(f"invalid sandbox intent: {exc}", invalid=True) from None
        except SandboxUnavailable as exc:
            raise SandboxRefused(
                f"sandbox intent cannot be enforced on this executor: {exc}", invalid=False
            ) from None
        return SandboxedCommand(
            prepared.argv,
            SANDBOX_TYPE,
            prepared.backend,
            prepared.pass_fds,
            prepared.created_paths,
            passes_arg0=False,
            lifeline=prepared.lifeline,
            network_off=network_off,
            takes_terminal=prepared.takes_terminal,
            env=prepared.env,
        )
    if sys.platform == "darwin":
        from codexexec.sandbox.macos.seatbelt import SANDBOX_TYPE as SEATBELT
        from codexexec.sandbox.macos.seatbelt import wrap_command

        ports = plan.routing.ports if plan.routing is not None else ()
        # Seatbelt admits exactly the prepared proxy ports; no bridges are needed on macOS.
        wrapped = wrap_command(plan, argv, loopback_ports=ports)
        return SandboxedCommand(
            wrapped,
            SEATBELT,
            "seatbelt",
            passes_arg0=True,
            network_off=network_off,
        )
    raise SandboxRefused("sandbox intent cannot be enforced on this executor", invalid=False)


def _plan(sandbox: Any, cwd: str, routing: NetworkRouting | None) -> SandboxPlan | None:
    if sandbox is None and routing is None:
        return None
    context = parse_context(sandbox if sandbox is not None else _PROXY_ONLY)
    if not context.permissions.enforced and routing is None:
        return None
    plan = resolve_plan(context, cwd)
    if routing is not None:
        plan.network_enabled = False
        plan.routing = routing
    return plan


def _at_floor(
    plan: SandboxPlan | None,
    sandbox: Any,
    cwd: str,
    routing: NetworkRouting | None,
    settings: SandboxSettings,
) -> SandboxPlan:
    """``plan`` if it confines at least as much as the executor's floor; else the floor's
    plan, or a refusal (``--sandbox-floor-mode refuse``)."""
    assert settings.floor is not None
    context = parse_context(sandbox) if isinstance(sandbox, dict) else None
    why = below_floor(plan, settings.floor, allowed_writes(context, cwd))
    if why is None:
        assert plan is not None
        return plan
    if settings.floor_mode == "refuse":
        raise SandboxRefused(
            f"this executor's sandbox floor is {settings.floor}, and this request gets less: {why}",
            invalid=True,
        )
    cwd_uri = str(PathUri.from_host_native_path(cwd))
    raised = _plan(floor_sandbox(settings.floor, sandbox, cwd_uri), cwd, routing)
    assert raised is not None
    return raised
