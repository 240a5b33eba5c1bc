"""`codexexec exec`: run one command on an environment and mirror it here."""

from __future__ import annotations

import typer


def exec_command(
    argv: list[str] = typer.Argument(..., metavar="-- ARGV...", help="The command to run."),
    env: str = typer.Option(
        "local", "--env", help="local (in this process) or an exec-server ws:// URL."
    ),
    cd: str | None = typer.Option(None, "--cd", help="Working directory on the executor host."),
    tty: bool = typer.Option(False, "--tty", help="Run in a pseudo-terminal; forward stdin."),
    detach: bool = typer.Option(
        False, "--detach", help="Print the process handle and return at once."
    ),
    json_mode: bool = typer.Option(False, "--json", help="Print JSON Lines events."),
) -> None:
    """Run ARGV on an environment; exit with its exit code."""
    import asyncio

    from codexexec.cli.errors import fail
    from codexexec.cli.session import run_exec

    if detach and env == "local":
        fail(
            "--detach needs a server environment (--env ws://…): "
            "the local environment ends with this command",
            2,
        )
    try:
        code = asyncio.run(
            run_exec(env=env, argv=argv, cwd=cd, tty=tty, detach=detach, json_mode=json_mode)
        )
    except KeyboardInterrupt:
        code = 130
    raise SystemExit(code)
