"""The terminal side of approve-and-retry: show why the sandbox said no, then ask."""

from __future__ import annotations

import asyncio
import os
import shlex
import sys
from collections.abc import Mapping
from typing import TYPE_CHECKING

from codexexec.client.approval import Decision, DenialPrompt

if TYPE_CHECKING:
    from rich.table import Table

# rich is loaded only when a prompt is shown: a command that is not denied never pays for it.

# One command per run: "for this session" would mean nothing, so only once or not at all.
_ANSWERS: dict[str, Decision] = {"y": "once", "n": "deny"}


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
    if (hint := _HINTS.get(str(report.get("reason")))) is not None:
        table.add_row("Hint", hint)
    table.add_row("Exit code", str(prompt.exit_code))
    if report.get("snippet"):
        table.add_row("Output", str(report["snippet"])[:300])
    return table


def denial_line(prompt: DenialPrompt) -> str:
    report = prompt.report or {}
    details = ", ".join(
        str(v) for v in (report.get("reason"), report.get("path"), report.get("backend")) if v
    )
    line = f"sandbox denied `{shlex.join(prompt.argv)}`" + (f" ({details})" if details else "")
    hint = _HINTS.get(str(report.get("reason")))
    return line + (f"; {hint}" if hint else "")


# What to do about a denial, where there is something to say.
_HINTS = {
    "network_disabled": "the network is off in this sandbox; --network on or --network proxy "
    "allows it",
    "network_blocked": "under --network proxy only the proxy reaches out: --allow-local for "
    "loopback, --allow-domain HOST for other hosts",
    "protected_path": "the sandbox keeps this name (.git, .codex, …) read-only and in place",
}


async def ask_in_terminal(prompt: DenialPrompt, interrupted: asyncio.Event) -> Decision:
    """``interrupted`` is set by Ctrl-C (or SIGTERM/SIGHUP): that answers no, at once."""
    from rich.console import Console
    from rich.panel import Panel

    console = Console(stderr=True)
    console.print(
        Panel(
            denial_table(prompt),
            title="The sandbox blocked this command",
            border_style="yellow",
            expand=False,
        )
    )
    answer = await read_answer(
        "Run it again without the sandbox? y once, n no (n): ", _ANSWERS, interrupted
    )
    return _ANSWERS[answer or "n"]


NETWORK_ASK_TIMEOUT_SECONDS = 25.0
_NETWORK_ANSWERS = {"y": "allowOnce", "a": "allowSession", "n": "deny"}


async def ask_network_in_terminal(
    request: dict[str, object], interrupted: asyncio.Event | None = None
) -> str:
    """The executor's proxy holds a connection to an unlisted host: allow it?"""
    details = request.get("request")
    info = details if isinstance(details, dict) else {}
    from rich.console import Console
    from rich.panel import Panel

    console = Console(stderr=True)
    console.print(
        Panel(
            f"[bold]{info.get('host')}[/]:{info.get('port')} ({info.get('protocol')})",
            title="A command wants network access",
            border_style="cyan",
            expand=False,
        )
    )
    try:
        answer = await asyncio.wait_for(
            read_answer(
                "Allow? y once, a this host for the rest of this run, n no (n): ",
                _NETWORK_ANSWERS,
                interrupted or asyncio.Event(),
            ),
            NETWORK_ASK_TIMEOUT_SECONDS,
        )
    except TimeoutError:
        console.print("\nNo answer: denied.")
        return "deny"
    return _NETWORK_ANSWERS[answer or "n"]


async def read_answer(
    question: str, choices: Mapping[str, object], interrupted: asyncio.Event
) -> str | None:
    """One of ``choices`` typed at the terminal (asked again until it is), or None for the
    default: an empty line, end of input, or ``interrupted`` — which ends the wait at once,
    where a blocking read would hold on until Enter."""
    loop = asyncio.get_running_loop()
    fd = sys.stdin.fileno()
    if not os.isatty(fd):
        return None  # only a person at a terminal answers; anything else is the default
    interrupted.clear()
    while True:
        sys.stderr.write(question)
        sys.stderr.flush()
        # Resolved by a line typed, or with None by the interruption.
        line: asyncio.Future[bytes | None] = loop.create_future()

        def readable(line: asyncio.Future[bytes | None] = line) -> None:
            if not line.done():
                try:
                    line.set_result(os.read(fd, 1024))
                except OSError:
                    line.set_result(b"")

        def interrupt(_: object, line: asyncio.Future[bytes | None] = line) -> None:
            if not line.done():
                line.set_result(None)

        loop.add_reader(fd, readable)
        stop = asyncio.ensure_future(interrupted.wait())
        stop.add_done_callback(interrupt)
        try:
            typed = await line
        finally:
            loop.remove_reader(fd)
            stop.cancel()
        if typed is None:
            sys.stderr.write("\n")
            return None
        text = typed.decode(errors="replace").strip().lower()
        if not text:
            return None
        if text in choices:
            return text
        sys.stderr.write(f"Please answer {', '.join(choices)}.\n")
