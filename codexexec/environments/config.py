"""`environments.toml`: Codex's format and rules, plus codexexec's registry-backed entries.

Codex's file (in ``CODEX_HOME``) has a ``default``, ``include_local`` and
``[[environments]]`` entries that set exactly one of ``url`` (a websocket exec-server)
or ``program`` (a stdio command such as ``ssh host codex exec-server --listen stdio``).
codexexec's own file (:func:`config_path`) accepts one more kind, an environment behind
an environment registry::

    [[environments]]
    id = "devbox"
    registry = "https://rendezvous.example"
    environment_id = "devbox"                  # optional; defaults to `id`
    token_env = "CODEXEXEC_REGISTRY_TOKEN"     # or token_file = "devbox.token"

Validation order and texts are Codex's (``exec-server protocol error: …``), so a file
that Codex rejects is rejected here with the same words.
"""

from __future__ import annotations

import math
import os
import re
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import msgspec

from codexexec.environments.errors import EnvironmentsError

ENVIRONMENTS_FILE = "environments.toml"
LOCAL_ENVIRONMENT_ID = "local"
MAX_ENVIRONMENT_ID_LEN = 64
DEFAULT_CONNECT_TIMEOUT = 10.0
DEFAULT_INITIALIZE_TIMEOUT = 10.0
DEFAULT_TOKEN_ENV = "CODEXEXEC_REGISTRY_TOKEN"
HOME_ENV = "CODEXEXEC_HOME"
PROTOCOL_ERROR = "exec-server protocol error: "

_TOP_KEYS = ("default", "include_local", "environments")
# Codex 0.169.0's fields, in its order (its "expected one of" list).
_CODEX_KEYS = (
    "id",
    "skills",
    "url",
    "auth_bearer_token",
    "program",
    "args",
    "env",
    "cwd",
    "connect_timeout_sec",
    "initialize_timeout_sec",
)
_REGISTRY_KEYS = ("registry", "environment_id", "token_env", "token_file")
_ID_CHARS = re.compile(r"[A-Za-z0-9_-]+")
_ENV_VAR_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")

Dialect = Literal["codex", "codexexec"]


class EnvironmentConfigError(EnvironmentsError):
    """The file or one entry is invalid; the message is Codex's where Codex has one."""


def _protocol_error(message: str) -> EnvironmentConfigError:
    return EnvironmentConfigError(PROTOCOL_ERROR + message)


@dataclass(frozen=True, slots=True)
class WebSocketSpec:
    id: str
    url: str
    connect_timeout: float = DEFAULT_CONNECT_TIMEOUT
    initialize_timeout: float = DEFAULT_INITIALIZE_TIMEOUT
    # Codex 0.169.0's `auth_bearer_token`: sent as `Authorization: Bearer …` on the upgrade.
    bearer_token: str | None = field(default=None, repr=False)

    kind = "websocket"
    reconnectable = True

    @property
    def target(self) -> str:
        return self.url


class StdioSpec(msgspec.Struct, frozen=True):
    id: str
    program: str
    args: tuple[str, ...] = ()
    env: Mapping[str, str] = msgspec.field(default_factory=dict)
    cwd: str | None = None
    initialize_timeout: float = DEFAULT_INITIALIZE_TIMEOUT

    kind = "stdio"
    # The child process is the connection: when it is gone, so is its session.
    reconnectable = False

    @property
    def target(self) -> str:
        import shlex

        return shlex.join([self.program, *self.args])


class RegistrySpec(msgspec.Struct, frozen=True):
    id: str
    registry: str
    environment_id: str
    token_env: str | None = None
    token_file: str | None = None
    connect_timeout: float = DEFAULT_CONNECT_TIMEOUT
    initialize_timeout: float = DEFAULT_INITIALIZE_TIMEOUT
    # Sent as ChatGPT-Account-ID (from CODEX_EXEC_SERVER_NOISE_CHATGPT_ACCOUNT_ID).
    account_id: str | None = None

    kind = "registry"
    reconnectable = True

    @property
    def target(self) -> str:
        return f"{self.environment_id}@{self.registry}"


EnvironmentSpec = WebSocketSpec | StdioSpec | RegistrySpec


class EnvironmentsConfig(msgspec.Struct, frozen=True):
    # None: no default environment (Codex's `default = "none"`).
    default: str | None = LOCAL_ENVIRONMENT_ID
    include_local: bool = True
    environments: tuple[EnvironmentSpec, ...] = ()
    path: Path | None = None
    # Where the list came from when not from a file (Codex's environment variables).
    origin: str | None = None

    def describe_source(self) -> str:
        return self.origin or f"file: {self.path or 'none, only `local`'}"

    def find(self, environment_id: str) -> EnvironmentSpec | None:
        for spec in self.environments:
            if spec.id == environment_id:
                return spec
        return None


