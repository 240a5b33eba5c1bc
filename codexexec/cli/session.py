"""What `exec` and `read` do once their arguments are parsed.

Errors a user can act on arrive as ExecServerError and leave as one line on stderr.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import functools
import os
import shlex
import signal
import stat
import sys
import termios
import time
import tty as tty_mode
from collections.abc import AsyncIterator, Iterator
from typing import Any, NoReturn

import msgspec

from codexexec.cli.approval_prompt import ask_in_terminal, ask_network_in_terminal, denial_line
from codexexec.cli.deadlines import EXIT_TIMED_OUT, Deadlines, Fired, describe
from codexexec.cli.errors import EXIT_FAILURE, EXIT_NOT_EXECUTABLE, EXIT_NOT_FOUND, fail
from codexexec.cli.render import EventRenderer, emit_json
from codexexec.cli.stop_signals import StopForwarding
from codexexec.client import ExecServerClient, ExecServerError, Output, ProcessEvent, RemoteProcess
from codexexec.client.approval import (
    ApprovalStore,
    Attempt,
    Decision,
    DenialPrompt,
    run_with_approval,
)
from codexexec.client.client import NetworkProxyRequest
from codexexec.client.errors import StartInterrupted
from codexexec.client.handle import InvalidHandle, ProcessHandle
from codexexec.environments.config import LOCAL_ENVIRONMENT_ID
from codexexec.sandbox.policy import LegacyMode
from codexexec.tasks import TaskSet


def _spawn_failure_code(error: ExecServerError) -> int:
    if error.os_errno == errno.ENOENT:
        return EXIT_NOT_FOUND
    if error.os_errno in (errno.EACCES, errno.ENOEXEC):
        return EXIT_NOT_EXECUTABLE
    return EXIT_FAILURE


@contextlib.asynccontextmanager
async def _connected(
    env: str | None,
    resume_session_id: str | None = None,
    *,
    detach: bool = False,
    token_file: str | None = None,
) -> AsyncIterator[tuple[ExecServerClient, str]]:
    """The client of environment ``env`` (None: the default) and the environment's name."""
    from codexexec.cli.targets import chosen_environment, connect

    chosen = chosen_environment(env, autostart=resume_session_id is None, token_file=token_file)
    async with chosen as environment:
        if detach and environment.kind == "local":
            fail(
                "--detach needs a server environment (--env ws://…): "
                "the local environment ends with this command",
                2,
            )
        client = await connect(environment, resume_session_id=resume_session_id, lasting=detach)
        yield client, environment.id


# Each chunk of forwarded stdin is one process/write.
_STDIN_CHUNK_BYTES = 256 * 1024


async def _stream(process: RemoteProcess, renderer: EventRenderer, after_seq: int = 0) -> None:
    async for event in process.events(after_seq):
        renderer(event)


class ExecOptions(msgspec.Struct, frozen=True):
    argv: list[str]
    cwd: str | None
    tty: bool
    detach: bool
    json_mode: bool
    sandbox: LegacyMode
    writable_roots: list[str]
    ask: bool
    network: bool = False
    network_proxy: NetworkProxyRequest | None = None
    deny_read: tuple[str, ...] = ()
    deny_write: tuple[str, ...] = ()
    profile: dict[str, Any] | None = None  # exec --profile FILE, as PermissionProfile JSON
    env: dict[str, str] | None = None  # -e/--env-file: set for the command
    timeout: float | None = None
    idle_timeout: float | None = None
    token_file: str | None = None  # the registry bearer for an ENV@REGISTRY_URL target


