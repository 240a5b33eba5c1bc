"""What a user may name as an environment on the command line, besides a configured id.

``ws://HOST:PORT`` (or ``wss://``) is an exec-server reached directly, and
``ENV@http(s)://REGISTRY`` is environment ENV behind that registry, with the bearer from
``CODEXEXEC_REGISTRY_TOKEN``. Both get Codex's default timeouts.
"""

from __future__ import annotations

from codexexec.client.errors import ExecServerError
from codexexec.environments.config import (
    MAX_ENVIRONMENT_ID_LEN,
    EnvironmentConfigError,
    EnvironmentsConfig,
    EnvironmentSpec,
    RegistrySpec,
    WebSocketSpec,
    validate_websocket_url,
)


def spec_for_target(target: str, config: EnvironmentsConfig | None) -> EnvironmentSpec:
    if target.startswith(("ws://", "wss://")):
        try:
            return WebSocketSpec(target, validate_websocket_url(target))
        except EnvironmentConfigError as exc:
            raise ExecServerError(str(exc)) from None
    environment_id, at, registry = target.partition("@")
    if at and registry.startswith(("http://", "https://")):
        if not environment_id or len(environment_id) > MAX_ENVIRONMENT_ID_LEN:
            raise ExecServerError(f"`{target}` names no environment before the `@`")
        return RegistrySpec(target, registry.rstrip("/"), environment_id)
    known = [spec.id for spec in config.environments] if config is not None else []
    where = f" in {config.path}" if config is not None and config.path is not None else ""
    listed = f" (configured: {', '.join(known)})" if known else ""
    raise ExecServerError(
        f"unknown environment `{target}`{where}{listed}: expected `local`, a configured "
        "environment, a ws:// URL or ENV@REGISTRY_URL"
    )