# -- where the file lives -------------------------------------------------------------


def config_dir(environ: Mapping[str, str] | None = None) -> Path:
    """``$CODEXEXEC_HOME``, else the platform's config directory for codexexec."""
    env = os.environ if environ is None else environ
    home = env.get(HOME_ENV)
    if home:
        return Path(home)
    if sys.platform == "darwin":
        return Path.home() / "Library" / "Application Support" / "codexexec"
    base = env.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "codexexec"


def config_path(environ: Mapping[str, str] | None = None) -> Path:
    return config_dir(environ) / ENVIRONMENTS_FILE


def codex_home(environ: Mapping[str, str] | None = None) -> Path:
    env = os.environ if environ is None else environ
    return Path(env.get("CODEX_HOME") or Path.home() / ".codex")


# -- loading --------------------------------------------------------------------------


def load_config(path: Path | None = None, *, dialect: Dialect = "codexexec") -> EnvironmentsConfig:
    """Read and validate a file; a missing file means "only the local environment"."""
    path = path or config_path()
    try:
        exists = path.exists()
    except OSError as exc:
        raise _protocol_error(f"failed to inspect environment config `{path}`: {exc}") from None
    if not exists:
        return EnvironmentsConfig(path=None)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise _protocol_error(f"failed to read environment config `{path}`: {exc}") from None
    import tomllib  # here: most commands never read a config file

    try:
        document = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise _protocol_error(f"failed to parse environment config `{path}`: {exc}") from None
    try:
        _check_shape(document, dialect)
    except _ShapeError as exc:
        raise _protocol_error(f"failed to parse environment config `{path}`: {exc}") from None
    return parse_config(document, config_dir=path.parent, path=path)


class _ShapeError(EnvironmentsError):
    """What serde reports while deserializing (unknown or missing fields, wrong types),
    worded as Codex 0.169.0 prints it, with the location on the same line."""

    def __init__(self, message: str, where: str | None = None) -> None:
        super().__init__(f"{message} in `{where}`" if where else message)


def _invalid_type(value: Any, expected: str, where: str) -> _ShapeError:
    if isinstance(value, bool):
        kind = f"boolean `{str(value).lower()}`"
    elif isinstance(value, int):
        kind = f"integer `{value}`"
    elif isinstance(value, float):
        kind = f"floating point `{value}`"
    elif isinstance(value, str):
        kind = f'string "{value}"'
    else:
        kind = "sequence" if isinstance(value, list) else "map"
    return _ShapeError(f"invalid type: {kind}, expected {expected}", where)


def _check_keys(table: Mapping[str, Any], allowed: tuple[str, ...], where: str | None) -> None:
    for key in table:
        if key not in allowed:
            if len(allowed) == 1:
                expected = f"expected `{allowed[0]}`"
            else:
                expected = "expected one of " + ", ".join(f"`{name}`" for name in allowed)
            raise _ShapeError(f"unknown field `{key}`, {expected}", where)


def _check_strings(values: Any, expected: str, where: str) -> None:
    """A sequence (``expected`` "a sequence") or map ("a map") whose values are strings."""
    if not isinstance(values, list if expected == "a sequence" else dict):
        raise _invalid_type(values, expected, where)
    for value in values if isinstance(values, list) else values.values():
        if not isinstance(value, str):
            raise _invalid_type(value, "a string", where)


def _check_shape(document: Mapping[str, Any], dialect: Dialect) -> None:
    _check_keys(document, _TOP_KEYS, None)
    if "default" in document and not isinstance(document["default"], str):
        raise _invalid_type(document["default"], "a string", "default")
    if "include_local" in document and not isinstance(document["include_local"], bool):
        raise _invalid_type(document["include_local"], "a boolean", "include_local")
    entries = document.get("environments", [])
    if not isinstance(entries, list):
        raise _invalid_type(entries, "a sequence", "environments")
    allowed = _CODEX_KEYS if dialect == "codex" else _CODEX_KEYS + _REGISTRY_KEYS
    for entry in entries:
        if not isinstance(entry, dict):
            raise _invalid_type(entry, "struct EnvironmentToml", "environments")
        _check_keys(entry, allowed, "environments")
        if "id" not in entry:
            raise _ShapeError("missing field `id`", "environments")
        for key in ("id", "url", "auth_bearer_token", "program", "cwd", *_REGISTRY_KEYS):
            if key in entry and not isinstance(entry[key], str):
                raise _invalid_type(entry[key], "a string", f"environments.{key}")
        if "args" in entry:
            _check_strings(entry["args"], "a sequence", "environments.args")
        if "env" in entry:
            _check_strings(entry["env"], "a map", "environments.env")
        if "skills" in entry:
            _check_skills(entry["skills"])
        for key in ("connect_timeout_sec", "initialize_timeout_sec"):
            if key in entry:
                _check_seconds(entry[key], f"environments.{key}")


