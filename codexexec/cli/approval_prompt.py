"""The terminal side of approve-and-retry: show why the sandbox said no, then ask."""

from __future__ import annotations

import asyncio
import shlex
from typing import TYPE_CHECKING

from codexexec.client.approval import Decision, DenialPrompt

if TYPE_CHECKING:
    from rich.table import Table

# rich is loaded only when a prompt is shown: a command that is not denied never pays for it.

_ANSWERS: dict[str, Decision] = {"y": "once", "a": "session", "n": "deny"}


def denial_table(prompt: DenialPrompt) -> Table:
    from rich.table import Table

    report = prompt.report or {}
    table = Table.grid(padding=(0, 2))
    table.add_column(style="bold")
    table.add_column()
    table.add_row("Command", shlex.join(prompt.argv))
    table.add_row("Environment", prompt.environment)
    backend = report.get("backend") or prompt.sandbox_type or "sandbox"
    table.add_row("Sandbox", str(backend))
    if report.get("reason"):
        table.add_row("Reason", str(report["reason"]).replace("_", " "))
    if report.get("path"):
        table.add_row("Path", str(report["path"]))
    table.add_row("Exit code", str(prompt.exit_code))
    if report.get("snippet"):
        table.add_row("Output", str(report["snippet"])[:300])
    return table


def denial_line(prompt: DenialPrompt) -> str:
    report = prompt.report or {}
    details = ", ".join(
        str(v) for v in (report.get("reason"), report.get("path"), report.get("backend")) if v
    )
    return f"sandbox denied `{shlex.join(prompt.argv)}`" + (f" ({details})" if details else "")


async def ask_in_terminal(prompt: DenialPrompt) -> Decision:
    from rich.console import Console
    from rich.panel import Panel
    from rich.prompt import Prompt

    console = Console(stderr=True)
    console.print(
        Panel(
            denial_table(prompt),
            title="The sandbox blocked this command",
            border_style="yellow",
            expand=False,
        )
    )
    answer = await asyncio.to_thread(
        Prompt.ask,
        "Run it again without the sandbox? [bold]y[/] once, [bold]a[/] for this session, "
        "[bold]n[/] no",
        choices=list(_ANSWERS),
        default="n",
        console=console,
    )
    return _ANSWERS[answer]


NETWORK_ASK_TIMEOUT_SECONDS = 25.0
_NETWORK_ANSWERS = {"y": "allowOnce", "a": "allowSession", "n": "deny"}


async def ask_network_in_terminal(request: dict[str, object]) -> str:
    """The executor's proxy holds a connection to an unlisted host: allow it?"""
    details = request.get("request")
    info = details if isinstance(details, dict) else {}
    from rich.console import Console
    from rich.panel import Panel
    from rich.prompt import Prompt

    console = Console(stderr=True)
    console.print(
        Panel(
            f"[bold]{info.get('host')}[/]:{info.get('port')} ({info.get('protocol')})",
            title="A command wants network access",
            border_style="cyan",
            expand=False,
        )
    )
    ask = asyncio.to_thread(
        Prompt.ask,
        "Allow? [bold]y[/] once, [bold]a[/] for this session, [bold]n[/] no",
        choices=list(_NETWORK_ANSWERS),
        default="n",
        console=console,
    )
    try:
        answer = await asyncio.wait_for(ask, NETWORK_ASK_TIMEOUT_SECONDS)
    except TimeoutError:
        console.print("No answer: denied.")
        return "deny"
    return _NETWORK_ANSWERS[answer]
