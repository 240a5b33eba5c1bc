"""EnvironmentManager lifecycle against real servers, through a real TCP proxy that counts."""

from __future__ import annotations

import asyncio
import os
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from aiohttp import web

from codexexec.client import ExecServerError, Output
from codexexec.client.errors import StartInterrupted
from codexexec.client.recovering import RecoveringClient
from codexexec.environments.config import EnvironmentsConfig, StdioSpec, WebSocketSpec
from codexexec.environments.connect import EnvironmentUnavailable
from codexexec.environments.manager import Environment, EnvironmentManager, Status
from codexexec.environments.sources import load_environments
from tests.servers import RunningServer
from tests.tcp_proxy import TcpProxy


def port_of(server: RunningServer) -> int:
    return int(server.url.rsplit(":", 1)[1])


@pytest.fixture
def proxy(codexexec_server: RunningServer) -> Iterator[TcpProxy]:
    running = TcpProxy(port_of(codexexec_server))
    yield running
    running.stop()


async def managed(*specs: WebSocketSpec | StdioSpec) -> EnvironmentManager:
    return EnvironmentManager.from_config(EnvironmentsConfig(environments=specs))


async def one(spec: WebSocketSpec | StdioSpec, cleanup: list[EnvironmentManager]) -> Environment:
    """A manager holding just ``spec`` (closed after the test), and its environment."""
    manager = await managed(spec)
    cleanup.append(manager)
    environment = manager.get(spec.id)
    assert environment is not None
    return environment


@pytest.fixture
async def cleanup() -> AsyncIterator[list[EnvironmentManager]]:
    managers: list[EnvironmentManager] = []
    yield managers
    for manager in managers:
        await manager.aclose()


async def until(condition: object, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():  # type: ignore[operator]
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.02)


async def test_background_start_and_one_shared_initial_attempt(
    proxy: TcpProxy, cleanup: list[EnvironmentManager]
) -> None:
    manager = await managed(WebSocketSpec("devbox", proxy.ws_url()))
    cleanup.append(manager)
    environment = manager.get("devbox")
    assert environment is not None and manager.get("devbox") is environment
    # Registration alone connects: the listener sees the socket before anyone asks.
    await until(lambda: proxy.accepted == 1)
    clients = await asyncio.gather(environment.client(), environment.client(), environment.client())
    await environment.wait_until_ready()
    assert clients[0] is clients[1] is clients[2]
    assert proxy.accepted == 1 and environment.attempts == 1
    assert environment.status() is Status.READY and environment.startup_finished()
    assert environment.timings is not None and set(environment.timings.steps) == {
        "connect",
        "initialize",
    }


async def test_a_failed_initial_attempt_stays_failed(
    proxy: TcpProxy, cleanup: list[EnvironmentManager]
) -> None:
    proxy.mode = "refuse"
    environment = await one(WebSocketSpec("devbox", proxy.ws_url()), cleanup)
    with pytest.raises(EnvironmentUnavailable) as first:
        await environment.client()
    assert str(first.value).startswith("environment `devbox`: connect: ")
    assert environment.status() is Status.DISCONNECTED
    proxy.mode = "forward"  # the server is reachable now, but the attempt was final
    with pytest.raises(EnvironmentUnavailable) as second:
        await environment.client()
    assert second.value is first.value  # the saved error, not a new attempt
    assert proxy.accepted == 1 and environment.attempts == 1


async def test_a_drop_during_a_running_process_is_one_shared_reconnect_and_loses_nothing(
    proxy: TcpProxy, cleanup: list[EnvironmentManager]
) -> None:
    environment = await one(WebSocketSpec("devbox", proxy.ws_url()), cleanup)
    client = await environment.client()
    assert isinstance(client, RecoveringClient)
    session = client.session_id
    process = await client.start(
        ["sh", "-c", "for i in $(seq 1 40); do echo line$i; sleep 0.05; done; exit 3"], cwd="/tmp"
    )
    output = bytearray()

    async def collect() -> int | None:
        exit_code = None
        async for event in process.events():
            if isinstance(event, Output):
                output.extend(event.data)
            elif hasattr(event, "exit_code"):
                exit_code = event.exit_code
        return exit_code

    collecting = asyncio.create_task(collect())
    await until(lambda: output.count(b"\n") >= 5)
    proxy.cut()
    # Concurrent callers during the outage: they all wait for the same recovery.
    again, info, read = await asyncio.gather(
        environment.client(),
        client.call("environment/info", {}),
        client.read(process.process_id),
    )
    assert again is client and info["shell"]
    exit_code = await asyncio.wait_for(collecting, 30)
    assert output.decode().splitlines() == [f"line{i}" for i in range(1, 41)]
    assert exit_code == 3 and read.next_seq >= 1
    assert proxy.accepted == 2 and client.recoveries == 1 and client.session_id == session


