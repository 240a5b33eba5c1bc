"""Typed params of the exec-server methods, as Codex names and defaults them.

Decoding through these structs is the validation: a wrong type or a missing field
becomes a -32602 error carrying msgspec's explanation and the JSON path.
"""

from __future__ import annotations

from typing import Any, Literal

import msgspec


class _Params(msgspec.Struct, rename="camel", forbid_unknown_fields=False):
    pass


class EnvPolicy(_Params):
    """Codex's shell-environment policy for building a child's environment."""

    inherit: Literal["all", "core", "none"] = "all"
    ignore_default_excludes: bool = False
    exclude: list[str] = []
    set: dict[str, str] = {}
    include_only: list[str] = []


class InitializeParams(_Params):
    client_name: str
    resume_session_id: str | None = None


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
    managed_network: Any = None
    network_proxy: Any = None
    shell_snapshot: Any = None


class ReadParams(_Params):
    process_id: str
    after_seq: int | None = None
    max_bytes: int | None = None
    wait_ms: int | None = None


class WriteParams(_Params):
    process_id: str
    chunk: str
    write_id: str


class SignalParams(_Params):
    process_id: str
    signal: Literal["interrupt"]


class TerminateParams(_Params):
    process_id: str
