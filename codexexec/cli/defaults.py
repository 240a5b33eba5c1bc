"""`[defaults]` in codexexec's `config.toml` (next to `environments.toml`): what `exec`
uses when a flag is not given — a flag always wins::

    [defaults]
    sandbox = "read-only"        # read-only | workspace-write | danger-full-access
    approval = "never"           # on-failure | never
    network = "proxy"            # off | proxy | on
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from codexexec.cli.errors import CliError

CONFIG_FILE = "config.toml"
CHOICES: dict[str, tuple[str, ...]] = {
    "sandbox": ("read-only", "workspace-write", "danger-full-access"),
    "approval": ("on-failure", "never"),
    "network": ("off", "proxy", "on"),
}


class DefaultsError(CliError, ValueError):
    """The file cannot be used; the text names the file and the setting."""


def parse_defaults(text: str, source: str) -> dict[str, str]:
    import tomllib  # here: without a config file nothing is parsed

    try:
        document = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise DefaultsError(f"{source} is not valid TOML: {exc}") from None
    table = document.get("defaults", {})
    if not isinstance(table, dict):
        raise DefaultsError(f"{source}: [defaults] must be a table")
    for key, value in table.items():
        if key not in CHOICES:
            raise DefaultsError(
                f"{source}: unknown setting defaults.{key} (known: {', '.join(CHOICES)})"
            )
        if value not in CHOICES[key]:
            raise DefaultsError(
                f"{source}: defaults.{key} = {value!r}: use one of {', '.join(CHOICES[key])}"
            )
    return dict(table)


def load_defaults(environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """The `[defaults]` of the config file; none when there is no file."""
    from codexexec.environments.config import config_dir

    path: Path = config_dir(environ) / CONFIG_FILE
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return {}
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) else "not UTF-8 text"
        raise DefaultsError(f"cannot read {path}: {reason}") from None
    return parse_defaults(text, str(path))
