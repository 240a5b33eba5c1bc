"""Binding portable intent to this host: which real paths are readable, writable,
read-only inside writable roots, or denied.

This looks at the file system (to find `.git` files, symlinks, missing roots) but
knows nothing about how any OS enforces the result; the backends read the plan.
"""

from __future__ import annotations

import logging
import os

import msgspec

from codexexec.protocol.path_uri import InvalidPathUri, PathUri
from codexexec.sandbox import globs
from codexexec.sandbox.policy import (
    FileSystemEntry,
    GlobEntry,
    PathEntry,
    SandboxContext,
    SandboxPolicyError,
    SpecialEntry,
)

log = logging.getLogger(__name__)

PROTECTED_METADATA_NAMES = (".git", ".agents", ".codex", ".aws")
# Files and folders whose change runs code outside the sandbox later — a shell's start-up
# files, git's and editors' configuration, MCP servers, direnv — kept read-only where they
# exist in a writable root (a codexexec addition; Codex leaves them writable). In the
# user's home, missing shell start-up files are masked too, so none can be planted.
PROTECTED_LATER_EXECUTION = (
    ".bashrc",
    ".bash_profile",
    ".bash_login",
    ".bash_logout",
    ".profile",
    ".zshrc",
    ".zprofile",
    ".zshenv",
    ".zlogin",
    ".gitconfig",
    ".gitmodules",
    ".ripgreprc",
    ".mcp.json",
    ".envrc",
    ".vscode",
    ".idea",
)
SHELL_START_FILES = PROTECTED_LATER_EXECUTION[:9]
MAX_SUBMODULES = 256
MAX_GITMODULES_BYTES = 256 * 1024
LINUX_PLATFORM_DEFAULTS = (
    "/bin",
    "/sbin",
    "/usr",
    "/etc",
    "/lib",
    "/lib64",
    "/nix/store",
    "/run/current-system/sw",
)


class WritableRoot(msgspec.Struct):
    path: str
    # Existing paths inside the root that stay read-only (bind-mounted read-only).
    read_only: list[str] = msgspec.field(default_factory=list)
    # Protected names that do not exist yet: masked so they cannot be created.
    missing_protected: list[str] = msgspec.field(default_factory=list)


class NetworkRouting(msgspec.Struct, frozen=True):
    """Managed network: reach only these loopback proxy ports, each via a host Unix socket."""

    routes: tuple[tuple[int, str], ...]  # (port, unix socket path)
    bridge_dir: str
    allow_local_binding: bool = False

    @property
    def ports(self) -> list[int]:
        return [port for port, _ in self.routes]


class SandboxPlan(msgspec.Struct):
    full_read: bool
    readable_roots: list[str]
    writable_roots: list[WritableRoot]
    full_write: bool
    denied: list[str]
    network_enabled: bool
    command_cwd: str
    routing: NetworkRouting | None = None
    # The executor's --linux-sandbox-pid-namespace inherit: no PID namespace of its own.
    share_pids: bool = False

    @property
    def all_read_only_paths(self) -> list[str]:
        return [p for root in self.writable_roots for p in root.read_only]


def _native(uri: str, what: str) -> str:
    try:
        return PathUri.parse(uri).to_host_native_path()
    except InvalidPathUri as exc:
        raise SandboxPolicyError(
            f"{what} URI `{uri}` is not valid on this exec-server host: {exc}"
        ) from None


def _depth(path: str) -> int:
    return len([part for part in path.split("/") if part])


def _within(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip("/") + "/")