def _check_skills(skills: Any) -> None:
    # Codex 0.169.0's per-environment skills table (a harness feature codexexec has no
    # use for): accepted when well formed, so Codex's files load here unchanged.
    if not isinstance(skills, dict):
        raise _invalid_type(skills, "struct ScopedSkillsConfig", "environments.skills")
    _check_keys(skills, ("required",), "environments.skills")
    if "required" in skills:
        _check_strings(skills["required"], "a sequence", "environments.skills.required")


def _check_seconds(value: Any, where: str) -> None:
    # Codex reads an f64 and converts it with Duration::try_from_secs_f64.
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise _invalid_type(value, "f64", where)
    if value < 0:
        raise _ShapeError("cannot convert float seconds to Duration: value is negative", where)
    if not math.isfinite(value) or value > 2**64:
        raise _ShapeError(
            "cannot convert float seconds to Duration: value is either too big or NaN", where
        )


# -- validation (Codex's order and texts) ---------------------------------------------


def parse_config(
    document: Mapping[str, Any], *, config_dir: Path | None, path: Path | None = None
) -> EnvironmentsConfig:
    """Validate an already shape-checked document (see :func:`load_config`)."""
    include_local = bool(document.get("include_local", True))
    ids = {LOCAL_ENVIRONMENT_ID} if include_local else set()
    specs: list[EnvironmentSpec] = []
    for entry in document.get("environments", []):
        spec = _parse_entry(entry, config_dir)
        if spec.id in ids:
            raise _protocol_error(f"environment id `{spec.id}` is duplicated")
        ids.add(spec.id)
        specs.append(spec)
    default = _default_id(document.get("default"), include_local, ids)
    return EnvironmentsConfig(default, include_local, tuple(specs), path)


def validate_environment_id(environment_id: str) -> None:
    trimmed = environment_id.strip()
    if not trimmed:
        raise _protocol_error("environment id cannot be empty")
    if trimmed != environment_id:
        raise _protocol_error(
            f"environment id `{environment_id}` must not contain surrounding whitespace"
        )
    if environment_id == LOCAL_ENVIRONMENT_ID or environment_id.lower() == "none":
        raise _protocol_error(f"environment id `{environment_id}` is reserved")
    if len(environment_id) > MAX_ENVIRONMENT_ID_LEN:
        raise _protocol_error(
            f"environment id `{environment_id}` cannot be longer than "
            f"{MAX_ENVIRONMENT_ID_LEN} characters"
        )
    if not _ID_CHARS.fullmatch(environment_id):
        raise _protocol_error(
            f"environment id `{environment_id}` must contain only ASCII letters, numbers, "
            "'-' or '_'"
        )


def _parse_entry(entry: Mapping[str, Any], config_dir: Path | None) -> EnvironmentSpec:
    environment_id: str = entry["id"]
    validate_environment_id(environment_id)
    url, program, registry = entry.get("url"), entry.get("program"), entry.get("registry")
    if program is None and any(key in entry for key in ("args", "env", "cwd")):
        raise _protocol_error(f"environment `{environment_id}` args, env, and cwd require program")
    if url is None and "auth_bearer_token" in entry:
        raise _protocol_error(f"environment `{environment_id}` auth_bearer_token requires url")
    if url is None and registry is None and "connect_timeout_sec" in entry:
        raise _protocol_error(f"environment `{environment_id}` connect_timeout_sec requires url")
    if registry is None and any(key in entry for key in _REGISTRY_KEYS[1:]):
        raise _protocol_error(
            f"environment `{environment_id}` environment_id, token_env, and token_file "
            "require registry"
        )
    connect_timeout = float(entry.get("connect_timeout_sec", DEFAULT_CONNECT_TIMEOUT))
    initialize_timeout = float(entry.get("initialize_timeout_sec", DEFAULT_INITIALIZE_TIMEOUT))
    chosen = [value for value in (url, program, registry) if value is not None]
    if len(chosen) != 1:
        choices = "url or program" if registry is None else "url, program, or registry"
        raise _protocol_error(f"environment `{environment_id}` must set exactly one of {choices}")
    if url is not None:
        url = validate_websocket_url(url)
        bearer = entry.get("auth_bearer_token")
        if bearer is not None:
            _check_bearer_header(url, bearer)
        return WebSocketSpec(environment_id, url, connect_timeout, initialize_timeout, bearer)
    if program is not None:
        program = program.strip()
        if not program:
            raise _protocol_error(f"environment `{environment_id}` program cannot be empty")
        return StdioSpec(
            environment_id,
            program,
            tuple(entry.get("args", ())),
            dict(entry.get("env", {})),
            _stdio_cwd(environment_id, entry.get("cwd"), config_dir),
            initialize_timeout,
        )
    assert registry is not None
    return _registry_spec(
        environment_id, registry, entry, config_dir, connect_timeout, initialize_timeout
    )


