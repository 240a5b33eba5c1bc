"""The operator's sandbox settings for one executor: the least confinement it applies, and
whether sandboxed commands get a PID namespace of their own.

A floor (`serve --sandbox-floor read-only|workspace-write`) is judged on the plan, the
request bound to this host's paths, so no spelling of a profile slips under it:

* ``workspace-write``: nothing written outside the workspace roots, ``/tmp`` and the
  temporary directories the request names; no network beyond the managed proxy.
* ``read-only``: nothing written at all; no network beyond the managed proxy.

A request below the floor — an unsandboxed one included — is raised to the floor's own
profile (cwd as the workspace root), or refused (``--sandbox-floor-mode refuse``). Pure.
"""

from __future__ import annotations

import os
from typing import Any, Literal

import msgspec

from codexexec.protocol.path_uri import InvalidPathUri, PathUri
from codexexec.sandbox.plan import SandboxPlan
from codexexec.sandbox.policy import SandboxContext, legacy_profile, sandbox_context_json

Floor = Literal["read-only", "workspace-write"]
FloorMode = Literal["raise", "refuse"]
PidNamespace = Literal["isolate", "inherit"]


class SandboxSettings(msgspec.Struct, frozen=True):
    floor: Floor | None = None
    floor_mode: FloorMode = "raise"
    # Codex's --linux-sandbox-pid-namespace: `inherit` lets a command signal the host's
    # same-user processes (for a dedicated environment only).
    pid_namespace: PidNamespace = "isolate"


def below_floor(plan: SandboxPlan | None, floor: Floor, allowed_writes: list[str]) -> str | None:
    """Why ``plan`` (None: no sandbox) gives less confinement than ``floor``; None if not."""
    if plan is None:
        return "it asks for no sandbox"
    if plan.network_enabled:
        return "it asks for network access"
    if plan.full_write:
        return "it asks to write everywhere"
    writable = [root.path for root in plan.writable_roots]
    if floor == "read-only" and writable:
        return f"it asks to write to `{writable[0]}`"
    for path in writable:
        if not any(_within(path, allowed) for allowed in allowed_writes):
            return f"it asks to write to `{path}`, outside the workspace and temporary directories"
    return None


def allowed_writes(context: SandboxContext | None, cwd: str) -> list[str]:
    """Where a workspace-write floor lets a command write: the workspace roots (else the
    cwd), /tmp, and the temporary directories."""
    roots = list(context.workspace_roots) if context else []
    temps = list(context.temporary_directories) if context else []
    allowed = [native_or(uri, "") for uri in roots] or [cwd]
    allowed += ["/tmp", *(native_or(uri, "") for uri in temps)]
    tmpdir = os.environ.get("TMPDIR", "")
    if os.path.isabs(tmpdir):
        allowed.append(tmpdir)
    return [path for path in allowed if path]


def refusal(floor: Floor, why: str) -> str:
    return f"this executor's sandbox floor is {floor}, and this request gets less: {why}"


def floor_sandbox(floor: Floor, raw: Any, cwd_uri: str) -> dict[str, Any]:
    """The floor's own `sandbox` object, keeping the request's workspace roots and cwd."""
    profile = legacy_profile(floor)
    assert profile is not None
    context = sandbox_context_json(profile, cwd_uri, [cwd_uri])
    if isinstance(raw, dict):
        for key in ("cwd", "workspaceRoots", "temporaryDirectories", "userHomeDir"):
            if key in raw:
                context[key] = raw[key]
    return context


def native_or(uri: str | None, default: str) -> str:
    """The host path of a file URI, or ``default`` for none or a bad one."""
    if uri is None:
        return default
    try:
        return PathUri.parse(uri).to_host_native_path()
    except InvalidPathUri:
        return default


def _within(path: str, root: str) -> bool:
    root = os.path.realpath(root)
    return path == root or path.startswith(root.rstrip("/") + "/")