class _Resolver:
    def __init__(self, context: SandboxContext, command_cwd: str) -> None:
        self.context = context
        self.command_cwd = command_cwd
        self.sandbox_cwd = _native(context.cwd, "sandbox cwd") if context.cwd else None
        self.workspace_roots = [_native(u, "workspace root") for u in context.workspace_roots]
        self.temporary = [_native(u, "temporary directory") for u in context.temporary_directories]

    def roots_for_project(self, subpath: str | None) -> list[str]:
        roots = self.workspace_roots or ([self.sandbox_cwd] if self.sandbox_cwd else [])
        if not roots:
            raise SandboxPolicyError(
                "file system sandbox context with dynamic permissions requires cwd"
            )
        for root in roots:
            if not os.path.isdir(root):
                raise SandboxPolicyError(f"workspace root `{root}` does not exist on this executor")
        return [os.path.join(root, subpath) if subpath else root for root in roots]

    def resolve(self, entry: FileSystemEntry) -> list[str]:
        path = entry.path
        if isinstance(path, GlobEntry):
            return self._glob(path.pattern, entry.access)
        if isinstance(path, PathEntry):
            native = _native(path.uri, "sandbox path")
            if not os.path.lexists(native):
                if entry.skip_if_missing or entry.access == "deny":
                    return []
                raise SandboxPolicyError(f"sandbox path `{native}` does not exist on this executor")
            return [native]
        return self._special(path)

    def _glob(self, pattern: str, access: str) -> list[str]:
        if access != "deny":
            # Codex enforces globs only to deny; a read or write glob changes nothing there.
            log.warning("ignoring glob_pattern entry %r: globs can only deny", pattern)
            return []
        if pattern.startswith("~/"):
            home = _user_home(self.context)
            patterns = [] if home is None else [os.path.join(home, pattern[2:])]
        elif os.path.isabs(pattern):
            patterns = [pattern]
        else:
            patterns = [os.path.join(root, pattern) for root in self.roots_for_project(None)]
        depth = self.context.permissions.glob_scan_max_depth
        try:
            return [path for each in patterns for path in globs.expand(each, depth)]
        except globs.GlobError as error:
            raise SandboxPolicyError(str(error)) from None

    def _special(self, special: SpecialEntry) -> list[str]:
        kind = special.kind
        if kind == "root":
            return ["/"]
        if kind == "minimal":
            return [p for p in LINUX_PLATFORM_DEFAULTS if os.path.exists(p)]
        if kind in ("project_roots", "current_working_directory"):
            return self.roots_for_project(special.subpath)
        if kind == "tmpdir":
            tmpdir = self.temporary or [os.environ.get("TMPDIR", "")]
            return [t for t in tmpdir if os.path.isabs(t) and os.path.isdir(t)]
        if kind == "slash_tmp":
            return ["/tmp"] if os.path.isdir("/tmp") else []
        log.warning("ignoring unknown special sandbox path kind %r", kind)
        return []


def _gitdir_target(git_file: str) -> str | None:
    """The gitdir a worktree/submodule `.git` file points at, if it exists."""
    first = _first_line(git_file)
    if first is None or not first.startswith("gitdir:"):
        return None
    target = first[len("gitdir:") :].strip()
    target = os.path.normpath(os.path.join(os.path.dirname(git_file), target))
    return target if os.path.isdir(target) else None


def _common_dir(gitdir: str) -> str | None:
    """A linked worktree's gitdir names the main repository's `.git` (hooks, config) in its
    `commondir` file; writing there runs code on the host at the next git command."""
    relative = _first_line(os.path.join(gitdir, "commondir"))
    if not relative:
        return None
    common = os.path.normpath(os.path.join(gitdir, relative))
    return common if os.path.isdir(common) else None


def _first_line(path: str) -> str | None:
    try:
        with open(path, encoding="utf-8") as handle:
            return handle.readline(4096).strip()
    except (OSError, UnicodeDecodeError):
        return None


def _submodule_git_paths(root: str) -> list[str]:
    """`<submodule>/.git` of each submodule `.gitmodules` lists (bounded)."""
    try:
        with open(os.path.join(root, ".gitmodules"), encoding="utf-8") as handle:
            lines = handle.readlines(MAX_GITMODULES_BYTES)
    except (OSError, UnicodeDecodeError):
        return []
    found = []
    for line in lines:
        key, _, value = line.partition("=")
        if key.strip() != "path" or not value.strip():
            continue
        path = os.path.normpath(os.path.join(root, value.strip()))
        if _within(path, root) and path != root:
            found.append(os.path.join(path, ".git"))
        if len(found) >= MAX_SUBMODULES:
            break
    return found


