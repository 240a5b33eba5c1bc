"""`codexexec fs cat|ls|put|get ENV:PATH`: files on an environment, for people.

ENV is what `exec --env` takes (a configured environment, `local`, a ws:// URL or
ENV@REGISTRY_URL); `--registry URL` reaches ENV through that registry's relay, and a
bare /PATH means the configured default environment.
"""

from __future__ import annotations

from collections.abc import Coroutine
from typing import Any

import typer

from codexexec.cli.completion import complete_target

app = typer.Typer(
    name="fs",
    help="Files on an environment, named ENV:PATH (devbox:/tmp, ws://127.0.0.1:4000:/etc).",
    no_args_is_help=True,
    epilog="""\b
Examples:
  codexexec fs ls devbox:/srv/app
  codexexec fs get -r devbox:/srv/app/logs ./logs
  codexexec fs put ./config.toml devbox:/srv/app/config.toml
  codexexec fs cat ws://127.0.0.1:4000:/etc/hostname""",
)

_TARGET = "ENV:PATH on the executor (ENV as for `exec --env`; a bare /PATH: the default)."
_REGISTRY = "Registry URL: reach ENV through its relay."


def _run(command: Coroutine[Any, Any, int]) -> None:
    import asyncio

    from codexexec.logs import configure_client_logging

    configure_client_logging()
    try:
        code = asyncio.run(command)
    except KeyboardInterrupt:
        code = 130
    raise SystemExit(code)


@app.command("cat")
def cat(
    target: str = typer.Argument(
        ..., metavar="ENV:PATH", help=_TARGET, autocompletion=complete_target
    ),
    registry: str | None = typer.Option(None, "--registry", help=_REGISTRY),
) -> None:
    """Write a file's bytes to stdout."""
    from codexexec.cli.fs_session import parse_target, run_cat

    _run(run_cat(parse_target(target, registry)))


@app.command("ls")
def ls(
    target: str = typer.Argument(
        ..., metavar="ENV:PATH", help=_TARGET, autocompletion=complete_target
    ),
    registry: str | None = typer.Option(None, "--registry", help=_REGISTRY),
    json_mode: bool = typer.Option(False, "--json", help="One JSON object per entry."),
) -> None:
    """List a directory (or describe a file): name, type, size, modified."""
    from codexexec.cli.fs_session import parse_target, run_ls

    _run(run_ls(parse_target(target, registry), json_mode=json_mode))


@app.command("get")
def get(
    target: str = typer.Argument(
        ..., metavar="ENV:PATH", help=_TARGET, autocompletion=complete_target
    ),
    local: str | None = typer.Argument(
        None, metavar="[LOCAL]", help="Where to write it: a file or directory here; - for stdout."
    ),
    registry: str | None = typer.Option(None, "--registry", help=_REGISTRY),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar."),
    recursive: bool = typer.Option(
        False, "--recursive", "-r", help="Copy a directory and what is under it."
    ),
) -> None:
    """Copy a file (or, with -r, a directory) from the executor here (a progress bar above
    1 MiB)."""
    from codexexec.cli.fs_session import parse_target, run_get

    parsed = parse_target(target, registry)
    if recursive:
        from codexexec.cli.fs_tree import run_get_tree

        if local == "-":
            from codexexec.cli.errors import fail

            fail("fs get -r writes files, not stdout: name a directory here", 2)
        _run(run_get_tree(parsed, local, quiet=quiet))
    _run(run_get(parsed, local, quiet=quiet))


@app.command("put")
def put(
    local: str = typer.Argument(..., metavar="LOCAL", help="A file here; - for stdin."),
    target: str = typer.Argument(
        ..., metavar="ENV:PATH", help=_TARGET, autocompletion=complete_target
    ),
    registry: str | None = typer.Option(None, "--registry", help=_REGISTRY),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar."),
    recursive: bool = typer.Option(
        False, "--recursive", "-r", help="Copy a directory and what is under it."
    ),
) -> None:
    """Copy a local file (or, with -r, a directory) to the executor, replacing what is there
    (a progress bar above 1 MiB)."""
    from codexexec.cli.fs_session import parse_target, run_put

    parsed = parse_target(target, registry)
    if recursive:
        from codexexec.cli.fs_tree import run_put_tree

        _run(run_put_tree(local, parsed, quiet=quiet))
    _run(run_put(local, parsed, quiet=quiet))


@app.command("rm")
def rm(
    target: str = typer.Argument(
        ..., metavar="ENV:PATH", help=_TARGET, autocompletion=complete_target
    ),
    registry: str | None = typer.Option(None, "--registry", help=_REGISTRY),
    recursive: bool = typer.Option(
        False, "--recursive", "-r", help="Remove a directory and what is under it."
    ),
    force: bool = typer.Option(False, "--force", "-f", help="No error when it does not exist."),
) -> None:
    """Remove a file (or, with -r, a directory) on the executor."""
    from codexexec.cli.fs_session import parse_target, run_rm

    _run(run_rm(parse_target(target, registry), recursive=recursive, force=force))


@app.command("mkdir")
def mkdir(
    target: str = typer.Argument(
        ..., metavar="ENV:PATH", help=_TARGET, autocompletion=complete_target
    ),
    registry: str | None = typer.Option(None, "--registry", help=_REGISTRY),
    parents: bool = typer.Option(
        False, "--parents", "-p", help="Make missing parents too; no error if it exists."
    ),
) -> None:
    """Make a directory on the executor."""
    from codexexec.cli.fs_session import parse_target, run_mkdir

    _run(run_mkdir(parse_target(target, registry), parents=parents))
