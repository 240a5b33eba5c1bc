"""Approve-and-retry: run sandboxed; on a sandbox denial, ask, and run again without it.

The decision is the caller's (a terminal prompt, a policy, a harness); this module
only sequences the attempts and remembers approvals for the session, keyed like
Codex's approval cache by command and working directory.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any, Literal

import msgspec

from codexexec.client.client import ExecServerClient, NetworkProxyRequest
from codexexec.client.events import Exited, ProcessEvent
from codexexec.client.process import RemoteProcess
from codexexec.sandbox.policy import LegacyMode

Decision = Literal["once", "session", "deny"]


class DenialPrompt(msgspec.Struct, frozen=True):
    argv: list[str]
    environment: str
    sandbox_type: str | None
    exit_code: int | None
    report: dict[str, Any] | None


class Attempt(msgspec.Struct):
    process: RemoteProcess
    sandboxed: bool
    exited: Exited | None = None


class ApprovalStore(msgspec.Struct):
    """Commands approved to run unsandboxed for the rest of this session."""

    approved: set[tuple[tuple[str, ...], str]] = msgspec.field(default_factory=set)

    def key(self, argv: list[str], cwd: str | None) -> tuple[tuple[str, ...], str]:
        return (tuple(argv), cwd or "")


Ask = Callable[[DenialPrompt], Awaitable[Decision]]
OnEvent = Callable[[ProcessEvent], None]
OnStart = Callable[[Attempt], None]


async def _run(attempt: Attempt, on_event: OnEvent) -> Attempt:
    async for event in attempt.process.events():
        if isinstance(event, Exited):
            attempt.exited = event
        on_event(event)
    return attempt


async def run_with_approval(
    client: ExecServerClient,
    argv: list[str],
    *,
    cwd: str | None,
    sandbox: LegacyMode,
    writable_roots: list[str],
    tty: bool,
    pipe_stdin: bool = False,
    network: bool = False,
    network_proxy: NetworkProxyRequest | None = None,
    deny_read: Sequence[str] = (),
    deny_write: Sequence[str] = (),
    profile: Mapping[str, Any] | None = None,
    env: Mapping[str, str] | None = None,
    on_event: OnEvent,
    on_start: OnStart,
    ask: Ask | None,
    store: ApprovalStore,
) -> list[Attempt]:
    """All attempts made, in order; the last one decides the outcome."""
    key = store.key(argv, cwd)
    sandboxed = key not in store.approved and (
        sandbox != "danger-full-access" or network_proxy is not None
    )
    first = Attempt(
        await client.start(
            argv,
            cwd=cwd,
            tty=tty,
            pipe_stdin=pipe_stdin,
            sandbox=sandbox if sandboxed else None,
            writable_roots=writable_roots,
            network=network,
            network_proxy=network_proxy if sandboxed else None,
            deny_read=deny_read,
            deny_write=deny_write,
            profile=profile,
            env=env,
        ),
        sandboxed,
    )
    on_start(first)
    attempts = [await _run(first, on_event)]
    exited = first.exited
    if not (sandboxed and exited is not None and exited.sandbox_denied and ask is not None):
        return attempts
    decision = await ask(
        DenialPrompt(
            argv, client.description, first.process.sandbox_type, exited.exit_code, exited.denial
        )
    )
    if decision == "deny":
        return attempts
    if decision == "session":
        store.approved.add(key)
    # Like Codex's escalation: no sandbox and no managed proxy (direct networking).
    retry = Attempt(
        await client.start(argv, cwd=cwd, tty=tty, pipe_stdin=pipe_stdin, env=env),
        sandboxed=False,
    )
    on_start(retry)
    attempts.append(await _run(retry, on_event))
    return attempts
