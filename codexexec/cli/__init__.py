"""The `codexexec` command line. Each command lives in its own thin module.

Only Typer is imported at start-up, and only the command named on the command line is
loaded and built (all of them for top-level help and shell completion); a command imports
what it needs when it runs, so `codexexec --help` and argument errors stay fast.
"""

from __future__ import annotations

import importlib
from typing import Any

import typer

EXAMPLES = """\b
Examples:
  codexexec exec -- make test                  run in this machine's sandbox
  codexexec exec --env devbox -- uname -a      run on a configured environment
  codexexec exec --env ws://127.0.0.1:4000 -- ls
  codexexec serve --listen ws://127.0.0.1:4000 be an exec-server
  codexexec fs get devbox:/var/log/app.log .   copy a file from an environment
  codexexec sandbox-check                      what confines commands here

\b
Exit codes: a command's own, or 125 (codexexec failed), 126 (not executable),
127 (not found), 2 (usage). `codexexec COMMAND -h` for each command's options."""


def _version(value: bool) -> None:
    if value:
        from codexexec import __version__

        print(f"codexexec {__version__}")
        raise typer.Exit()


# name -> (module in codexexec.cli, the function, extra settings of `app.command`).
_COMMANDS: dict[str, tuple[str, str, dict[str, Any]]] = {
    "serve": ("serve_cmd", "serve", {}),
    "exec": ("exec_cmd", "exec_command", {"context_settings": {"allow_interspersed_args": False}}),
    "read": ("read_cmd", "read", {}),
    "ps": ("ps_cmd", "ps", {}),
    "kill": ("ps_cmd", "kill", {}),
    "sandbox-check": ("sandbox_check_cmd", "sandbox_check", {}),
    "rendezvous": ("rendezvous_cmd", "rendezvous", {}),
    "register": ("register_cmd", "register", {}),
}
# name -> module whose `app` is a group of subcommands.
_GROUPS = {"env": "env_cmd", "fs": "fs_cmd", "login": "login_cmd"}


def _root(
    version: bool = typer.Option(
        False, "--version", "-V", callback=_version, is_eager=True, help="Print the version."
    ),
) -> None:
    """Run commands on a Codex-compatible exec-server, or be one."""


def build_app(only: str | None = None) -> typer.Typer:
    """The command tree: every command, or just ``only`` (what this run invokes)."""
    app = typer.Typer(
        name="codexexec",
        help="Run commands on a Codex-compatible exec-server, or be one.",
        epilog=EXAMPLES,
        no_args_is_help=True,
        add_completion=True,
        pretty_exceptions_enable=False,
        # Plain help, as git and docker print it: no markup to lose, and no rich to import.
        rich_markup_mode=None,
        context_settings={"help_option_names": ["-h", "--help"]},
    )
    app.callback()(_root)
    for name, (module_name, function, settings) in _COMMANDS.items():
        if only in (None, name):
            module = importlib.import_module(f"codexexec.cli.{module_name}")
            epilog = getattr(module, "EXAMPLES", None) if name == "exec" else None
            app.command(name, epilog=epilog, **settings)(getattr(module, function))
    for name, module_name in _GROUPS.items():
        if only in (None, name):
            module = importlib.import_module(f"codexexec.cli.{module_name}")
            app.add_typer(module.app, name=name)
    return app


def _invoked(argv: list[str]) -> str | None:
    """The command this run names, when it names one; None for everything else (top-level
    help, errors, and shell completion, which needs every name)."""
    import os

    if "_CODEXEXEC_COMPLETE" in os.environ:
        return None
    for arg in argv:
        if arg in ("-h", "--help", "--version"):  # before any command: the top level's
            return None
        if not arg.startswith("-"):
            return arg if arg in _COMMANDS or arg in _GROUPS else None
    return None