async def test_a_start_cut_off_before_its_answer_leaves_no_process_running(
    proxy: TcpProxy, cleanup: list[EnvironmentManager], tmp_path: Path
) -> None:
    """The start reached the executor but its answer was lost with the connection: the
    caller gets an error (it may or may not have started), and once the session is back
    the client terminates it, so nothing runs on that nobody will ever read."""
    environment = await one(WebSocketSpec("devbox", proxy.ws_url()), cleanup)
    client = await environment.client()
    assert isinstance(client, RecoveringClient)
    pid_file = tmp_path / "pid"
    proxy.replies_flow.clear()
    starting = asyncio.create_task(
        client.start(["sh", "-c", f"echo $$ > {pid_file}; exec sleep 60"], cwd="/tmp")
    )
    await until(lambda: pid_file.exists() and pid_file.read_text().strip())
    pid = int(pid_file.read_text())
    proxy.cut()
    proxy.replies_flow.set()
    with pytest.raises(StartInterrupted, match="it may have started"):
        await asyncio.wait_for(starting, 10)
    await until(lambda: not _alive(pid), timeout=10)
    assert client.recoveries == 1


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().split()[2] != "Z"
    except FileNotFoundError:
        return False


async def test_a_lost_session_fails_calls_then_the_next_caller_connects_afresh(
    proxy: TcpProxy, cleanup: list[EnvironmentManager]
) -> None:
    environment = await one(WebSocketSpec("devbox", proxy.ws_url()), cleanup)
    client = await environment.client()
    assert isinstance(client, RecoveringClient)
    client.recovery_timeout = 1.0
    proxy.mode = "refuse"
    proxy.cut()
    with pytest.raises(ExecServerError, match="failed to resume exec-server session"):
        await client.call("environment/info", {})
    assert environment.status() is Status.DISCONNECTED
    accepted = proxy.accepted
    # Concurrent callers share one fresh attempt, which fails while the server is away...
    results = await asyncio.gather(
        environment.client(), environment.client(), return_exceptions=True
    )
    assert all(isinstance(r, EnvironmentUnavailable) for r in results)
    assert results[0] is results[1] and proxy.accepted == accepted + 1
    # ...without burning the environment: the next caller tries again and gets a new session.
    proxy.mode = "forward"
    fresh = await environment.client()
    assert fresh is not client and fresh.session_id != client.session_id
    assert environment.status() is Status.READY


async def test_stdio_environment_stays_unspawned_until_used(
    tmp_path: Path, cleanup: list[EnvironmentManager]
) -> None:
    marker = tmp_path / "spawned"
    script = f"echo spawned >> {marker}; exec {sys.executable} -m codexexec serve --listen stdio"
    environment = await one(StdioSpec("ssh-like", "sh", ("-c", script)), cleanup)
    await asyncio.sleep(0.5)
    assert not marker.exists()
    assert environment.status() is Status.PENDING and not environment.startup_finished()
    client = await environment.client()
    process = await client.start(["sh", "-c", "echo over-stdio"], cwd="/tmp")
    data = b"".join([e.data async for e in process.events() if isinstance(e, Output)])
    assert data == b"over-stdio\n"
    assert await environment.client() is client
    assert marker.read_text() == "spawned\n"


