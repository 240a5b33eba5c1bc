"""`codexexec read`: reattach to a detached process and print its output."""

from __future__ import annotations

import typer


def read(
    handle: str = typer.Argument(..., help="The handle `exec --detach` printed."),
    follow: bool = typer.Option(False, "--follow", "-f", help="Stream until the process closes."),
    after_seq: int = typer.Option(
        0, "--after-seq", min=0, help="Only output after this sequence number."
    ),
    json_mode: bool = typer.Option(False, "--json", help="Print JSON Lines events."),
) -> None:
    """Print a detached process's retained output (and follow it)."""
    import asyncio

    from codexexec.logs import configure_client_logging

    configure_client_logging()

    from codexexec.cli.session import run_read

    try:
        code = asyncio.run(
            run_read(handle, follow=follow, after_seq=after_seq, json_mode=json_mode)
        )
    except KeyboardInterrupt:
        code = 130
    raise SystemExit(code)
