"""`environmentConfig/read`: the executor host's own Codex config layers, cut to key paths.

config = await client.read_environment_config("/srv/project", [["mcp_servers"]])
for layer in config.config:
    print(layer.source, tomllib.loads(layer.toml))
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import msgspec


class ConfigLayer(msgspec.Struct, frozen=True):
    source: str  # e.g. "user (/root/.codex/config.toml)"; for people, not for logic
    base_dir: str  # PathUri that relative paths in the layer resolve against
    toml: str  # only the selected keys


class EnvironmentConfig(msgspec.Struct, frozen=True):
    user_home_dir: str | None
    codex_home_dir: str
    hostname: str | None
    config: list[ConfigLayer]  # lowest precedence first
    config_cloud_insertion_index: int
    requirements: list[ConfigLayer]
    requirements_cloud_insertion_index: int


async def read_environment_config(
    call: Callable[[str, Any], Awaitable[Any]],
    cwd_uri: str,
    config_paths: Sequence[Sequence[str]],
    requirements_paths: Sequence[Sequence[str]] = (),
) -> EnvironmentConfig:
    result = await call(
        "environmentConfig/read",
        {
            "cwd": cwd_uri,
            "configPaths": [list(p) for p in config_paths],
            "requirementsPaths": [list(p) for p in requirements_paths],
        },
    )
    return EnvironmentConfig(
        user_home_dir=result.get("userHomeDir"),
        codex_home_dir=str(result["codexHomeDir"]),
        hostname=result.get("hostname"),
        config=_layers(result["config"]),
        config_cloud_insertion_index=int(result["config"]["cloudInsertionIndex"]),
        requirements=_layers(result["requirements"]),
        requirements_cloud_insertion_index=int(result["requirements"]["cloudInsertionIndex"]),
    )


def _layers(stack: dict[str, Any]) -> list[ConfigLayer]:
    return [
        ConfigLayer(str(layer["source"]), str(layer["baseDir"]), str(layer["toml"]))
        for layer in stack.get("layers", [])
    ]
