"""`codexexec sandbox-check`: what this host's sandbox really enforces."""

from __future__ import annotations

import typer


def sandbox_check(
    json_mode: bool = typer.Option(False, "--json", help="Print the report as JSON."),
) -> None:
    """Probe this host's sandbox backends for real; exit 0 only if the default one enforces all."""
    import sys

    from codexexec.logs import configure_client_logging

    configure_client_logging()
    if not sys.platform.startswith("linux"):
        from codexexec.cli.errors import fail

        fail("sandbox-check probes Linux backends; this host is not Linux", 2)
    from codexexec.cli.render import emit_json
    from codexexec.cli.sandbox_probes import run_check

    report = run_check()
    if json_mode:
        emit_json(report.to_json())
    else:
        _render(report)
    raise SystemExit(0 if report.enforced else 1)


def _render(report: object) -> None:
    import sys

    from rich.console import Console
    from rich.table import Table

    from codexexec.sandbox.linux.check import Finding, Report

    assert isinstance(report, Report)
    # Piped output keeps every word of every fix instead of rich's 80-column guess.
    console = Console(width=None if sys.stdout.isatty() else 160)

    def table(title: str, findings: list[Finding]) -> Table:
        grid = Table(title=title, title_justify="left", expand=False)
        for column in ("check", "status", "detail", "fix"):
            grid.add_column(column, overflow="fold")
        for f in findings:
            status = "[green]ok[/]" if f.ok else "[red]FAIL[/]"
            grid.add_row(f.check, status, f.detail, f.fix)
        return grid

    console.print(table("Host", report.host))
    for backend, findings in report.probes.items():
        marker = " (default)" if backend == report.default_backend else ""
        console.print(table(f"Probes under {backend}{marker}", findings))
    if report.default_backend is None:
        console.print("[red]No sandbox backend works here: sandboxed commands will be refused.[/]")
    elif report.enforced:
        console.print(f"[green]{report.default_backend} enforces every probe.[/]")
    else:
        console.print(f"[red]{report.default_backend} does not enforce every probe.[/]")
