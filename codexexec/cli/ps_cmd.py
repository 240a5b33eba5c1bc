"""`codexexec ps` and `codexexec kill`: the processes `exec --detach` started, as docker's
`ps` and `kill` show and stop containers. The record of what was started is the CLI's
(`detached.py`); each process's state comes from its server, asked through its handle."""

from __future__ import annotations

import enum

import typer


class StopSignal(enum.StrEnum):
    interrupt = "interrupt"
    terminate = "terminate"


def ps(
    env: str | None = typer.Option(
        None, "--env", help="Only processes on this environment (as `exec --env` names it)."
    ),
    json_mode: bool = typer.Option(False, "--json", help="One JSON object per process."),
) -> None:
    """Processes started with `exec --detach`: handle, state, exit code, age, command.

    Each environment is asked about its own; a process its server no longer knows is shown
    as gone once, then forgotten.
    """
    import asyncio

    from codexexec.logs import configure_client_logging

    configure_client_logging()
    from codexexec.cli.ps_report import report

    raise SystemExit(asyncio.run(report(env, json_mode)))


def kill(
    handle: str = typer.Argument(..., help="The handle `exec --detach` printed (see `ps`)."),
    signal: StopSignal = typer.Option(
        StopSignal.terminate,
        "--signal",
        "-s",
        help="interrupt (as Ctrl-C would) or terminate (the default: the process group ends).",
    ),
) -> None:
    """Stop a process `exec --detach` started."""
    import asyncio

    from codexexec.logs import configure_client_logging

    configure_client_logging()
    from codexexec.cli.ps_report import stop

    raise SystemExit(asyncio.run(stop(handle, signal is StopSignal.interrupt)))
