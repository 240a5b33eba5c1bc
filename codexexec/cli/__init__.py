"""The `codexexec` command line. Each command lives in its own thin module.

Only Typer is imported at start-up; a command imports what it needs when it runs,
so `codexexec --help` and argument errors stay fast.
"""

from __future__ import annotations

import typer

from codexexec.cli import (
    env_cmd,
    exec_cmd,
    fs_cmd,
    login_cmd,
    read_cmd,
    register_cmd,
    rendezvous_cmd,
    sandbox_check_cmd,
    serve_cmd,
)

app = typer.Typer(
    name="codexexec",
    help="Run commands on a Codex-compatible exec-server, or be one.",
    no_args_is_help=True,
    add_completion=True,
    pretty_exceptions_enable=False,
)
app.command("serve")(serve_cmd.serve)
app.command("exec", context_settings={"allow_interspersed_args": False})(exec_cmd.exec_command)
app.command("read")(read_cmd.read)
app.command("sandbox-check")(sandbox_check_cmd.sandbox_check)
app.command("rendezvous")(rendezvous_cmd.rendezvous)
app.command("register")(register_cmd.register)
app.add_typer(env_cmd.app, name="env")
app.add_typer(fs_cmd.app, name="fs")
app.add_typer(login_cmd.app, name="login")


def main() -> None:
    app(prog_name="codexexec")
