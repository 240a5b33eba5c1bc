"""`exec --profile FILE`: a permission profile written in Codex's `[permissions]` TOML shape,
turned into the PermissionProfile the executor enforces (the harness side; pure).

    default_permissions = "dev"            # which profile, when the file has several
    [permissions.dev]
    extends = ":workspace"                 # :read-only | :workspace | :danger-full-access
    [permissions.dev.workspace_roots]      # more writable roots, with :workspace
    "/srv/cache" = true
    [permissions.dev.filesystem]
    ":minimal" = "read"                    # :root :minimal :tmpdir :slash_tmp, paths, ~/paths
    "~/.ssh" = "deny"                      # read | write | deny (older: none)
    glob_scan_max_depth = 3
    [permissions.dev.filesystem.":workspace_roots"]
    "." = "write"                          # relative to each workspace root
    "**/*.env" = "deny"                    # globs deny
    [permissions.dev.network]
    enabled = true

A path starting with `~/` stays `~/…` here: the client puts it under the executor's home
(``policy.under_home``), which the caller's may not be. A glob is sent as a pattern for the
executor to expand.
"""

from __future__ import annotations

import os
from typing import Any

from codexexec.sandbox.policy import (
    Access,
    SandboxPolicyError,
    glob_entry,
    path_entry,
    special_entry,
)

_ACCESS: dict[str, Access] = {"read": "read", "write": "write", "deny": "deny", "none": "deny"}
_SPECIALS = {":root": "root", ":minimal": "minimal", ":tmpdir": "tmpdir", ":slash_tmp": "slash_tmp"}
_GLOB = frozenset("*?[")
_BASES: dict[str, list[tuple[str, Access]] | None] = {
    ":read-only": [("root", "read")],
    ":workspace": [
        ("root", "read"),
        ("project_roots", "write"),
        ("slash_tmp", "write"),
        ("tmpdir", "write"),
    ],
    ":danger-full-access": None,
}


def choose(document: dict[str, Any], source: str) -> tuple[str, dict[str, Any]]:
    """The profile a file means: ``default_permissions``, or its only one."""
    profiles = document.get("permissions")
    if not isinstance(profiles, dict) or not profiles:
        raise SandboxPolicyError(f"{source} has no [permissions.NAME] table")
    name = document.get("default_permissions")
    if name is None:
        if len(profiles) != 1:
            raise SandboxPolicyError(
                f"{source} defines several permission profiles "
                f"({', '.join(sorted(profiles))}); name one with default_permissions"
            )
        name = next(iter(profiles))
    if not isinstance(name, str) or not isinstance(profiles.get(name), dict):
        raise SandboxPolicyError(f"{source}: default_permissions names no profile `{name}`")
    return name, profiles[name]


def profile_json(table: dict[str, Any], to_uri: Any, where: str) -> dict[str, Any]:
    """The PermissionProfile JSON for one profile table; ``to_uri`` turns an absolute host
    path into the executor's file URI (`~/` paths are left for the client)."""
    base_name = table.get("extends", ":read-only")
    if not isinstance(base_name, str) or base_name not in _BASES:
        raise SandboxPolicyError(
            f"{where}.extends: unknown base `{base_name}` ({', '.join(_BASES)})"
        )
    network = table.get("network", {})
    if not isinstance(network, dict) or not isinstance(network.get("enabled", False), bool):
        raise SandboxPolicyError(f"{where}.network.enabled: expected true or false")
    network_policy = "enabled" if network.get("enabled") else "restricted"
    base = _BASES[base_name]
    if base is None:
        return {"type": "managed", "file_system": {"type": "unrestricted"}, "network": "enabled"}
    entries: list[dict[str, Any]] = [special_entry(kind, access) for kind, access in base]
    roots = table.get("workspace_roots", {})
    if not isinstance(roots, dict):
        raise SandboxPolicyError(f"{where}.workspace_roots: expected a table of PATH = true")
    for path, enabled in roots.items():
        if enabled is True and base_name == ":workspace":
            entries.append(_path(_expand(path, where), "write", to_uri))
    filesystem = table.get("filesystem", {})
    if not isinstance(filesystem, dict):
        raise SandboxPolicyError(f"{where}.filesystem: expected a table")
    file_system: dict[str, Any] = {"type": "restricted"}
    for key, value in filesystem.items():
        if key == "glob_scan_max_depth":
            file_system["glob_scan_max_depth"] = value
        elif key == ":workspace_roots":
            entries += _workspace_entries(value, f'{where}.filesystem.":workspace_roots"')
        elif key in _SPECIALS:
            entries.append(
                special_entry(_SPECIALS[key], _access(value, f"{where}.filesystem.{key}"))
            )
        elif key.startswith(":"):
            raise SandboxPolicyError(f"{where}.filesystem: unknown special path `{key}`")
        else:
            access = _access(value, f"{where}.filesystem.{key}")
            if _GLOB & set(key):
                entries.append(glob_entry(key, access))
            else:
                entries.append(_path(_expand(key, where), access, to_uri))
    file_system["entries"] = entries
    return {"type": "managed", "file_system": file_system, "network": network_policy}


def _workspace_entries(table: Any, where: str) -> list[dict[str, Any]]:
    if not isinstance(table, dict):
        raise SandboxPolicyError(f"{where}: expected a table of relative paths")
    entries = []
    for key, value in table.items():
        access = _access(value, f"{where}.{key}")
        if _GLOB & set(key):
            entries.append(glob_entry(key, access))
        elif key.startswith("/") or ".." in key.split("/"):
            raise SandboxPolicyError(f"{where}: `{key}` must stay inside the workspace root")
        else:
            entry = special_entry("project_roots", access)
            if key not in (".", ""):
                entry["path"]["value"]["subpath"] = key.strip("/")
            entries.append(entry)
    return entries


def _access(value: Any, where: str) -> Access:
    if not isinstance(value, str) or value not in _ACCESS:
        raise SandboxPolicyError(f"{where}: expected read, write or deny, not {value!r}")
    return _ACCESS[value]


def _expand(path: str, where: str) -> str:
    if path.startswith("~/"):
        return "~/" + os.path.normpath(path[2:])
    if not os.path.isabs(path):
        raise SandboxPolicyError(
            f"{where}: `{path}` must be an absolute path, ~/path or a :special"
        )
    return os.path.normpath(path)


def _path(path: str, access: Access, to_uri: Any) -> dict[str, Any]:
    return path_entry(path if path.startswith("~/") else to_uri(path), access)