async def run_exec(env: str | None, options: ExecOptions) -> int:
    connected = _connected(env, detach=options.detach, token_file=options.token_file)
    async with connected as (client, env):
        stopper = StopForwarding()
        if options.network_proxy is not None and options.network_proxy.ask_unknown:
            # Asking needs a person at a terminal; otherwise unlisted domains are denied.
            interactive = sys.stdin.isatty() and not options.json_mode
            client.on_network_request = (
                functools.partial(ask_network_in_terminal, interrupted=stopper.interrupted)
                if interactive
                else _deny_network
            )
        if options.detach:
            return await _detach(client, env, options)
        renderer = EventRenderer(json_mode=options.json_mode)
        terminal = _RawTerminal(options.tty and not options.json_mode)
        resizes = _TerminalResizes()
        forwarding: list[asyncio.Task[None]] = []
        pipe_stdin = not options.tty and _stdin_is_data()
        if pipe_stdin and not client.can_close_stdin:
            # Codex's protocol has no end of input: a command reading it would never finish.
            pipe_stdin = False
            print(
                f"codexexec: note: {env} cannot end a command's stdin, so piped input is "
                "not forwarded (--tty forwards a terminal's)",
                file=sys.stderr,
            )

        loop = asyncio.get_running_loop()
        started: list[Attempt] = []
        output_failed: list[OSError] = []
        deadlines = Deadlines.begin(options.timeout, options.idle_timeout, loop.time())
        fired: list[Fired] = []
        watching: list[asyncio.Task[None]] = []

        async def watch_deadlines() -> None:
            while (wait := deadlines.wait(loop.time())) is not None:
                await asyncio.sleep(wait)
                due = deadlines.due(loop.time())
                if due is not None and stopper.process is not None:
                    fired.append(due)
                    stopper.stop(f"codexexec: {describe(due, deadlines)}")
                    return

        def on_event(event: ProcessEvent) -> None:
            if isinstance(event, Output):
                deadlines.output(loop.time())
            if output_failed:
                return
            try:
                renderer(event)
            except OSError as exc:
                # Nobody can see the command any more (a hung-up terminal, a full disk):
                # end it, as ssh's hangup does, then say why.
                output_failed.append(exc)
                stopper.terminate_now()

        def on_start(attempt: Attempt) -> None:
            started.append(attempt)
            if env != LOCAL_ENVIRONMENT_ID:
                stopper.label = str(
                    ProcessHandle(env, client.session_id, attempt.process.process_id)
                )
            stopper.attach(attempt.process)
            if deadlines.active and not fired:  # each attempt gets the whole allowance
                deadlines.started = deadlines.last_output = loop.time()
                for task in watching:
                    task.cancel()
                watching.append(asyncio.create_task(watch_deadlines()))
            for task in forwarding:
                task.cancel()
            if terminal.active and client.can_resize_pty:
                resizes.follow(attempt.process)
            if options.tty or pipe_stdin:
                forwarding.append(
                    asyncio.create_task(
                        _forward_stdin(
                            attempt.process,
                            end=pipe_stdin,
                            tty_eof=options.tty and not sys.stdin.isatty(),
                        )
                    )
                )

        async def ask(prompt: DenialPrompt) -> Decision:
            stopper.process = None  # that attempt has ended: Ctrl-C now answers the question
            for task in watching:  # the limits are the command's, not the person's
                task.cancel()
            with terminal.suspended():
                decision = await ask_in_terminal(prompt, stopper.interrupted)
            if decision != "deny" and not options.json_mode:
                sys.stderr.write(
                    f"codexexec: running `{shlex.join(options.argv)}` again without the sandbox\n"
                )
            return decision

        try:
            with terminal, stopper.installed(), resizes.installed():
                attempts = await run_with_approval(
                    client,
                    options.argv,
                    **_start_settings(options),
                    pipe_stdin=pipe_stdin,
                    on_event=on_event,
                    on_start=on_start,
                    ask=ask if options.ask else None,
                    store=ApprovalStore(),
                )
        except StartInterrupted as exc:
            _start_failed(options, f"`{options.argv[0]}` on {env}: {exc}", EXIT_FAILURE)
        except ExecServerError as exc:
            if started:  # it ran: the connection was lost, not the start refused
                _lost(options, env, client, started[-1], exc)
            message = f"cannot run `{options.argv[0]}` on {env}: {exc}"
            _start_failed(options, message, _spawn_failure_code(exc))
        finally:
            for task in (*forwarding, *watching):
                task.cancel()
        if output_failed:
            raise output_failed[0]  # one line and exit 125 (cli main)
        decisions = client.network_decisions(attempts[0].process.process_id)
        code = _report_attempts(
            client.description, options, renderer, attempts, decisions, fired[0] if fired else None
        )
        return EXIT_TIMED_OUT if fired else code


async def _deny_network(request: dict[str, Any]) -> str:
    return "deny"


# What would have let a blocked destination through, by the proxy's reason.
_NETWORK_HINTS = {
    "not_allowed": "--allow-domain {host} allows it",
    "not_allowed_local": "a local address: --allow-local with --allow-domain {host} allows it",
    "denied": "a --deny-domain (or the executor's policy) names it",
    "method_not_allowed": "the policy's limited mode allows only GET, HEAD and OPTIONS",
}


