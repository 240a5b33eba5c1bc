"""Bad input and failure: clear errors, nothing lost, the server keeps serving."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import os
import shutil
import signal
import struct
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

import pytest
from websockets.exceptions import ConnectionClosed, InvalidStatus

from codexexec.server import warden as warden_script
from tests.servers import RunningServer, codexexec_command, start_server
from tests.wire import Wire, decoded_output


async def connected(url: str) -> Wire:
    wire = await Wire.open(url)
    await wire.initialize()
    return wire


async def test_unknown_notification_closes_only_that_connection(server: RunningServer) -> None:
    bystander = await connected(server.url)
    process_id = f"p-{uuid.uuid4().hex[:6]}"
    await bystander.start(process_id, ["sh", "-c", "sleep 0.5; echo still-here"])
    rude = await connected(server.url)
    await rude.send({"method": "no/such/notification", "params": {}})
    with pytest.raises((ConnectionClosed, asyncio.TimeoutError)):
        await rude.recv(timeout=5)
    events = await bystander.events_until_closed(process_id)
    assert decoded_output(events) == b"still-here\n"
    await bystander.close()


async def test_initialized_before_initialize_closes_the_connection(server: RunningServer) -> None:
    wire = await Wire.open(server.url)
    await wire.send({"method": "initialized", "params": {}})
    with pytest.raises(ConnectionClosed):
        await wire.recv(timeout=5)


async def test_garbage_does_not_lose_retained_output(server: RunningServer) -> None:
    wire = await connected(server.url)
    process_id = f"p-{uuid.uuid4().hex[:6]}"
    await wire.start(process_id, ["sh", "-c", "echo kept"])
    await wire.events_until_closed(process_id)
    for garbage in ("{", "[1,2", '{"id":', "\u0000", '{"method":5}', "null"):
        await wire.send(garbage)
        reply = await wire.recv()
        assert reply["id"] == -1 and reply["error"]["code"] == -32600
    read = await wire.result("process/read", {"processId": process_id, "afterSeq": 0})
    assert base64.b64decode(read["chunks"][0]["chunk"]) == b"kept\n"
    await wire.close()


async def test_invalid_base64_and_bad_write_params(server: RunningServer) -> None:
    wire = await connected(server.url)
    for params in (
        {"processId": "x", "chunk": "!!!", "writeId": "w"},
        {"processId": "x", "chunk": "aGk", "writeId": "w"},
        {"processId": "x", "chunk": "eA==", "writeId": ""},
        {"processId": "x", "chunk": "eA=="},
    ):
        reply = await wire.request("process/write", params)
        assert reply["error"]["code"] == -32602, (params, reply)
    bad_signal = await wire.request("process/signal", {"processId": "x", "signal": "kill"})
    assert bad_signal["error"] == {
        "code": -32602,
        "message": "unknown variant `kill`, expected `interrupt`",
    }
    negative = await wire.request("process/read", {"processId": "x", "afterSeq": -1})
    assert negative["error"]["code"] == -32602
    missing = await wire.request("process/terminate", {})
    assert missing["error"] == {"code": -32602, "message": "missing field `processId`"}
    await wire.close()


async def test_deep_nesting_is_rejected_not_crashing(server: RunningServer) -> None:
    wire = await connected(server.url)
    await wire.send(
        '{"id":1,"method":"environment/status","params":{"x":' + "[" * 5000 + "]" * 5000 + "}}"
    )
    reply = await wire.recv()
    assert reply["id"] == -1 and reply["error"]["code"] == -32600
    assert await wire.result("environment/status", {}) == {"status": "ready"}
    await wire.close()


async def test_oversize_message_closes_only_that_connection() -> None:
    with start_server("codexexec") as running:
        other = await connected(running.url)
        wire = await connected(running.url)
        await wire.send(
            '{"id":1,"method":"environment/status","params":{"x":"'
            + "a" * (65 * 1024 * 1024)
            + '"}}'
        )
        with pytest.raises(ConnectionClosed) as caught:
            await wire.recv(timeout=20)
        assert caught.value.rcvd is not None and caught.value.rcvd.code == 1009  # message too big
        assert await other.result("environment/status", {}) == {"status": "ready"}
        await other.close()


async def test_detached_session_expires_and_kills_its_processes(tmp_path: object) -> None:
    with start_server("codexexec", extra_args=("--detached-session-ttl", "1")) as running:
        wire = await Wire.open(running.url)
        session_id = (await wire.initialize())["sessionId"]
        process_id = "sleeper"
        await wire.start(process_id, ["sh", "-c", "echo $$; exec sleep 60"])
        event = await wire.notification(lambda m: m["method"] == "process/output")
        child_pid = int(base64.b64decode(event["params"]["chunk"]))
        await wire.close()
        await asyncio.sleep(2.0)
        assert not _alive(child_pid)
        again = await Wire.open(running.url)
        reply = await again.request(
            "initialize", {"clientName": "t", "resumeSessionId": session_id}
        )
        assert reply["error"] == {"code": -32600, "message": f"unknown session id {session_id}"}
        await again.close()


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as stat:
            fields = stat.read().split(") ", 1)
    except (FileNotFoundError, ProcessLookupError):
        return False
    # A process being reaped as it is read shows an empty stat.
    return len(fields) == 2 and fields[1][:1] not in ("Z", "")


@pytest.mark.parametrize(
    ("sandboxed", "tty"), [(False, False), (True, False), (False, True), (True, True)]
)
async def test_children_die_with_a_killed_server(
    sandboxed: bool, tty: bool, tmp_path: Path
) -> None:
    # A duration no other process uses, to find the child on the host (in a sandbox its
    # pid is the namespace's).
    marker = f"60.{uuid.uuid4().int % 10**6:06d}"
    extra: dict[str, object] = {"tty": tty}
    if sandboxed:
        if shutil.which("bwrap") is None:
            pytest.skip("bubblewrap not installed")
        extra["sandbox"] = _workspace_write(tmp_path)
    with start_server("codexexec") as running:
        wire = await connected(running.url)
        # A background grandchild in the command's process group must go too. Both ignore
        # SIGHUP, so a terminal's hangup alone would not end them.
        script = f"trap '' HUP; sleep {marker} & echo up; exec sleep {marker}"
        await wire.start("orphan?", ["sh", "-c", script], **extra)
        await wire.notification(lambda m: m["method"] == "process/output")
        await _kill_server_and_expect_gone(running, await _two_running(marker))


async def test_a_killed_warden_is_replaced_and_keeps_every_child_covered() -> None:
    marker = f"60.{uuid.uuid4().int % 10**6:06d}"
    with start_server("codexexec") as running:
        wire = await connected(running.url)
        await wire.start("first", ["sh", "-c", f"echo up; exec sleep {marker}"])
        await wire.notification(lambda m: m["method"] == "process/output")
        wardens = [pid for pid in _children_of(running.process.pid) if _is_warden(pid)]
        assert len(wardens) == 1
        os.kill(wardens[0], signal.SIGKILL)  # the next start notices and replaces it
        deadline = time.monotonic() + 5
        while _alive(wardens[0]) and time.monotonic() < deadline:
            await asyncio.sleep(0.01)  # gone, its end of the pipe closed
        await wire.start("second", ["sh", "-c", f"exec sleep {marker}"])
        await _kill_server_and_expect_gone(running, await _two_running(marker))


async def _two_running(marker: str) -> list[int]:
    """The two processes running ``sleep MARKER`` (waiting for the shell's exec)."""
    deadline = time.monotonic() + 5
    while len(children := _pids_running(marker)) < 2 and time.monotonic() < deadline:
        await asyncio.sleep(0.02)
    assert len(children) == 2
    return children


async def _kill_server_and_expect_gone(running: RunningServer, children: list[int]) -> None:
    running.process.send_signal(signal.SIGKILL)
    running.process.wait()
    deadline = time.monotonic() + 5
    while any(_alive(pid) for pid in children) and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    assert not any(_alive(pid) for pid in children)


def _children_of(pid: int) -> list[int]:
    found = []
    for task in os.listdir(f"/proc/{pid}/task"):
        with contextlib.suppress(OSError), open(f"/proc/{pid}/task/{task}/children") as f:
            found += [int(child) for child in f.read().split()]
    return found


def _is_warden(pid: int) -> bool:
    with contextlib.suppress(OSError), open(f"/proc/{pid}/cmdline", "rb") as cmdline:
        return b"/warden.py\0" in cmdline.read()
    return False


def test_the_warden_kills_only_the_groups_still_in_its_table_when_its_pipe_ends() -> None:
    """What keeps a killed executor from leaving orphans without a pre-exec hook per child
    (codexexec/server/warden.py): a group cleared from the table before its leader was
    reaped is never signalled, since its id may belong to someone else by then."""
    marker = f"60.{uuid.uuid4().int % 10**6:06d}"
    kept, dropped = (subprocess.Popen(["sleep", marker], start_new_session=True) for _ in range(2))
    table = os.memfd_create("warden-test")
    os.write(table, struct.pack("<III", dropped.pid, kept.pid, 0))
    read_end, write_end = os.pipe()
    warden = subprocess.Popen(
        [sys.executable, "-I", "-S", warden_script.__file__, str(table)],
        stdin=read_end,
        start_new_session=True,
        pass_fds=(table,),
    )
    os.close(read_end)
    os.pwrite(table, struct.pack("<I", 0), 0)  # dropped: deregistered while it runs
    time.sleep(0.2)
    assert warden.poll() is None  # it waits for its pipe, whatever the table holds
    os.close(write_end)  # as when the executor dies
    assert warden.wait(10) == 0
    assert kept.wait(5) == -signal.SIGKILL
    assert dropped.poll() is None
    dropped.kill()
    dropped.wait()
    os.close(table)


def test_a_pid_registered_twice_takes_one_slot_and_leaves_with_its_deregistration() -> None:
    """A pid seen again (its old entry stale, the number reused) must not leave a copy in the
    warden's table that would kill the new owner's group once the executor is gone."""
    from codexexec.server.spawn import _Warden

    warden = _Warden()
    assert warden.start()
    # Above Linux's largest pid_max: no group the warden could kill at the end.
    assert warden.register(4_194_401) and warden.register(4_194_401)
    assert warden.register(4_194_402)
    warden.deregister(4_194_401)
    assert warden._table is not None
    table = os.pread(warden._table, 64, 0)
    slots = [pid for (pid,) in struct.iter_unpack("<I", table) if pid]
    assert slots == [4_194_402]
    assert warden._pipe is not None
    os.close(warden._pipe)  # the warden ends: its pipe is gone


def _pids_running(argument: str) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            with contextlib.suppress(OSError), open(f"/proc/{entry}/cmdline", "rb") as cmdline:
                if argument.encode() in cmdline.read().split(b"\0"):
                    found.append(int(entry))
    return found


def _workspace_write(workspace: Path) -> dict[str, object]:
    from codexexec.protocol.path_uri import PathUri
    from codexexec.sandbox.policy import legacy_profile, sandbox_context_json

    uri = str(PathUri.from_host_native_path(str(workspace)))
    profile = legacy_profile("workspace-write")
    assert profile is not None
    return sandbox_context_json(profile, uri, [uri])


async def test_connection_token_gates_websocket_not_readyz() -> None:
    token = "s3cret-token-value"
    with start_server("codexexec", env={"CODEX_EXEC_SERVER_CONNECTION_TOKEN": token}) as running:
        with pytest.raises(InvalidStatus) as caught:
            await Wire.open(running.url)
        assert caught.value.response.status_code == 401
        with pytest.raises(InvalidStatus):
            await Wire.open(running.url, additional_headers={"Authorization": "Bearer wrong"})
        wire = await Wire.open(running.url, additional_headers={"Authorization": f"Bearer {token}"})
        await wire.initialize()
        await wire.close()
        url = running.url.replace("ws://", "http://") + "/readyz"
        status = await asyncio.to_thread(lambda: urllib.request.urlopen(url, timeout=5).status)
        assert status == 200


def test_token_never_reaches_output_or_logs() -> None:
    token = "tok-" + uuid.uuid4().hex
    env = {**os.environ, "CODEX_EXEC_SERVER_CONNECTION_TOKEN": token}
    server = subprocess.Popen(
        codexexec_command("serve", "--log-level", "debug"),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
    )
    assert server.stdout is not None
    url = server.stdout.readline().decode().strip()
    good = subprocess.run(
        codexexec_command("exec", "--env", url, "--", "true"),
        capture_output=True,
        env=env,
        timeout=30,
    )
    bad_env = {**os.environ, "CODEX_EXEC_SERVER_CONNECTION_TOKEN": "other-" + token}
    bad = subprocess.run(
        codexexec_command("exec", "--env", url, "--", "true"),
        capture_output=True,
        env=bad_env,
        timeout=30,
    )
    server.terminate()
    _, server_err = server.communicate(timeout=10)
    assert good.returncode == 0
    assert bad.returncode == 125 and b"HTTP 401" in bad.stderr
    for blob in (good.stdout, good.stderr, bad.stdout, bad.stderr, server_err):
        assert token.encode() not in blob


def test_readyz_is_plain_http() -> None:
    with start_server("codexexec") as running:
        url = running.url.replace("ws://", "http://")
        with pytest.raises(urllib.error.HTTPError):
            urllib.request.urlopen(url + "/", timeout=5)


def _rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError("no VmRSS")


async def test_an_idle_executor_uses_no_more_memory_than_codexs() -> None:
    """An executor sits idle on devboxes most of its life; it must not cost more than
    Codex's own (features it has not been asked for, like the HTTP client, stay unloaded)."""
    idle: dict[str, int] = {}
    for kind in ("codexexec", "codex"):
        with start_server(kind) as running:
            wire = await connected(running.url)
            await asyncio.sleep(0.5)
            idle[kind] = _rss_kib(running.process.pid)
            await wire.close()
    assert idle["codexexec"] <= idle["codex"], idle


def _rss_mb(pid: int, key: str) -> float:
    with open(f"/proc/{pid}/status") as status:
        line = next(line for line in status if line.startswith(key))
    return int(line.split()[1]) / 1024


async def _pipelined_starts(wire: Wire, count: int, argv: list[str]) -> list[dict[str, object]]:
    """Send ``count`` process/start requests at once; their replies, in order."""
    base = {"cwd": "file:///tmp", "env": {"PATH": "/usr/bin:/bin"}, "tty": False}
    for i in range(count):
        params = {"processId": f"f{i}", "argv": argv, **base}
        await wire.send({"id": f"s{i}", "method": "process/start", "params": params})
    return [await wire.response(f"s{i}", timeout=120) for i in range(count)]


async def test_a_flood_of_starts_stays_within_twice_the_idle_memory() -> None:
    """2,000 pipelined starts on one connection: every one is answered, the server's peak
    RSS stays within 2x its idle RSS, and only the newest 1,024 closed processes stay
    readable (protocol/limits.py)."""
    with start_server("codexexec") as running:
        wire = await connected(running.url)
        await asyncio.sleep(0.3)
        idle = _rss_mb(running.process.pid, "VmRSS")
        replies = await _pipelined_starts(wire, 2000, ["true"])
        assert all("result" in reply for reply in replies)
        await wire.notification(
            lambda m: m["method"] == "process/closed" and m["params"]["processId"] == "f1999",
            timeout=60,
        )
        peak = _rss_mb(running.process.pid, "VmHWM")
        assert peak <= 2 * idle, (idle, peak)
        newest = await wire.result("process/read", {"processId": "f1999"})
        assert newest["exitCode"] == 0
        forgotten = await wire.request("process/read", {"processId": "f0"})
        assert forgotten["error"]["message"] == "unknown process id f0"
        await wire.close()


async def test_running_processes_per_session_are_bounded() -> None:
    with start_server("codexexec") as running:
        wire = await connected(running.url)
        replies = await _pipelined_starts(wire, 513, ["sleep", "60"])
        assert all("result" in reply for reply in replies[:512])
        assert replies[512]["error"] == {
            "code": -32600,
            "message": "too many running processes in this session (512, the limit is 512); "
            "wait for some to exit",
        }
        # The connection goes on: once one ends, a start fits again.
        await wire.result("process/terminate", {"processId": "f0"})
        await wire.notification(
            lambda m: m["method"] == "process/closed" and m["params"]["processId"] == "f0"
        )
        params = {"processId": "again", "argv": ["true"], "cwd": "file:///tmp", "env": {}}
        assert "result" in await wire.request("process/start", {**params, "tty": False})
        await wire.close()


async def test_detached_sessions_are_bounded_and_idle_ones_end_first(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A client that reconnects without resuming must not pile up sessions for the whole
    TTL; past the bound the longest-detached session with nothing running ends, so a
    detached job (`exec --detach`) is the last to go."""
    from codexexec.client import ExecServerClient, ExecServerError
    from codexexec.server import session as session_module
    from codexexec.server.app import ExecServer
    from codexexec.transport.memory import memory_pair

    monkeypatch.setattr(session_module, "MAX_DETACHED_SESSIONS", 2)
    server = ExecServer()
    serving: list[asyncio.Task[None]] = []

    async def connect(resume: str | None = None) -> ExecServerClient:
        client_end, server_end = memory_pair()
        serving.append(asyncio.create_task(server.serve(server_end, malformed_prefix="x")))
        return await ExecServerClient.over(
            client_end, description="in-process", resume_session_id=resume
        )

    async def detach(client: ExecServerClient) -> str:
        await client.close()
        await asyncio.wait_for(serving[-1], 5)  # the server saw the connection end
        return client.session_id

    busy = await connect()
    job = await busy.start(["sleep", "30"], cwd="/tmp", inherit_env=False)
    busy_id = await detach(busy)
    idle_ids = [await detach(await connect()) for _ in range(2)]  # the third detached
    with pytest.raises(ExecServerError, match="unknown session id"):
        await connect(resume=idle_ids[0])  # the longest-detached idle one ended
    again = await connect(resume=busy_id)  # the busy one is still there, its job running
    assert (await again.read(job.process_id)).exited is False
    await again.close()
    assert (await connect(resume=idle_ids[1])).session_id == idle_ids[1]
    await server.aclose()
