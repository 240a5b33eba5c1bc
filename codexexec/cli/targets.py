"""How a command finds and reaches its environment (`--env NAME`, or a handle's).

A name is looked up in codexexec's environments.toml (which is read only when a name
needs it, so a broken file never gets in the way of `--env ws://…`); `local`, ws://
URLs and ENV@REGISTRY_URL work without one. Connecting shows a spinner once it takes
longer than 300 ms, and a failure is one line naming environment, step and cause.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

from codexexec.cli.errors import fail
from codexexec.cli.spinner import spinner
from codexexec.client.client import ExecServerClient
from codexexec.client.errors import ExecServerError
from codexexec.environments.config import (
    LOCAL_ENVIRONMENT_ID,
    EnvironmentConfigError,
    EnvironmentsConfig,
)
from codexexec.environments.manager import Environment, EnvironmentManager


def load_environments() -> EnvironmentsConfig:
    try:
        from codexexec.environments.sources import load_environments as load

        return load()
    except EnvironmentConfigError as exc:
        fail(str(exc))


def is_literal(target: str) -> bool:
    return (
        target == LOCAL_ENVIRONMENT_ID
        or target.startswith(("ws://", "wss://"))
        or _is_registry_literal(target)
    )


def _is_registry_literal(target: str) -> bool:
    _, at, registry = target.partition("@")
    return bool(at and registry.startswith(("http://", "https://")))


@contextlib.asynccontextmanager
async def chosen_environment(
    target: str | None, *, autostart: bool = True, token_file: str | None = None
) -> AsyncIterator[Environment]:
    """The environment ``target`` names (None: the configured default), closed afterwards.

    ``autostart=False`` when only a session will be resumed: no other session is opened.
    ``token_file``: the registry bearer of an ENV@REGISTRY_URL target.
    """
    if token_file is not None and (target is None or not _is_registry_literal(target)):
        fail(
            "--token-file is for an ENV@REGISTRY_URL (or --registry) target; a configured "
            "environment takes `token_file` in environments.toml",
            2,
        )
    config = None if target is not None and is_literal(target) else load_environments()
    if target is None:
        assert config is not None
        if config.default is None:
            fail(
                f"no default environment is configured ({config.describe_source()}): "
                "pass --env NAME",
                2,
            )
        target = config.default
    if config is None:
        manager = EnvironmentManager(autostart=autostart)
    else:
        try:
            manager = EnvironmentManager.from_config(config, only=[target], autostart=autostart)
        except ExecServerError as exc:
            fail(str(exc))
    try:
        try:
            environment = manager.resolve(target, config=config, token_file=token_file)
        except ExecServerError as exc:
            fail(str(exc))
        yield environment
    finally:
        await manager.aclose()


async def connect(
    environment: Environment, *, resume_session_id: str | None = None, lasting: bool = False
) -> ExecServerClient:
    """``lasting``: a session that outlives this command (`--detach`)."""
    try:
        async with spinner(f"connecting to {environment.id}"):
            if resume_session_id is not None:
                return await environment.resume(resume_session_id)
            if lasting:
                return await environment.lasting_client()
            return await environment.client()
    except ExecServerError as exc:
        fail(str(exc))
