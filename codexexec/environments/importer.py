"""Importing a Codex ``CODEX_HOME``'s environments into codexexec's own file.

Codex's file is read with Codex's rules (so it is imported only if Codex would load
it), its entries are appended to codexexec's file as TOML (relative ``cwd`` made
absolute, since the file moves), and the result is validated before it replaces the
old file, so a failed import changes nothing. Codex's ``default`` is reported, not
copied: which environment codexexec uses by default stays the user's choice. An
entry's ``skills`` table (a Codex harness setting codexexec has no use for) is not
carried over.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

from codexexec.environments.config import (
    DEFAULT_CONNECT_TIMEOUT,
    DEFAULT_INITIALIZE_TIMEOUT,
    ENVIRONMENTS_FILE,
    EnvironmentConfigError,
    EnvironmentSpec,
    RegistrySpec,
    StdioSpec,
    WebSocketSpec,
    load_config,
)

HEADER = (
    "# codexexec environments: Codex's environments.toml format, plus registry entries\n"
    '# (registry = "https://…", environment_id, token_env or token_file).\n'
)


@dataclass(frozen=True, slots=True)
class Imported:
    ids: tuple[str, ...]
    source: Path
    destination: Path
    # Codex's default environment, when it names one (not copied).
    codex_default: str | None


def import_codex_environments(codex_home: Path, destination: Path) -> Imported:
    source = codex_home / ENVIRONMENTS_FILE
    if not source.is_file():
        raise EnvironmentConfigError(f"there is no {ENVIRONMENTS_FILE} in {codex_home}")
    codex = load_config(source, dialect="codex")
    ours = load_config(destination)
    taken = [spec.id for spec in codex.environments if ours.find(spec.id) is not None]
    if taken:
        raise EnvironmentConfigError(
            f"{destination} already has {', '.join(f'`{i}`' for i in taken)}; "
            "remove or rename those entries there, then import again"
        )
    existing = destination.read_text(encoding="utf-8") if ours.path is not None else HEADER
    separator = "" if not existing or existing.endswith("\n") else "\n"
    text = existing + separator + "".join("\n" + render(spec) for spec in codex.environments)
    _replace_validated(destination, text)
    default = codex.default if codex.default not in (None, "local") else None
    return Imported(tuple(s.id for s in codex.environments), source, destination, default)


def render(spec: EnvironmentSpec) -> str:
    """One ``[[environments]]`` table, with only the keys that differ from the defaults."""
    lines = ["[[environments]]", f"id = {_string(spec.id)}"]
    if isinstance(spec, WebSocketSpec):
        lines.append(f"url = {_string(spec.url)}")
        if spec.bearer_token is not None:
            lines.append(f"auth_bearer_token = {_string(spec.bearer_token)}")
    elif isinstance(spec, StdioSpec):
        lines.append(f"program = {_string(spec.program)}")
        if spec.args:
            lines.append(f"args = [{', '.join(_string(a) for a in spec.args)}]")
        if spec.cwd is not None:
            lines.append(f"cwd = {_string(spec.cwd)}")
    else:
        lines.extend(_registry_lines(spec))
    if not isinstance(spec, StdioSpec) and spec.connect_timeout != DEFAULT_CONNECT_TIMEOUT:
        lines.append(f"connect_timeout_sec = {float(spec.connect_timeout)!r}")
    if spec.initialize_timeout != DEFAULT_INITIALIZE_TIMEOUT:
        lines.append(f"initialize_timeout_sec = {float(spec.initialize_timeout)!r}")
    if isinstance(spec, StdioSpec) and spec.env:
        lines.append("[environments.env]")
        lines.extend(f"{_string(k)} = {_string(v)}" for k, v in spec.env.items())
    return "\n".join(lines) + "\n"


def _registry_lines(spec: RegistrySpec) -> list[str]:
    lines = [f"registry = {_string(spec.registry)}"]
    if spec.environment_id != spec.id:
        lines.append(f"environment_id = {_string(spec.environment_id)}")
    if spec.token_env is not None:
        lines.append(f"token_env = {_string(spec.token_env)}")
    if spec.token_file is not None:
        lines.append(f"token_file = {_string(spec.token_file)}")
    return lines


def _string(value: str) -> str:
    # A JSON string is a TOML basic string, except that TOML wants DEL escaped too.
    return json.dumps(value, ensure_ascii=False).replace("\x7f", "\\u007f")


def _replace_validated(destination: Path, text: str) -> None:
    destination.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    fd, temporary = tempfile.mkstemp(prefix=".environments-", dir=destination.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
        load_config(Path(temporary))  # never install a file that would not load
        os.replace(temporary, destination)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
