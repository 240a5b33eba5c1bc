"""Shell completion of environment names (`--env NAME`, `ENV:PATH`), from the same
configuration `exec` reads. A configuration that cannot be read completes nothing: a
completion never prints an error into the user's command line."""

from __future__ import annotations


def environment_names() -> list[str]:
    from codexexec.environments.config import LOCAL_ENVIRONMENT_ID, EnvironmentConfigError
    from codexexec.environments.sources import load_environments

    try:
        config = load_environments()
    except (EnvironmentConfigError, OSError, ValueError):
        return [LOCAL_ENVIRONMENT_ID]
    names = [spec.id for spec in config.environments]
    return ([LOCAL_ENVIRONMENT_ID] if config.include_local else []) + names


def complete_environment(incomplete: str) -> list[str]:
    """For `--env`."""
    return [name for name in environment_names() if name.startswith(incomplete)]


def complete_target(incomplete: str) -> list[str]:
    """For `ENV:PATH`: the environment part, then `:` (a path is the shell's own business)."""
    if ":" in incomplete:
        return []
    return [f"{name}:" for name in environment_names() if name.startswith(incomplete)]
