"""Where codexexec keeps state between runs (the rendezvous's database and development
token, the CLI's record of detached processes)."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path


def state_dir(environ: Mapping[str, str] | None = None) -> Path:
    """``$CODEXEXEC_HOME`` if set, else ``~/.local/state/codexexec``."""
    env = os.environ if environ is None else environ
    home = env.get("CODEXEXEC_HOME")
    if home:
        return Path(home)
    return Path.home() / ".local" / "state" / "codexexec"


def ensure_private_dir(path: Path) -> None:
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
