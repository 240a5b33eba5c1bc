"""Codex's portable sandbox intent: PermissionProfile and FileSystemSandboxContext.

Pure data and validation, no OS code: the harness says *what* a command may touch,
in host-independent terms (PathUris, symbolic roots); the executor decides *how*.
JSON shapes and names follow Codex (docs/sandbox-intent.md §1); unknown fields are ignored,
unknown special kinds are kept and ignored (Codex learned not to reject them), unknown
types are errors.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any, Literal

import msgspec

from codexexec.sandbox.errors import SandboxError

Access = Literal["read", "write", "deny"]
NetworkPolicy = Literal["restricted", "enabled"]

SPECIAL_KINDS = (
    "root",
    "minimal",
    "project_roots",
    "current_working_directory",
    "tmpdir",
    "slash_tmp",
)


class SandboxPolicyError(SandboxError, ValueError):
    """The intent is malformed; the message says which part and why."""


class PathEntry(msgspec.Struct, frozen=True):
    """An absolute path (a PathUri string on the wire)."""

    uri: str


class GlobEntry(msgspec.Struct, frozen=True):
    pattern: str


class SpecialEntry(msgspec.Struct, frozen=True):
    kind: str
    subpath: str | None = None


EntryPath = PathEntry | GlobEntry | SpecialEntry


class FileSystemEntry(msgspec.Struct, frozen=True):
    path: EntryPath
    access: Access
    skip_if_missing: bool = False


class PermissionProfile(msgspec.Struct, frozen=True):
    type: Literal["managed", "disabled", "external"]
    file_system: Literal["restricted", "unrestricted"] = "unrestricted"
    entries: tuple[FileSystemEntry, ...] = ()
    network: NetworkPolicy = "restricted"
    # How deep below its literal prefix a glob_pattern entry is looked for (None: no limit).
    glob_scan_max_depth: int | None = None

    @property
    def enforced(self) -> bool:
        """Whether this executor must sandbox: anything less than full access."""
        if self.type != "managed":
            return False
        return self.file_system == "restricted" or self.network == "restricted"


class SandboxContext(msgspec.Struct, frozen=True):
    permissions: PermissionProfile
    cwd: str | None = None
    workspace_roots: tuple[str, ...] = ()
    user_home_dir: str | None = None
    temporary_directories: tuple[str, ...] = ()


def _require(obj: Any, key: str, where: str) -> Any:
    if not isinstance(obj, dict) or key not in obj:
        raise SandboxPolicyError(f"{where}: missing field `{key}`")
    return obj[key]


def _string(value: Any, where: str) -> str:
    if not isinstance(value, str) or not value:
        raise SandboxPolicyError(f"{where}: expected a non-empty string")
    return value


def _entry_path(raw: Any, where: str) -> EntryPath:
    kind = _require(raw, "type", where)
    if kind == "path":
        return PathEntry(_string(_require(raw, "path", where), f"{where}.path"))
    if kind == "glob_pattern":
        return GlobEntry(_string(_require(raw, "pattern", where), f"{where}.pattern"))
    if kind == "special":
        value = _require(raw, "value", where)
        special = _string(_require(value, "kind", f"{where}.value"), f"{where}.value.kind")
        subpath = value.get("subpath")
        if subpath is not None:
            subpath = _string(subpath, f"{where}.value.subpath")
            if subpath.startswith("/") or ".." in subpath.split("/"):
                raise SandboxPolicyError(
                    f"{where}.value.subpath: `{subpath}` must stay inside the root"
                )
        return SpecialEntry(special, subpath)
    raise SandboxPolicyError(f"{where}: unknown path type `{kind}`")


def _entry(raw: Any, where: str) -> FileSystemEntry:
    access = _require(raw, "access", where)
    if access == "none":  # the older spelling of deny
        access = "deny"
    if access not in ("read", "write", "deny"):
        raise SandboxPolicyError(f"{where}.access: unknown access `{access}` (read, write or deny)")
    skip = raw.get("missing_path_behavior") == "skip"
    return FileSystemEntry(_entry_path(_require(raw, "path", where), f"{where}.path"), access, skip)


def parse_profile(raw: Any) -> PermissionProfile:
    kind = _require(raw, "type", "permissions")
    if kind == "disabled":
        return PermissionProfile("disabled", network="enabled")
    network = raw.get("network", "restricted")
    if network not in ("restricted", "enabled"):
        raise SandboxPolicyError(f"permissions.network: unknown network policy `{network}`")
    if kind == "external":
        return PermissionProfile("external", network=network)
    if kind != "managed":
        raise SandboxPolicyError(f"permissions: unknown profile type `{kind}`")
    fs = _require(raw, "file_system", "permissions")
    fs_kind = _require(fs, "type", "permissions.file_system")
    if fs_kind == "unrestricted":
        return PermissionProfile("managed", "unrestricted", (), network)
    if fs_kind != "restricted":
        raise SandboxPolicyError(f"permissions.file_system: unknown type `{fs_kind}`")
    entries_raw = fs.get("entries", [])
    if not isinstance(entries_raw, list):
        raise SandboxPolicyError("permissions.file_system.entries: expected an array")
    entries = tuple(
        _entry(item, f"permissions.file_system.entries[{i}]") for i, item in enumerate(entries_raw)
    )
    depth = fs.get("glob_scan_max_depth")
    if depth is not None and (not isinstance(depth, int) or isinstance(depth, bool) or depth < 1):
        shown = f"integer `{depth}`" if isinstance(depth, int) else repr(depth)
        raise SandboxPolicyError(  # Codex's words for 0
            f"permissions.file_system.glob_scan_max_depth: invalid value: {shown}, "
            "expected a nonzero usize"
        )
    return PermissionProfile("managed", "restricted", entries, network, depth)


def parse_context(raw: Any) -> SandboxContext:
    """Parse the `sandbox` object of process/start (FileSystemSandboxContext)."""
    if not isinstance(raw, dict):
        raise SandboxPolicyError("sandbox: expected an object")
    profile = parse_profile(_require(raw, "permissions", "sandbox"))
    roots = raw.get("workspaceRoots") or []
    temps = raw.get("temporaryDirectories") or []
    if not isinstance(roots, list) or not all(isinstance(r, str) for r in roots):
        raise SandboxPolicyError("sandbox.workspaceRoots: expected an array of file URIs")
    if not isinstance(temps, list) or not all(isinstance(t, str) for t in temps):
        raise SandboxPolicyError("sandbox.temporaryDirectories: expected an array of file URIs")
    cwd = raw.get("cwd")
    home = raw.get("userHomeDir")
    return SandboxContext(
        profile,
        cwd if isinstance(cwd, str) else None,
        tuple(roots),
        home if isinstance(home, str) else None,
        tuple(temps),
    )


# -- building intent (the harness side) ----------------------------------------------

LegacyMode = Literal["read-only", "workspace-write", "danger-full-access"]


def special_entry(kind: str, access: Access) -> dict[str, Any]:
    return {"path": {"type": "special", "value": {"kind": kind}}, "access": access}


def path_entry(path: str, access: Access) -> dict[str, Any]:
    """An entry on one path (a file URI; `~/…` until the client resolves it)."""
    return {"path": {"type": "path", "path": path}, "access": access}


def glob_entry(pattern: str, access: Access) -> dict[str, Any]:
    return {"path": {"type": "glob_pattern", "pattern": pattern}, "access": access}


def legacy_profile(
    mode: LegacyMode,
    writable_root_uris: Sequence[str] = (),
    network: bool = False,
    extra_entries: Sequence[dict[str, Any]] = (),
) -> dict[str, Any] | None:
    """Codex's legacy sandbox modes as PermissionProfile JSON; None means unsandboxed."""
    if mode == "danger-full-access":
        return None
    entries = [special_entry("root", "read")]
    if mode == "workspace-write":
        entries += [
            special_entry("project_roots", "write"),
            special_entry("slash_tmp", "write"),
            special_entry("tmpdir", "write"),
        ]
        entries += [path_entry(uri, "write") for uri in writable_root_uris]
    entries += extra_entries
    return {
        "type": "managed",
        "file_system": {"type": "restricted", "entries": entries},
        "network": "enabled" if network else "restricted",
    }


