"""What `exec` and `read` do once their arguments are parsed.

Errors a user can act on arrive as ExecServerError and leave as one line on stderr.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
import termios
import tty as tty_mode
from collections.abc import AsyncIterator, Iterator

from codexexec.cli.errors import EXIT_FAILURE, EXIT_NOT_EXECUTABLE, EXIT_NOT_FOUND, fail
from codexexec.cli.render import EventRenderer, emit_json
from codexexec.client import ExecServerClient, ExecServerError, RemoteProcess
from codexexec.client.handle import InvalidHandle, ProcessHandle


def _spawn_failure_code(error: ExecServerError) -> int:
    if "(os error 2)" in str(error):
        return EXIT_NOT_FOUND
    if "(os error 13)" in str(error):
        return EXIT_NOT_EXECUTABLE
    return EXIT_FAILURE


@contextlib.asynccontextmanager
async def _connected(
    env: str, resume_session_id: str | None = None
) -> AsyncIterator[ExecServerClient]:
    try:
        client = await ExecServerClient.connect(env, resume_session_id=resume_session_id)
    except ExecServerError as exc:
        fail(str(exc))
    try:
        yield client
    finally:
        await client.close()


async def _stream(process: RemoteProcess, renderer: EventRenderer, after_seq: int = 0) -> None:
    async for event in process.events(after_seq):
        renderer(event)


async def run_exec(
    *, env: str, argv: list[str], cwd: str | None, tty: bool, detach: bool, json_mode: bool
) -> int:
    async with _connected(env) as client:
        try:
            process = await client.start(argv, cwd=cwd, tty=tty, pipe_stdin=False)
        except ExecServerError as exc:
            fail(f"cannot start `{argv[0]}` on {env}: {exc}", _spawn_failure_code(exc))
        if detach:
            handle = str(ProcessHandle(env, client.session_id, process.process_id))
            if json_mode:
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
        renderer = EventRenderer(json_mode=json_mode)
        forwarding = asyncio.create_task(_forward_stdin(process)) if tty else None
        try:
            with _raw_terminal(tty and not json_mode):
                await _stream(process, renderer)
        except ExecServerError as exc:
            fail(str(exc))
        except asyncio.CancelledError:
            with contextlib.suppress(ExecServerError):
                await process.terminate()
            raise
        finally:
            if forwarding is not None:
                forwarding.cancel()
        return _finish(
            renderer, json_mode, processId=process.process_id, sandboxType=process.sandbox_type
        )


def _finish(renderer: EventRenderer, json_mode: bool, **extra: object) -> int:
    if json_mode:
        emit_json(renderer.result(**extra))
    exit_code = renderer.exited.exit_code if renderer.exited else None
    return exit_code if isinstance(exit_code, int) and 0 <= exit_code <= 255 else EXIT_FAILURE


async def run_read(handle_text: str, *, follow: bool, after_seq: int, json_mode: bool) -> int:
    try:
        handle = ProcessHandle.parse(handle_text)
    except InvalidHandle as exc:
        fail(str(exc), 2)
    async with _connected(handle.environment, handle.session_id) as client:
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


async def _forward_stdin(process: RemoteProcess) -> None:
    """Copy our stdin to the remote terminal until EOF."""
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    try:
        await loop.connect_read_pipe(
            lambda: asyncio.StreamReaderProtocol(reader),
            os.fdopen(os.dup(sys.stdin.fileno()), "rb", buffering=0),
        )
    except (OSError, ValueError):
        return
    while data := await reader.read(65536):
        try:
            await process.write(data)
        except ExecServerError:
            return


@contextlib.contextmanager
def _raw_terminal(enabled: bool) -> Iterator[None]:
    if not enabled or not sys.stdin.isatty():
        yield
        return
    fd = sys.stdin.fileno()
    saved = termios.tcgetattr(fd)
    tty_mode.setraw(fd)
    try:
        yield
    finally:
        termios.tcsetattr(fd, termios.TCSADRAIN, saved)
