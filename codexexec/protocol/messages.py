"""Typed params of the exec-server methods, as Codex names and defaults them.

Decoding through these structs is the validation: a wrong type or a missing field
becomes a -32602 error carrying msgspec's explanation and the JSON path.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal, TypeVar, get_args, get_origin, get_type_hints

import msgspec

from codexexec.protocol.errors import ProtocolError
from codexexec.protocol.jsonrpc import INTERNAL_ERROR, INVALID_PARAMS, RpcError

P = TypeVar("P")
Unsigned = Annotated[int, msgspec.Meta(ge=0)]


class _Params(msgspec.Struct, rename="camel", forbid_unknown_fields=False):
    pass


class EnvPolicy(_Params):
    """Codex's shell-environment policy for building a child's environment."""

    inherit: Literal["all", "core", "none"] = "all"
    ignore_default_excludes: bool = False
    exclude: list[str] = []
    set: dict[str, str] = {}
    include_only: list[str] = []


class NoParams(_Params, forbid_unknown_fields=True):
    """Unit params: absent, null or ``{}``."""


class InitializeParams(_Params):
    client_name: str
    resume_session_id: str | None = None


class ManagedNetworkParams(_Params):
    """Codex's ManagedNetworkSandboxContext: the proxy ports a sandbox must admit."""

    loopback_ports: list[Annotated[int, msgspec.Meta(ge=1, le=65535)]] = []
    allow_local_binding: bool = False


class StartParams(_Params):
    process_id: str
    argv: list[str]
    cwd: str
    env: dict[str, str]
    tty: bool
    arg0: str | None = None
    pipe_stdin: bool = False
    env_policy: EnvPolicy | None = None
    metadata: dict[str, Any] | None = None
    sandbox: Any = None
    enforce_managed_network: bool = False
    managed_network: ManagedNetworkParams | None = None
    network_proxy: Any = None
    shell_snapshot: Any = None

    def __post_init__(self) -> None:
        # What the OS cannot take is refused before anything runs, in Codex 0.169's words
        # and codes (docs/codex-0.169-observed.md §7).
        if any("\0" in arg for arg in self.argv) or (self.arg0 is not None and "\0" in self.arg0):
            raise RpcError(INTERNAL_ERROR, "nul byte found in provided data")
        variables = [*self.env.items(), *(self.env_policy.set.items() if self.env_policy else ())]
        if any("\0" in name or "\0" in value for name, value in variables):
            raise RpcError(INTERNAL_ERROR, "data provided contains a nul byte")
        for name, _ in variables:
            if "=" in name:
                # Codex 0.169 passes such a name on, where it becomes part of the value of
                # another variable; refusing it is clearer.
                raise RpcError(INVALID_PARAMS, f"env variable name `{name}` contains `=`")


class ReadParams(_Params):
    process_id: str
    after_seq: Unsigned | None = None
    max_bytes: Unsigned | None = None
    wait_ms: Unsigned | None = None


class WriteParams(_Params):
    process_id: str
    chunk: str
    write_id: str
    # codexexec extension (capability `stdinClose`): end the child's piped stdin after
    # this chunk, so a command reading to end of input can finish.
    close_stdin: bool = False


class SignalParams(_Params):
    process_id: str
    signal: Literal["interrupt"]


class TerminateParams(_Params):
    process_id: str


class TerminalSize(_Params):
    rows: Annotated[int, msgspec.Meta(ge=1, le=65535)]
    cols: Annotated[int, msgspec.Meta(ge=1, le=65535)]


class ResizePtyParams(_Params):
    """codexexec extension (capability `ptyResize`): Codex 0.169.0 reserves the method name
    `process/resizePty` and answers -32601 to it."""

    process_id: str
    size: TerminalSize


class HttpHeader(_Params):
    """One request header; ``valueEnvVar`` appends an executor environment value to ``value``."""

    name: str
    value: str
    value_env_var: str | None = None


class HttpRequestParams(_Params):
    method: str
    url: str
    request_id: str
    headers: list[HttpHeader] = []
    body_base64: str | None = None
    timeout_ms: Unsigned | None = None
    redirect_policy: Literal["follow", "stop"] = "follow"
    stream_response: bool = False


class EnvironmentConfigReadParams(_Params):
    cwd: str
    config_paths: list[list[str]]
    requirements_paths: list[list[str]]


class ParamsError(ProtocolError, ValueError):
    """Params that do not decode; the message reads like Codex's (serde) wording."""


_MISSING = re.compile(r"Object missing required field `([^`]+)`")
_ENUM = re.compile(r"Invalid enum value (.+?) - at `\$\.(\w+)`")
_NEGATIVE = re.compile(r"Expected `int` >= 0")


def decode_params(params: Any, kind: type[P]) -> P:
    """Decode params into ``kind``; raise ParamsError with a serde-like message.

    Missing params count as ``{}``, as Codex retries unit-typed params with null.
    """
    try:
        return msgspec.convert(params if params is not None else {}, kind)
    except msgspec.ValidationError as exc:
        raise ParamsError(_serde_wording(str(exc), kind)) from None


def _serde_wording(message: str, kind: type[Any]) -> str:
    if message.startswith("Object contains unknown field"):
        return "invalid type: map, expected unit"
    if match := _MISSING.match(message):
        return f"missing field `{match.group(1)}`"
    if _NEGATIVE.match(message):
        return "invalid number"
    if match := _ENUM.match(message):
        value = match.group(1).strip("'\"")
        hint = get_type_hints(kind).get(_snake(match.group(2)))
        allowed = [str(a) for a in get_args(hint)] if get_origin(hint) is Literal else []
        if len(allowed) == 1:
            return f"unknown variant `{value}`, expected `{allowed[0]}`"
        if len(allowed) == 2:
            return f"unknown variant `{value}`, expected `{allowed[0]}` or `{allowed[1]}`"
        if allowed:
            listed = ", ".join(f"`{a}`" for a in allowed)
            return f"unknown variant `{value}`, expected one of {listed}"
    return f"invalid params: {message}"


def _snake(camel: str) -> str:
    return re.sub(r"(?<!^)(?=[A-Z])", "_", camel).lower()
