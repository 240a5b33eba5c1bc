"""`environmentConfig/read`: the executor host's own Codex config, as a harness asks for it.

A harness (Codex's MCP discovery) asks which MCP servers are configured *on the executor*
by selecting TOML key paths; the answer is the executor's config layers, each cut down
to the selected keys, lowest precedence first:

* system   `/etc/codex/config.toml`            source `system (<path>)`
* user     `$CODEX_HOME/config.toml` (default `~/.codex`)   source `user (<path>)`
* project  `<dir>/.codex/config.toml` for each directory from the project root (nearest
  git repository, else the cwd) down to the cwd, only when the user or system config
  marks the project `trust_level = "trusted"`; source `project (<path>)`

and the requirements layer `/etc/codex/requirements.toml` (source = its path). Layers with
nothing selected are left out; `cloudInsertionIndex` counts the kept layers that rank
below cloud-managed config (the system ones). All of this, including the source strings,
was measured on Codex 0.169.0 (docs/codex-0.169-observed.md §11).
"""

from __future__ import annotations

import os
import socket
from typing import Any

import msgspec

from codexexec.protocol import messages as m
from codexexec.protocol.jsonrpc import INTERNAL_ERROR, INVALID_PARAMS, RpcError
from codexexec.protocol.path_uri import PathUri
from codexexec.server import toml_writer
from codexexec.server.uri_params import host_path

SYSTEM_CONFIG_DIR = "/etc/codex"
CONFIG_FILE = "config.toml"
REQUIREMENTS_FILE = "requirements.toml"
# A config file larger than this is refused rather than read into memory.
MAX_CONFIG_FILE_BYTES = 4 * 1024 * 1024


class _Layer(msgspec.Struct, frozen=True):
    source: str
    base_dir: str
    table: dict[str, Any]
    below_cloud: bool  # system layers rank below cloud-managed config


def read_environment_config(
    params: m.EnvironmentConfigReadParams, system_dir: str = SYSTEM_CONFIG_DIR
) -> dict[str, Any]:
    if not params.config_paths and not params.requirements_paths:
        raise RpcError(INVALID_PARAMS, "at least one config or requirements path is required")
    if any(not path for path in [*params.config_paths, *params.requirements_paths]):
        raise RpcError(INVALID_PARAMS, "TOML paths must contain at least one key segment")
    cwd = host_path(params.cwd, field="cwd")
    codex_home = codex_home_dir()
    try:
        config = _config_layers(system_dir, codex_home, cwd)
        requirements = _optional_layer(
            os.path.join(system_dir, REQUIREMENTS_FILE), None, below_cloud=True
        )
    except (OSError, ValueError) as exc:  # TOMLDecodeError is a ValueError
        raise RpcError(INTERNAL_ERROR, f"failed to load executor-local config: {exc}") from None
    result: dict[str, Any] = {}
    home = os.path.expanduser("~")
    if os.path.isabs(home):
        result["userHomeDir"] = _uri(home)
    result["codexHomeDir"] = _uri(codex_home)
    result["hostname"] = socket.gethostname()
    result["config"] = _stack(config, params.config_paths)
    result["requirements"] = _stack(requirements, params.requirements_paths)
    return result


def codex_home_dir() -> str:
    """`$CODEX_HOME` when set, else `~/.codex` (Codex's find_codex_home)."""
    configured = os.environ.get("CODEX_HOME")
    if configured:
        return os.path.realpath(configured)
    return os.path.join(os.path.expanduser("~"), ".codex")


def _config_layers(system_dir: str, codex_home: str, cwd: str) -> list[_Layer]:
    layers = _optional_layer(os.path.join(system_dir, CONFIG_FILE), "system", below_cloud=True)
    layers += _optional_layer(os.path.join(codex_home, CONFIG_FILE), "user", below_cloud=False)
    root = _project_root(cwd)
    if _is_trusted(layers, {root, cwd}):
        for directory in _directories_between(root, cwd):
            path = os.path.join(directory, ".codex", CONFIG_FILE)
            layers += _optional_layer(path, "project", below_cloud=False)
    return layers


def _optional_layer(path: str, kind: str | None, *, below_cloud: bool) -> list[_Layer]:
    try:
        with open(path, "rb") as file:
            data = file.read(MAX_CONFIG_FILE_BYTES + 1)
    except (FileNotFoundError, NotADirectoryError):
        return []
    if len(data) > MAX_CONFIG_FILE_BYTES:
        raise ValueError(f"{path} is larger than {MAX_CONFIG_FILE_BYTES} bytes")
    import tomllib  # only when a config file is read: every local exec loads this module

    table = tomllib.loads(data.decode("utf-8"))
    source = f"{kind} ({path})" if kind else path
    return [_Layer(source, os.path.dirname(path), table, below_cloud)]


def _project_root(cwd: str) -> str:
    """The nearest directory holding a git repository (`.git` file or `.git/HEAD`), else cwd."""
    directory = cwd
    while True:
        marker = os.path.join(directory, ".git")
        if os.path.isfile(marker) or os.path.isfile(os.path.join(marker, "HEAD")):
            return directory
        parent = os.path.dirname(directory)
        if parent == directory:
            return cwd
        directory = parent


def _is_trusted(layers: list[_Layer], candidates: set[str]) -> bool:
    for layer in layers:
        projects = layer.table.get("projects")
        if not isinstance(projects, dict):
            continue
        for candidate in candidates:
            entry = projects.get(candidate)
            if isinstance(entry, dict) and entry.get("trust_level") == "trusted":
                return True
    return False


def _directories_between(root: str, cwd: str) -> list[str]:
    relative = os.path.relpath(cwd, root)
    directories = [root]
    if relative != ".":
        for part in relative.split(os.sep):
            directories.append(os.path.join(directories[-1], part))
    return directories


def _stack(layers: list[_Layer], paths: list[list[str]]) -> dict[str, Any]:
    kept = []
    cloud_index = 0
    for layer in layers:
        projected = _project(layer.table, paths)
        if not projected:
            continue
        kept.append(
            {
                "source": layer.source,
                "baseDir": _uri(layer.base_dir),
                "toml": toml_writer.dumps(projected),
            }
        )
        cloud_index += layer.below_cloud
    return {"layers": kept, "cloudInsertionIndex": cloud_index}


def _project(table: dict[str, Any], paths: list[list[str]]) -> dict[str, Any]:
    """The parts of ``table`` the key paths select; a path that runs into a non-table
    value selects that whole value (as Codex does)."""
    out: dict[str, Any] = {}
    for path in paths:
        source, target = table, out
        for depth, key in enumerate(path):
            if key not in source:
                break
            value = source[key]
            if depth == len(path) - 1 or not isinstance(value, dict):
                target[key] = value
                break
            target = target.setdefault(key, {})
            source = value
    return out


def _uri(path: str) -> str:
    return str(PathUri.from_host_native_path(path))