async def test_replacing_an_environment_cancels_its_pending_start(
    proxy: TcpProxy, codexexec_server: RunningServer, cleanup: list[EnvironmentManager]
) -> None:
    stalled = TcpProxy(port_of(codexexec_server), mode="stall")
    try:
        manager = EnvironmentManager()
        cleanup.append(manager)
        old = manager.upsert(WebSocketSpec("devbox", stalled.ws_url(), connect_timeout=60))
        waiter = asyncio.create_task(old.client())
        await until(lambda: stalled.accepted == 1 and stalled.open_connections == 1)
        started = time.monotonic()
        new = manager.upsert(WebSocketSpec("devbox", proxy.ws_url()))
        assert manager.get("devbox") is new and new is not old
        with pytest.raises(ExecServerError, match="was replaced or removed"):
            await waiter
        await until(lambda: stalled.open_connections == 0, timeout=1.0)
        assert time.monotonic() - started < 1.0
        assert (await new.client()).connected
        manager.remove("devbox")
        assert manager.get("devbox") is None
    finally:
        stalled.stop()


async def test_connect_and_initialize_failures_are_bounded_and_clear(
    cleanup: list[EnvironmentManager], codexexec_server: RunningServer
) -> None:
    import websockets.asyncio.server

    async def never_answers(connection: websockets.asyncio.server.ServerConnection) -> None:
        await connection.wait_closed()

    silent = await websockets.asyncio.server.serve(never_answers, "127.0.0.1", 0)
    silent_port = silent.sockets[0].getsockname()[1]
    stalled = TcpProxy(port_of(codexexec_server), mode="stall")
    try:
        manager = await managed(
            WebSocketSpec("closed", "ws://127.0.0.1:9"),
            WebSocketSpec("stalled", stalled.ws_url(), connect_timeout=0.5),
            WebSocketSpec("silent", f"ws://127.0.0.1:{silent_port}", initialize_timeout=0.5),
        )
        cleanup.append(manager)
        started = time.monotonic()
        errors = {}
        for name in ("closed", "stalled", "silent"):
            environment = manager.get(name)
            assert environment is not None
            with pytest.raises(EnvironmentUnavailable) as caught:
                await environment.client()
            errors[name] = str(caught.value)
        assert time.monotonic() - started < 3
        assert errors["closed"].startswith("environment `closed`: connect: cannot connect to")
        assert errors["stalled"] == (
            "environment `stalled`: connect: timed out connecting to exec-server websocket "
            f"`{stalled.ws_url()}` after 500ms"
        )
        assert errors["silent"] == (
            "environment `silent`: initialize: timed out waiting for exec-server initialize "
            "handshake after 500ms"
        )
    finally:
        stalled.stop()
        silent.close()


@pytest.mark.parametrize(
    ("script", "expected"),
    [
        (
            "echo 'ssh: Could not resolve hostname devbox' >&2; exit 255",
            "environment `ssh-like`: initialize: exec-server transport closed "
            "(the program exited with code 255): ssh: Could not resolve hostname devbox",
        ),
        (
            "echo $$ > {pidfile}; echo 'Welcome to devbox'; sleep 30",
            "environment `ssh-like`: initialize: the program's output is not JSON-RPC: "
            "`Welcome to devbox`",
        ),
        (
            "echo $$ > {pidfile}; sleep 30",
            "environment `ssh-like`: initialize: timed out waiting for exec-server initialize "
            "handshake after 500ms",
        ),
    ],
    ids=["exits-at-once", "prints-non-json", "never-answers"],
)
async def test_broken_stdio_programs_fail_fast_and_are_stopped(
    script: str, expected: str, tmp_path: Path, cleanup: list[EnvironmentManager]
) -> None:
    pidfile = tmp_path / "pid"
    spec = StdioSpec(
        "ssh-like", "sh", ("-c", script.format(pidfile=pidfile)), initialize_timeout=0.5
    )
    environment = await one(spec, cleanup)
    started = time.monotonic()
    with pytest.raises(EnvironmentUnavailable) as caught:
        await environment.client()
    assert str(caught.value) == expected
    assert time.monotonic() - started < 5
    if pidfile.exists():  # the program (and its sleep) were stopped, not left behind
        with pytest.raises(ProcessLookupError):
            os.kill(int(pidfile.read_text()), 0)