def main() -> None:
    """Run the CLI. Local I/O that fails (stdout on a full disk or a closed pipe, a file that
    cannot be written) ends it with one line on stderr, never a traceback."""
    import sys

    from codexexec.cli.errors import EXIT_FAILURE, CliError

    try:
        command = typer.main.get_command(build_app(_invoked(sys.argv[1:])))
        _name_values(command)
        command.main(prog_name="codexexec")
        code: int | str | None = 0
    except SystemExit as stop:
        code = stop.code
    except OSError as exc:
        code = _local_io_failed(exc)
    except CliError as exc:  # one the command meant to report but did not catch itself
        sys.stderr.write(f"codexexec: error: {exc}\n")
        code = EXIT_FAILURE
    except Exception as exc:  # a bug: one line, the traceback only when asked for
        import os

        if os.environ.get("CODEXEXEC_TRACEBACK"):
            raise
        sys.stderr.write(
            f"codexexec: error: internal error ({type(exc).__name__}); "
            "run again with CODEXEXEC_TRACEBACK=1 to see where, and report it\n"
        )
        code = 125
    try:
        if sys.stdout is not None:  # None: started with descriptor 1 closed
            sys.stdout.flush()
    except OSError as exc:
        code = _local_io_failed(exc) if code in (0, None) else code
    _exit_now(code)


def _exit_now(code: int | str | None) -> None:
    """End the process as SystemExit would, but without tearing down every module and
    object one by one (≈10 ms of each command): the work is done and flushed, and what
    was registered with atexit (log handlers, temporary files) still runs. Threads are not
    joined: the CLI's own are daemons, and asyncio.run has shut its executor down."""
    import atexit
    import contextlib
    import os
    import sys

    if isinstance(code, str):
        sys.stderr.write(f"{code}\n")
        code = 1
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        if stream is not None:
            with contextlib.suppress(OSError, ValueError):
                stream.flush()
    os._exit(0 if code is None else code & 0xFF)  # as the shell sees it; os._exit takes no more


# What an option's value is, in help (typer would print TEXT, INTEGER RANGE, …).
_VALUE_NAMES = {
    "--env": "NAME",
    "--registry": "URL",
    "--cd": "DIR",
    "--writable-root": "DIR",
    "--allow-domain": "DOMAIN",
    "--deny-domain": "DOMAIN",
    "--listen": "URL",
    "--network-policy": "FILE",
    "--remote": "URL",
    "--environment-id": "ID",
    "--token-file": "FILE",
    "--security-profile": "PROFILE",
    "--noise-identity-file": "FILE",
    "--ws-issuer": "ISSUER",
    "--ws-audience": "AUDIENCE",
    "--log-level": "LEVEL",
    "--db": "FILE|URL",
    "--bus": "URL",
    "--agent-keys": "FILE",
    "--forward": "URL",
    "--after-seq": "SEQ",
    "--detached-session-ttl": "SECONDS",
    "--concurrent-requests": "COUNT",
}


def _name_values(command: Any) -> None:
    """Give options without a metavar of their own the name of what they take (the command
    tree is typer's click objects, walked by their attributes)."""
    for sub in getattr(command, "commands", {}).values():
        _name_values(sub)
    for param in getattr(command, "params", ()):
        if getattr(param, "is_flag", True) or param.metavar is not None:
            continue
        for name in param.opts:
            if name in _VALUE_NAMES:
                param.metavar = _VALUE_NAMES[name]


def _local_io_failed(exc: OSError) -> int:
    import contextlib
    import os
    import sys

    from codexexec.cli.errors import EXIT_FAILURE

    reason = exc.strerror or type(exc).__name__
    where = f"cannot write `{exc.filename}`" if exc.filename else "cannot write output"
    with contextlib.suppress(OSError):
        sys.stderr.write(f"codexexec: error: {where}: {reason}\n")
        sys.stderr.flush()
    # What stdout still buffers would fail again at exit, with a traceback of its own.
    with contextlib.suppress(OSError, AttributeError, ValueError):  # stdout may be gone
        null = os.open(os.devnull, os.O_WRONLY)
        os.dup2(null, sys.stdout.fileno())
        os.close(null)
    return EXIT_FAILURE