def _report_attempts(
    environment: str,
    options: ExecOptions,
    renderer: EventRenderer,
    attempts: list[Attempt],
    network_decisions: list[dict[str, Any]],
    timed_out: Fired | None = None,
) -> int:
    first, last = attempts[0], attempts[-1]
    blocked = [d for d in network_decisions if d.get("decision") != "allow"]
    if blocked and not options.json_mode:
        seen = set()
        for d in blocked:
            key = (d.get("host"), d.get("port"), d.get("reason"))
            if key not in seen:
                seen.add(key)
                hint = _NETWORK_HINTS.get(str(d.get("reason")), "").format(host=d.get("host"))
                sys.stderr.write(
                    f"codexexec: network: the proxy blocked {d.get('host')}:{d.get('port')} "
                    f"({d.get('reason')}, {d.get('source')}, {d.get('protocol')})"
                    + (f"; {hint}" if hint else "")
                    + "\n"
                )
    denied = first.exited is not None and first.exited.sandbox_denied
    if denied and len(attempts) == 1 and not options.json_mode:
        assert first.exited is not None
        prompt = DenialPrompt(
            options.argv,
            environment,
            first.process.sandbox_type,
            first.exited.exit_code,
            first.exited.denial,
        )
        sys.stderr.write(f"codexexec: {denial_line(prompt)}\n")
    extra: dict[str, object] = {
        "processId": last.process.process_id,
        "sandboxType": last.process.sandbox_type,
        "attempts": len(attempts),
    }
    if denied and first.exited is not None:
        extra["denial"] = first.exited.denial or {}
        extra["retriedWithoutSandbox"] = len(attempts) > 1
    if network_decisions:
        extra["networkDecisions"] = network_decisions
    if timed_out is not None:
        extra["timedOut"] = timed_out
    return _finish(renderer, options.json_mode, **extra)


def _start_settings(options: ExecOptions) -> dict[str, Any]:
    """What `exec`'s options say about starting the process, attached or detached."""
    return {
        "cwd": options.cwd,
        "tty": options.tty,
        "sandbox": options.sandbox,
        "writable_roots": options.writable_roots,
        "network": options.network,
        "network_proxy": options.network_proxy,
        "deny_read": options.deny_read,
        "deny_write": options.deny_write,
        "profile": options.profile,
        "env": options.env,
    }


async def _detach(client: ExecServerClient, env: str, options: ExecOptions) -> int:
    try:
        process = await client.start(options.argv, **_start_settings(options))
    except ExecServerError as exc:
        message = f"cannot start `{options.argv[0]}` on {env}: {exc}"
        _start_failed(options, message, _spawn_failure_code(exc))
    handle = str(ProcessHandle(env, client.session_id, process.process_id))
    from codexexec.cli import detached

    with contextlib.suppress(OSError):  # `ps` will not know of it; the handle still works
        detached.remember(detached.Detached(handle, options.argv, time.time()))
    if options.json_mode:
        emit_json(
            {
                "handle": handle,
                "processId": process.process_id,
                "sessionId": client.session_id,
                "environment": env,
            }
        )
    else:
        print(handle, flush=True)
    return 0


def _lost(
    options: ExecOptions,
    env: str,
    client: ExecServerClient,
    attempt: Attempt,
    error: ExecServerError,
) -> NoReturn:
    """The command started but its connection is gone: say so, and how to find it again."""
    handle = ProcessHandle(env, client.session_id, attempt.process.process_id)
    if not options.json_mode:
        sys.stderr.write(
            f"codexexec: `{options.argv[0]}` may still be running there; once {env} is back: "
            f"codexexec read {handle} --follow\n"
        )
    _start_failed(options, f"lost `{options.argv[0]}` on {env}: {error}", EXIT_FAILURE)


def _start_failed(options: ExecOptions, message: str, code: int) -> NoReturn:
    """The command never ran: one line on stderr, and with --json still a `result` record,
    so every --json run ends with one."""
    if options.json_mode:
        emit_json({"type": "result", "exitCode": code, "sandboxDenied": False, "error": message})
    fail(message, code)


def _finish(renderer: EventRenderer, json_mode: bool, **extra: object) -> int:
    if json_mode:
        emit_json(renderer.result(**extra))
    exit_code = renderer.exited.exit_code if renderer.exited else None
    return exit_code if isinstance(exit_code, int) and 0 <= exit_code <= 255 else EXIT_FAILURE


@contextlib.asynccontextmanager
async def connected_session(handle: ProcessHandle) -> AsyncIterator[ExecServerClient]:
    """The client of ``handle``'s session, resumed (errors end the command in one line)."""
    async with _connected(handle.environment, handle.session_id) as (client, _):
        yield client