async def test_a_missing_stdio_program_is_one_saved_spawn_error(
    cleanup: list[EnvironmentManager],
) -> None:
    environment = await one(StdioSpec("ssh-like", "/nonexistent/codexexec"), cleanup)
    assert not environment.startup_finished()
    with pytest.raises(EnvironmentUnavailable) as first:
        await environment.client()
    assert str(first.value) == (
        "environment `ssh-like`: connect: failed to spawn exec-server: No such file or directory"
    )
    assert environment.startup_finished()
    with pytest.raises(EnvironmentUnavailable) as second:
        await environment.wait_until_ready()
    assert second.value is first.value and environment.attempts == 1


async def test_a_stdio_environment_whose_program_died_is_not_respawned(
    tmp_path: Path, cleanup: list[EnvironmentManager]
) -> None:
    marker = tmp_path / "spawned"
    script = f"echo $$ >> {marker}; exec {sys.executable} -m codexexec serve --listen stdio"
    environment = await one(StdioSpec("ssh-like", "sh", ("-c", script)), cleanup)
    client = await environment.client()
    os.kill(int(marker.read_text()), 9)  # the connection was the program: it is gone
    await until(lambda: not client.connected)
    assert environment.status() is Status.DISCONNECTED
    assert await environment.client() is client  # handed back as is, not respawned
    with pytest.raises(ExecServerError, match="exec-server transport disconnected"):
        await client.call("environment/info", {})
    assert len(marker.read_text().splitlines()) == 1 and environment.attempts == 1


async def test_auth_bearer_token_opens_a_guarded_server() -> None:
    from tests.servers import start_server

    with start_server("codexexec", env={"CODEX_EXEC_SERVER_CONNECTION_TOKEN": "sekrit"}) as guarded:
        url = guarded.url.replace("127.0.0.1", "localhost")  # loopback: a token is allowed
        manager = await managed(
            WebSocketSpec("guarded", url, bearer_token="sekrit"),
            WebSocketSpec("anonymous", url),
        )
        try:
            guarded_env, anonymous = manager.get("guarded"), manager.get("anonymous")
            assert guarded_env is not None and anonymous is not None
            assert (await guarded_env.client()).session_id
            with pytest.raises(EnvironmentUnavailable) as caught:
                await anonymous.client()
            assert str(caught.value).startswith("environment `anonymous`: auth: ")
            assert "401" in str(caught.value) and "sekrit" not in repr(guarded_env.spec)
        finally:
            await manager.aclose()


async def test_codexs_noise_variables_send_the_account_id(
    tmp_path: Path, cleanup: list[EnvironmentManager], monkeypatch: pytest.MonkeyPatch
) -> None:
    """CODEX_EXEC_SERVER_NOISE_* make one `remote` environment; the optional account id goes
    to the registry as ChatGPT-Account-ID beside the bearer, as from Codex's harness."""
    from tests.auth_helpers import Recorded, Stub

    def answer(request: Recorded) -> web.Response:
        return web.json_response({"error": {"code": "stop", "message": "stop here"}}, status=500)

    async with Stub(answer) as stub:
        config = load_environments(
            {
                "CODEX_EXEC_SERVER_NOISE_REGISTRY_URL": stub.url,
                "CODEX_EXEC_SERVER_NOISE_ENVIRONMENT_ID": "devbox",
                "CODEX_EXEC_SERVER_NOISE_AUTH_TOKEN": "harness-token-0123456789",
                "CODEX_EXEC_SERVER_NOISE_CHATGPT_ACCOUNT_ID": " acct-42 ",
                "CODEXEXEC_HOME": str(tmp_path),
            }
        )
        assert config.default == "remote" and not config.include_local
        # The token is read when connecting, from the variable the entry names.
        monkeypatch.setenv("CODEX_EXEC_SERVER_NOISE_AUTH_TOKEN", "harness-token-0123456789")
        manager = EnvironmentManager.from_config(config)
        cleanup.append(manager)
        remote = manager.get("remote")
        assert remote is not None
        with pytest.raises(ExecServerError, match="stop here"):
            await remote.client()
    connect = stub.requests[0]
    assert connect.path == "/cloud/environment/devbox/connect"
    assert connect.header("Authorization") == "Bearer harness-token-0123456789"
    assert connect.header("ChatGPT-Account-ID") == "acct-42"
