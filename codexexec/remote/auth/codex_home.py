"""Where Codex keeps its login: ``$CODEX_HOME`` (default ``~/.codex``) and its config."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Literal, get_args

from codexexec.remote.auth.base import AuthError

CODEX_HOME_ENV = "CODEX_HOME"
CONFIG_FILE = "config.toml"
StoreMode = Literal["file", "keyring", "auto", "ephemeral"]
STORE_SETTING = "cli_auth_credentials_store"


def codex_home(environ: Mapping[str, str] | None = None) -> Path:
    env = os.environ if environ is None else environ
    value = env.get(CODEX_HOME_ENV, "").strip()
    return Path(value).expanduser() if value else Path.home() / ".codex"


def store_mode(home: Path) -> StoreMode:
    """``cli_auth_credentials_store`` from ``config.toml`` (Codex's default: ``file``)."""
    import tomllib

    path = home / CONFIG_FILE
    try:
        with path.open("rb") as handle:
            config = tomllib.load(handle)
    except FileNotFoundError:
        return "file"
    except OSError as exc:
        raise AuthError(f"cannot read {path}: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise AuthError(f"{path} is not valid TOML ({exc}); fix or remove it") from None
    value = config.get(STORE_SETTING, "file")
    if value not in get_args(StoreMode):
        raise AuthError(f"{path}: {STORE_SETTING} must be one of file, keyring, auto, ephemeral")
    mode: StoreMode = value
    return mode
