"""`exec -e KEY=VAL` and `--env-file FILE`: variables set for the command, as docker reads
them. ``KEY`` alone takes this shell's value (and is skipped when it has none); an env file
holds one ``KEY=VAL`` or ``KEY`` a line, with blank lines and ``#`` comments; values are
taken verbatim (no quotes, no expansion). Later settings win, files before flags."""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from codexexec.cli.errors import CliError


class EnvVarError(CliError, ValueError):
    """A setting that cannot be passed on; the text names it and why."""


def parse_settings(
    files: Iterable[tuple[str, str]], flags: Iterable[str], environ: Mapping[str, str]
) -> dict[str, str]:
    """``files``: (path, text) of each --env-file; ``flags``: each -e value."""
    result: dict[str, str] = {}
    for path, text in files:
        for number, line in enumerate(text.splitlines(), start=1):
            if line.strip() and not line.lstrip().startswith("#"):
                _apply(result, line, f"{path}:{number}", environ)
    for flag in flags:
        _apply(result, flag, "-e", environ)
    return result


def _apply(result: dict[str, str], setting: str, where: str, environ: Mapping[str, str]) -> None:
    name, equals, value = setting.partition("=")
    if not equals:
        name = name.strip()
    if not name or any(ch in name for ch in "\0 \t") or "\0" in value:
        raise EnvVarError(
            f"{where}: `{setting[:80]}` is not KEY=VAL (a name without spaces, `=`, or NUL)"
        )
    if equals:
        result[name] = value
    elif name in environ:
        result[name] = environ[name]