def validate_websocket_url(url: str) -> str:
    url = url.strip()
    if not url:
        raise _protocol_error("environment url cannot be empty")
    if not url.startswith(("ws://", "wss://")):
        raise _protocol_error(f"environment url `{url}` must use ws:// or wss://")
    problem = _url_problem(url)
    if problem is not None:
        raise _protocol_error(f"environment url `{url}` is invalid: {problem}")
    return url


def _url_problem(url: str) -> str | None:
    """Why a client request could not be built for ``url`` (None when it can), in the
    words of the HTTP URI parser Codex uses."""
    from urllib.parse import urlsplit

    if any(not 33 <= ord(ch) < 127 or ch in '"<>\\^`{|}' for ch in url):
        return "HTTP format error: invalid uri character"
    if not urlsplit(url).netloc:
        return "HTTP format error: empty string"
    return None


def _check_bearer_header(url: str, token: str) -> None:
    import ipaddress
    from urllib.parse import urlsplit

    host = urlsplit(url).hostname or ""
    try:
        loopback = host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = False
    if not url.startswith("wss://") and not loopback:
        raise _protocol_error(
            "exec-server WebSocket headers require wss:// or a loopback destination"
        )
    if any(not (ch == "\t" or 32 <= ord(ch) < 127) for ch in f"Bearer {token}"):
        raise _protocol_error("invalid value for exec-server WebSocket header `authorization`")


def _stdio_cwd(environment_id: str, cwd: str | None, config_dir: Path | None) -> str | None:
    if cwd is None:
        return None
    if os.path.isabs(cwd):
        return cwd
    if config_dir is None:
        raise _protocol_error(f"environment `{environment_id}` cwd must be absolute")
    return str(config_dir / cwd)


def _registry_spec(
    environment_id: str,
    registry: str,
    entry: Mapping[str, Any],
    config_dir: Path | None,
    connect_timeout: float,
    initialize_timeout: float,
) -> RegistrySpec:
    registry = registry.strip()
    if not registry.startswith(("http://", "https://")) or _url_problem(registry) is not None:
        raise _protocol_error(
            f"environment `{environment_id}` registry `{registry}` must be an http:// or "
            "https:// URL"
        )
    remote_id = entry.get("environment_id", environment_id).strip()
    if not _ID_CHARS.fullmatch(remote_id) or len(remote_id) > MAX_ENVIRONMENT_ID_LEN:
        raise _protocol_error(
            f"environment `{environment_id}` environment_id `{remote_id}` must be 1-64 ASCII "
            "letters, numbers, '-' or '_'"
        )
    token_env, token_file = entry.get("token_env"), entry.get("token_file")
    if token_env is not None and token_file is not None:
        raise _protocol_error(
            f"environment `{environment_id}` must set at most one of token_env or token_file"
        )
    if token_env is not None and not _ENV_VAR_NAME.fullmatch(token_env):
        raise _protocol_error(
            f"environment `{environment_id}` token_env `{token_env}` is not a variable name"
        )
    if token_file is not None and not os.path.isabs(token_file):
        if config_dir is None:
            raise _protocol_error(f"environment `{environment_id}` token_file must be absolute")
        token_file = str(config_dir / token_file)
    return RegistrySpec(
        environment_id,
        registry.rstrip("/"),
        remote_id,
        token_env,
        token_file,
        connect_timeout,
        initialize_timeout,
    )


def _default_id(default: str | None, include_local: bool, ids: set[str]) -> str | None:
    if default is None:
        return LOCAL_ENVIRONMENT_ID if include_local else None
    default = default.strip()
    if not default:
        raise _protocol_error("default environment id cannot be empty")
    if default.lower() == "none":
        return None
    if default not in ids:
        raise _protocol_error(f"default environment `{default}` is not configured")
    return default