_GLOB_CHARS = frozenset("*?[")


def deny_entries(
    read: Sequence[str],
    write: Sequence[str],
    to_uri: Callable[[str], str],
    home_uri: Callable[[str], str],
) -> list[dict[str, Any]]:
    """Entries for ``--deny-read`` (no access at all: a path or a glob the executor expands)
    and ``--deny-write`` (read-only: paths only, as a profile cannot make a glob read-only).
    ``to_uri`` turns a path into the executor's URI; ``home_uri`` does so for the rest of a
    ``~/`` path, under the *executor's* home (the caller's may not exist there)."""

    def uri(item: str) -> str:
        return home_uri(item[2:]) if item.startswith("~/") else to_uri(item)

    entries: list[dict[str, Any]] = []
    for item in read:
        if _GLOB_CHARS & set(item):
            entries.append(glob_entry(item, "deny"))
        else:
            entries.append(path_entry(uri(item), "deny"))
    for item in write:
        if _GLOB_CHARS & set(item):
            raise SandboxPolicyError(
                f"--deny-write takes a path, not `{item}`: a pattern can only hide files "
                "altogether (--deny-read)"
            )
        entries.append(path_entry(uri(item), "read"))
    return entries


def under_home(profile: Mapping[str, Any], home_uri: Callable[[str], str]) -> dict[str, Any]:
    """``profile`` with each `~/rest` path entry (profile_file.py leaves them so) made
    ``home_uri(rest)``, under the executor's home."""
    file_system = profile.get("file_system")
    if not isinstance(file_system, dict) or not isinstance(file_system.get("entries"), list):
        return dict(profile)
    entries = []
    for entry in file_system["entries"]:
        path = entry.get("path") if isinstance(entry, dict) else None
        if isinstance(path, dict) and str(path.get("path", "")).startswith("~/"):
            entry = {**entry, "path": {**path, "path": home_uri(path["path"][2:])}}
        entries.append(entry)
    return {**profile, "file_system": {**file_system, "entries": entries}}


def with_entries(
    profile: Mapping[str, Any], writable_root_uris: Sequence[str], extra: Sequence[dict[str, Any]]
) -> dict[str, Any]:
    """``profile`` (PermissionProfile JSON) with more writable roots and entries appended;
    an unrestricted file system stays as it is."""
    file_system = dict(profile.get("file_system") or {})
    if file_system.get("type") != "restricted":
        return dict(profile)
    writes = [path_entry(u, "write") for u in writable_root_uris]
    file_system["entries"] = [*file_system.get("entries", []), *writes, *extra]
    return {**profile, "file_system": file_system}


def sandbox_context_json(
    profile: dict[str, Any], cwd_uri: str, workspace_root_uris: list[str]
) -> dict[str, Any]:
    """The `sandbox` object for process/start, as Codex's harness sends it."""
    return {
        "permissions": profile,
        "cwd": cwd_uri,
        "workspaceRoots": workspace_root_uris,
        "windowsSandboxLevel": "disabled",
    }
