"""What `codexexec ps` shows and what `codexexec kill` does, loaded only when one runs."""

from __future__ import annotations

import contextlib
import time
from typing import TYPE_CHECKING

import msgspec

if TYPE_CHECKING:
    from codexexec.cli.detached import Detached
    from codexexec.client.handle import ProcessHandle


class Row(msgspec.Struct):
    handle: str
    argv: list[str]
    started: float
    state: str  # running | exited | gone | unreachable
    exit_code: int | None = None
    detail: str = ""


async def report(env: str | None, json_mode: bool) -> int:
    from codexexec.cli import detached
    from codexexec.cli.render import emit_json
    from codexexec.client.handle import InvalidHandle, ProcessHandle

    records = detached.load()
    sessions: dict[tuple[str, str], list[tuple[Detached, ProcessHandle]]] = {}
    for record in records:
        try:
            handle = ProcessHandle.parse(record.handle)
        except InvalidHandle:
            continue
        if env is None or handle.environment == env:
            sessions.setdefault((handle.environment, handle.session_id), []).append(
                (record, handle)
            )
    rows = [row for group in sessions.values() for row in await _ask(group)]
    gone = {row.handle for row in rows if row.state == "gone"}
    if gone:
        with contextlib.suppress(OSError):  # shown as gone anyway; forgotten next time
            detached.forget(gone)
    now = time.time()
    if json_mode:
        for row in rows:
            emit_json(
                {
                    "handle": row.handle,
                    "argv": row.argv,
                    "state": row.state,
                    "exitCode": row.exit_code,
                    "ageSeconds": round(now - row.started, 1),
                    **({"detail": row.detail} if row.detail else {}),
                }
            )
        return 0
    if not rows:
        print("no detached processes" + (f" on {env}" if env else ""))
        return 0
    _print_table(rows, now)
    return 0


async def _ask(entries: list[tuple[Detached, ProcessHandle]]) -> list[Row]:
    """The rows of one session's processes, from one resumed connection."""
    from codexexec.cli.completion import environment_names
    from codexexec.cli.targets import chosen_environment, is_literal
    from codexexec.client.errors import ExecServerError

    environment_id, session_id = entries[0][1].environment, entries[0][1].session_id
    if not is_literal(environment_id) and environment_id not in environment_names():
        return [_row(record, "unreachable", why="not configured") for record, _ in entries]
    try:
        async with chosen_environment(environment_id, autostart=False) as environment:
            client = await environment.resume(session_id)
            rows = []
            for record, handle in entries:
                try:
                    status = await client.read(handle.process_id, max_bytes=1)
                except ExecServerError as exc:
                    rows.append(_row(record, _state_after(exc), why=str(exc)))
                    continue
                state = "exited" if status.exited or status.closed else "running"
                rows.append(_row(record, state, status.exit_code))
            return rows
    except ExecServerError as exc:
        return [_row(record, _state_after(exc), why=str(exc)) for record, _ in entries]


def _row(record: Detached, state: str, code: int | None = None, why: str = "") -> Row:
    return Row(record.handle, record.argv, record.started, state, code, why)


def _state_after(error: Exception) -> str:
    """Gone only when the server itself says it no longer knows the session or the process
    (Codex's words); any other failure may pass, and the record is kept."""
    text = str(error)
    return (
        "gone" if "unknown session id" in text or "unknown process id" in text else ("unreachable")
    )


def _print_table(rows: list[Row], now: float) -> None:
    import shlex

    header = ("HANDLE", "STATE", "EXIT", "AGE", "COMMAND")
    table = [
        (
            row.handle,
            row.state,
            "" if row.exit_code is None else str(row.exit_code),
            _age(now - row.started),
            shlex.join(row.argv),
        )
        for row in rows
    ]
    widths = [max(len(line[i]) for line in (header, *table)) for i in range(4)]
    for line in (header, *table):
        cells = [cell.ljust(width) for cell, width in zip(line, widths, strict=False)]
        print("  ".join([*cells, line[4]]))


def _age(seconds: float) -> str:
    seconds = max(0, int(seconds))
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


async def stop(text: str, interrupt: bool) -> int:
    from codexexec.cli.errors import fail
    from codexexec.cli.session import connected_session
    from codexexec.client.errors import ExecServerError
    from codexexec.client.handle import InvalidHandle, ProcessHandle

    try:
        handle = ProcessHandle.parse(text)
    except InvalidHandle as exc:
        fail(str(exc), 2)
    async with connected_session(handle) as client:
        try:
            status = await client.read(handle.process_id, max_bytes=1)
            if status.exited:
                print(
                    f"codexexec: `{handle.process_id}` has already exited "
                    f"(exit code {status.exit_code})"
                )
                return 0
            if interrupt:
                await client.interrupt(handle.process_id)
            else:
                await client.terminate(handle.process_id)
        except ExecServerError as exc:
            fail(f"{handle.process_id}: {exc}")
    return 0