def _git_metadata(git_path: str) -> list[str]:
    """What must stay read-only for one `.git`: itself and, for a `.git` file, the gitdir
    it points at and that gitdir's common dir."""
    protected = [git_path]
    if os.path.isfile(git_path) and (target := _gitdir_target(git_path)) is not None:
        protected.append(target)
        if (common := _common_dir(target)) is not None:
            protected.append(common)
    return protected


def _protect_later_execution(root: WritableRoot, home: str | None, explicit: set[str]) -> None:
    """Read-only `PROTECTED_LATER_EXECUTION` names of one writable root, unless the request
    names that very path writable."""
    for name in PROTECTED_LATER_EXECUTION:
        candidate = os.path.join(root.path, name)
        if candidate in explicit or os.path.islink(candidate):
            continue  # a link is left as it is: binding over it would follow it
        if os.path.exists(candidate):
            root.read_only.append(candidate)
        elif name in SHELL_START_FILES and home is not None and root.path == home:
            root.missing_protected.append(candidate)


def _protect(root: WritableRoot) -> None:
    for name in PROTECTED_METADATA_NAMES:
        candidate = os.path.join(root.path, name)
        if os.path.islink(candidate):
            # A symlink could point a read-only mount anywhere; refuse rather than guess.
            raise SandboxPolicyError(
                f"cannot enforce sandbox read-only path `{candidate}`: it is a symlink"
            )
        if not os.path.exists(candidate):
            # Created from inside, any of these would be trusted by tools run outside
            # later (git hooks, agent and AWS config), so a missing one is masked.
            root.missing_protected.append(candidate)
        elif name == ".git":
            root.read_only += _git_metadata(candidate)
        else:
            root.read_only.append(candidate)
    for git_path in _submodule_git_paths(root.path):
        if os.path.lexists(git_path) and not os.path.islink(git_path):
            root.read_only += _git_metadata(git_path)
    root.read_only = list(dict.fromkeys(root.read_only))


def _user_home(context: SandboxContext) -> str | None:
    """The home the request names, else this executor's."""
    if context.user_home_dir:
        try:
            return os.path.realpath(_native(context.user_home_dir, "user home"))
        except SandboxPolicyError:
            return None
    home = os.path.expanduser("~")
    return os.path.realpath(home) if os.path.isabs(home) else None


def resolve_plan(context: SandboxContext, command_cwd: str) -> SandboxPlan:
    """Bind ``context`` to this host's paths; raises SandboxPolicyError when it cannot."""
    profile = context.permissions
    resolver = _Resolver(context, command_cwd)
    network_enabled = profile.network == "enabled"
    if profile.file_system == "unrestricted":
        return SandboxPlan(True, ["/"], [WritableRoot("/")], True, [], network_enabled, command_cwd)
    access: dict[str, str] = {}
    precedence = {"read": 0, "write": 1, "deny": 2}
    for entry in profile.entries:
        for path in resolver.resolve(entry):
            path = os.path.normpath(path)
            if path not in access or precedence[entry.access] > precedence[access[path]]:
                access[path] = entry.access
    denied = sorted((p for p, a in access.items() if a == "deny"), key=_depth)
    full_read = access.get("/") in ("read", "write")
    full_write = access.get("/") == "write" and not any(a != "write" for a in access.values())
    readable = sorted((p for p, a in access.items() if a in ("read", "write")), key=_depth)
    writable: list[WritableRoot] = []
    explicit_writes = {os.path.realpath(p) for p, a in access.items() if a == "write"}
    home = _user_home(context)
    for path in sorted((p for p, a in access.items() if a == "write"), key=_depth):
        real = os.path.realpath(path)
        root = WritableRoot(real)
        if not full_write:
            _protect(root)
            _protect_later_execution(root, home, explicit_writes)
        # A narrower read entry inside a writable root is a read-only carve-out.
        root.read_only += [
            p for p, a in access.items() if a == "read" and p != path and _within(p, path)
        ]
        root.read_only.sort(key=_depth)
        writable.append(root)
    return SandboxPlan(
        full_read, readable, writable, full_write, denied, network_enabled, command_cwd
    )
