"""ExecServerClient against both servers, over websocket and stdio, and in-process."""

from __future__ import annotations

import asyncio
import re

import pytest

from codexexec.client import Closed, ExecServerClient, ExecServerError, Exited, Output, OutputGap
from codexexec.transport.stdio import spawn_stdio_transport
from tests.servers import RunningServer, codex_binary, codexexec_command, start_server


async def collect(process) -> tuple[bytes, bytes, Exited | None, bool]:  # type: ignore[no-untyped-def]
    stdout = stderr = b""
    exited: Exited | None = None
    closed = False
    async for event in process.events():
        if isinstance(event, Output):
            if event.stream == "stderr":
                stderr += event.data
            else:
                stdout += event.data
        elif isinstance(event, Exited):
            exited = event
        elif isinstance(event, Closed):
            closed = True
    return stdout, stderr, exited, closed


async def test_client_runs_a_command(server: RunningServer) -> None:
    async with await ExecServerClient.connect(server.url) as client:
        process = await client.start(["sh", "-c", "echo out; echo err >&2; exit 4"], cwd="/tmp")
        assert process.sandbox_type == "none"
        stdout, stderr, exited, closed = await collect(process)
    assert (stdout, stderr) == (b"out\n", b"err\n")
    assert exited is not None and exited.exit_code == 4 and not exited.sandbox_denied
    assert closed


async def test_iterating_a_finished_process_replays_it(server: RunningServer) -> None:
    async with await ExecServerClient.connect(server.url) as client:
        process = await client.start(["sh", "-c", "echo early; exit 2"], cwd="/tmp")
        await asyncio.sleep(0.5)  # everything happens before anyone iterates
        stdout, _, exited, closed = await collect(process)
    assert stdout == b"early\n" and exited is not None and exited.exit_code == 2 and closed


async def test_large_output_arrives_complete_and_in_order(server: RunningServer) -> None:
    size = 16 * 1024 * 1024
    async with await ExecServerClient.connect(server.url) as client:
        process = await client.start(["head", "-c", str(size), "/dev/urandom"], cwd="/tmp")
        total = 0
        last_seq = 0
        async for event in process.events():
            assert not isinstance(event, OutputGap)
            if isinstance(event, Output):
                # Strictly increasing; Codex may number its exit event between chunks.
                assert event.seq > last_seq
                last_seq = event.seq
                total += len(event.data)
    assert total == size


async def test_resume_with_the_client_loses_nothing(server: RunningServer) -> None:
    client = await ExecServerClient.connect(server.url)
    process = await client.start(
        ["sh", "-c", "for i in 1 2 3 4; do echo n$i; sleep 0.25; done; exit 5"], cwd="/tmp"
    )
    session_id, process_id = client.session_id, process.process_id
    await client.close()
    await asyncio.sleep(0.4)
    async with await ExecServerClient.connect(server.url, resume_session_id=session_id) as again:
        stdout, _, exited, _ = await collect(again.process(process_id))
    assert stdout == b"n1\nn2\nn3\nn4\n"
    assert exited is not None and exited.exit_code == 5


async def test_tty_and_stdin_through_the_client(server: RunningServer) -> None:
    async with await ExecServerClient.connect(server.url) as client:
        process = await client.start(["sh", "-c", "read a; echo got:$a"], cwd="/tmp", tty=True)
        assert await process.write(b"xyz\n") == "accepted"
        stdout, _, exited, _ = await collect(process)
    assert b"got:xyz" in stdout and exited is not None and exited.exit_code == 0


async def test_rpc_errors_surface_as_exec_server_error(server: RunningServer) -> None:
    async with await ExecServerClient.connect(server.url) as client:
        with pytest.raises(ExecServerError) as caught:
            await client.start([], cwd="/tmp")
        assert caught.value.code == -32602


async def test_disconnect_fails_iteration_with_a_clear_error() -> None:
    with start_server("codexexec") as running:
        client = await ExecServerClient.connect(running.url)
        process = await client.start(["sleep", "30"], cwd="/tmp")
        running.stop()
        with pytest.raises(ExecServerError, match="disconnected"):
            async for _ in process.events():
                pass
        await client.close()


async def test_connect_errors_are_clear() -> None:
    with pytest.raises(ExecServerError, match=re.escape("cannot connect to ws://127.0.0.1:9")):
        await ExecServerClient.connect("ws://127.0.0.1:9")
    # Credentials written into the URL stay out of the message.
    with pytest.raises(ExecServerError, match=re.escape("to ws://127.0.0.1:9/p:")) as failed:
        await ExecServerClient.connect("ws://me:pw-secret@127.0.0.1:9/p?token=tok-secret")
    assert "secret" not in str(failed.value)
    with pytest.raises(ExecServerError, match="unknown environment"):
        await ExecServerClient.connect("http://example.invalid")


async def test_local_environment_runs_in_process() -> None:
    async with await ExecServerClient.connect("local") as client:
        process = await client.start(["sh", "-c", "pwd; exit 6"], cwd="/tmp")
        stdout, _, exited, _ = await collect(process)
    assert stdout == b"/tmp\n" and exited is not None and exited.exit_code == 6


@pytest.mark.parametrize("kind", ["codexexec", "codex"])
async def test_stdio_transport(kind: str, tmp_path_factory: pytest.TempPathFactory) -> None:
    if kind == "codexexec":
        argv = codexexec_command("serve", "--listen", "stdio")
        env = None
    else:
        import os
        import tempfile

        argv = [codex_binary(), "exec-server", "--listen", "stdio"]
        env = {**os.environ, "CODEX_HOME": tempfile.mkdtemp(dir="/var/tmp")}
    transport = await spawn_stdio_transport(argv[0], argv[1:], env=env)
    client = await ExecServerClient.over(transport, description=f"{kind} over stdio")
    try:
        process = await client.start(["sh", "-c", "echo via-stdio; exit 9"], cwd="/tmp")
        stdout, _, exited, _ = await collect(process)
    finally:
        await client.close()
    assert stdout == b"via-stdio\n" and exited is not None and exited.exit_code == 9
