"""`codexexec exec`: run one command on an environment and mirror it here."""

from __future__ import annotations

import enum

import typer


class SandboxMode(enum.StrEnum):
    read_only = "read-only"
    workspace_write = "workspace-write"
    danger_full_access = "danger-full-access"


class Approval(enum.StrEnum):
    on_failure = "on-failure"
    never = "never"


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
    sandbox: SandboxMode = typer.Option(
        SandboxMode.workspace_write,
        "--sandbox",
        help="What the command may touch; the executor enforces it with its own OS sandbox.",
    ),
    writable_root: list[str] = typer.Option(
        [], "--writable-root", help="Another writable directory (repeatable)."
    ),
    approval: Approval | None = typer.Option(
        None,
        "--approval",
        help="on-failure: offer to re-run a sandbox-denied command without the sandbox "
        "(default when stdin is a terminal); never: just report the denial.",
    ),
) -> None:
    """Run ARGV on an environment; exit with its exit code."""
    import asyncio

    from codexexec.logs import configure_client_logging

    configure_client_logging()
    import sys

    from codexexec.cli.errors import fail
    from codexexec.cli.session import ExecOptions, run_exec

    if detach and env == "local":
        fail(
            "--detach needs a server environment (--env ws://…): "
            "the local environment ends with this command",
            2,
        )
    if approval is None:
        approval = Approval.on_failure if sys.stdin.isatty() and not json_mode else Approval.never
    options = ExecOptions(
        argv=argv,
        cwd=cd,
        tty=tty,
        detach=detach,
        json_mode=json_mode,
        sandbox=sandbox.value,
        writable_roots=writable_root,
        ask=approval is Approval.on_failure,
    )
    try:
        code = asyncio.run(run_exec(env, options))
    except KeyboardInterrupt:
        code = 130
    raise SystemExit(code)