async def run_read(handle_text: str, *, follow: bool, after_seq: int, json_mode: bool) -> int:
    try:
        handle = ProcessHandle.parse(handle_text)
    except InvalidHandle as exc:
        fail(str(exc), 2)
    async with _connected(handle.environment, handle.session_id) as (client, _):
        process = client.process(handle.process_id)
        renderer = EventRenderer(json_mode=json_mode)
        try:
            if follow:
                await _stream(process, renderer, after_seq)
                return _finish(renderer, json_mode, processId=handle.process_id)
            response = await process.read(after_seq=after_seq)
        except ExecServerError as exc:
            fail(f"{handle.process_id}: {exc}")
        for chunk in response.chunks:
            renderer(chunk)
        if json_mode:
            emit_json(
                {
                    "type": "status",
                    "nextSeq": response.next_seq,
                    "exited": response.exited,
                    "exitCode": response.exit_code,
                    "closed": response.closed,
                    "sandboxDenied": response.sandbox_denied,
                }
            )
        return 0


def _stdin_is_data() -> bool:
    """Whether our stdin is piped or redirected input (not a terminal or /dev/null)."""
    try:
        mode = os.fstat(sys.stdin.fileno()).st_mode
    except (OSError, ValueError):
        return False
    return stat.S_ISFIFO(mode) or stat.S_ISREG(mode) or stat.S_ISSOCK(mode)


# The terminal's end-of-file character (^D): a line discipline ends input when it reads it
# at the start of a line, so after a partial line it is sent twice.
_PTY_EOF = b"\x04"


async def _forward_stdin(process: RemoteProcess, *, end: bool, tty_eof: bool = False) -> None:
    """Copy our stdin to the remote process until EOF; ``end``: then end its stdin. A
    remote terminal fed from a pipe or file (`echo hi | exec --tty -- cat`) is given the
    terminal's end-of-file character instead, or the command would wait forever."""
    last = b"\n"
    try:
        async for chunk in _stdin_chunks():
            await process.write(chunk)
            last = chunk[-1:]
        if end:
            await process.close_stdin()
        elif tty_eof:
            await process.write(_PTY_EOF if last == b"\n" else _PTY_EOF * 2)
    except ExecServerError:
        return


async def _stdin_chunks() -> AsyncIterator[bytes]:
    fd = sys.stdin.fileno()
    if stat.S_ISREG(os.fstat(fd).st_mode):
        # `< file`: the event loop cannot watch a regular file, and reading one never
        # blocks for long, so a worker thread reads it.
        while chunk := await asyncio.to_thread(os.read, fd, _STDIN_CHUNK_BYTES):
            yield chunk
        return
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    pipe = os.fdopen(os.dup(fd), "rb", buffering=0)
    try:
        transport, _ = await loop.connect_read_pipe(
            lambda: asyncio.StreamReaderProtocol(reader), pipe
        )
    except (OSError, ValueError):
        pipe.close()
        return
    try:
        while chunk := await reader.read(_STDIN_CHUNK_BYTES):
            yield chunk
    finally:
        transport.close()


class _TerminalResizes:
    """This terminal's size, given to the remote one at start and at each SIGWINCH (the
    `ptyResize` capability; without it the remote terminal stays 24×80)."""

    def __init__(self) -> None:
        self._process: RemoteProcess | None = None
        self._tasks = TaskSet()

    def follow(self, process: RemoteProcess) -> None:
        self._process = process
        self._send()

    @contextlib.contextmanager
    def installed(self) -> Iterator[None]:
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGWINCH, self._send)
        try:
            yield
        finally:
            loop.remove_signal_handler(signal.SIGWINCH)

    def _send(self) -> None:
        process = self._process
        if process is None:
            return
        try:
            size = os.get_terminal_size(sys.stdin.fileno())
        except OSError:
            return

        async def resize() -> None:
            with contextlib.suppress(ExecServerError):  # it may have ended meanwhile
                await process.client.resize_pty(process.process_id, size.lines, size.columns)

        self._tasks.spawn(resize())


class _RawTerminal:
    """Raw mode for a remote TTY, which a prompt can suspend."""

    def __init__(self, enabled: bool) -> None:
        self._fd = sys.stdin.fileno() if enabled and sys.stdin.isatty() else None
        self._saved: list[Any] | None = None

    @property
    def active(self) -> bool:
        return self._fd is not None

    def __enter__(self) -> _RawTerminal:
        if self._fd is not None:
            self._saved = termios.tcgetattr(self._fd)
            tty_mode.setraw(self._fd)
        return self

    def __exit__(self, *exc: object) -> None:
        if self._fd is not None and self._saved is not None:
            with contextlib.suppress(termios.error, OSError):  # the terminal may be gone
                termios.tcsetattr(self._fd, termios.TCSADRAIN, self._saved)
            self._saved = None

    @contextlib.contextmanager
    def suspended(self) -> Iterator[None]:
        active = self._saved is not None
        self.__exit__()
        try:
            yield
        finally:
            if active:
                self.__enter__()
