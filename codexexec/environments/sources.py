"""Where the harness's environments come from, in Codex 0.169's order of precedence.

1. ``CODEX_EXEC_SERVER_NOISE_REGISTRY_URL``, ``…_ENVIRONMENT_ID`` and ``…_AUTH_TOKEN``, as
   orchestrators set them for a Codex harness: one environment ``remote`` behind that
   registry, the default, and no local one.
2. codexexec's ``environments.toml``, when it exists.
3. ``CODEX_EXEC_SERVER_URL``: unset, the local environment only; ``none``, no environment
   at all; anything else, one websocket environment ``remote`` (the default, no local one).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

from codexexec.environments.config import (
    EnvironmentConfigError,
    EnvironmentsConfig,
    RegistrySpec,
    WebSocketSpec,
    config_path,
    load_config,
)

NOISE_REGISTRY_URL_ENV = "CODEX_EXEC_SERVER_NOISE_REGISTRY_URL"
NOISE_ENVIRONMENT_ID_ENV = "CODEX_EXEC_SERVER_NOISE_ENVIRONMENT_ID"
NOISE_AUTH_TOKEN_ENV = "CODEX_EXEC_SERVER_NOISE_AUTH_TOKEN"
NOISE_ACCOUNT_ID_ENV = "CODEX_EXEC_SERVER_NOISE_CHATGPT_ACCOUNT_ID"
EXEC_SERVER_URL_ENV = "CODEX_EXEC_SERVER_URL"
REMOTE_ENVIRONMENT_ID = "remote"
# Codex's words when only some of the three are set.
_PARTIAL_NOISE = (
    "environment registry configuration error: Noise environment requires "
    f"{NOISE_REGISTRY_URL_ENV}, {NOISE_ENVIRONMENT_ID_ENV}, and {NOISE_AUTH_TOKEN_ENV}"
)


def load_environments(
    environ: Mapping[str, str] | None = None, path: Path | None = None
) -> EnvironmentsConfig:
    env = os.environ if environ is None else environ

    def value(name: str) -> str:
        return env.get(name, "").strip()  # Codex trims, and an empty value counts as unset

    noise = [value(name) for name in (NOISE_REGISTRY_URL_ENV, NOISE_ENVIRONMENT_ID_ENV)]
    token = value(NOISE_AUTH_TOKEN_ENV)
    if any(noise) or token:
        if not (all(noise) and token):
            raise EnvironmentConfigError(_PARTIAL_NOISE)
        registry, environment_id = noise
        spec = RegistrySpec(
            REMOTE_ENVIRONMENT_ID,
            registry,
            environment_id,
            token_env=NOISE_AUTH_TOKEN_ENV,
            account_id=value(NOISE_ACCOUNT_ID_ENV) or None,
        )
        return EnvironmentsConfig(
            default=REMOTE_ENVIRONMENT_ID,
            include_local=False,
            environments=(spec,),
            origin=f"{NOISE_REGISTRY_URL_ENV} and the other Noise variables",
        )
    path = path or config_path(environ)
    config = load_config(path)
    if config.path is not None:
        return config
    url = value(EXEC_SERVER_URL_ENV)
    if not url:
        return config
    origin = EXEC_SERVER_URL_ENV
    if url.lower() == "none":
        return EnvironmentsConfig(default=None, include_local=False, origin=origin)
    return EnvironmentsConfig(
        default=REMOTE_ENVIRONMENT_ID,
        include_local=False,
        environments=(WebSocketSpec(REMOTE_ENVIRONMENT_ID, url),),
        origin=origin,
    )
