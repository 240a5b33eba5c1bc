"""`exec --detach` on a stdio environment: the keeper holds `codexexec serve --listen stdio`
so `read HANDLE --follow` reattaches from other processes. Real CLI, keeper and server."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from codexexec.environments.config import StdioSpec
from codexexec.environments.keeper_paths import KeeperPaths
from tests.servers import codexexec_command
from tests.test_env_cli import cli_env, cx, follow, write_config

SECRET = "s3cr3t-keeper-value"
LINES = 20
# About 2 s of output, then exit code 7.
SLOW = f"for i in $(seq 1 {LINES}); do echo line$i; sleep 0.1; done; exit 7"
EXPECTED = [f"line{i}" for i in range(1, LINES + 1)]
SPEC = StdioSpec(
    id="ssh-like",
    program="codexexec",
    args=("serve", "--listen", "stdio"),
    env={"KEEPER_TEST_SECRET": SECRET},
)


@pytest.fixture
def home(tmp_path: Path) -> Iterator[Path]:
    home = tmp_path / "home"
    write_config(
        home,
        """[[environments]]
id = "ssh-like"
program = "codexexec"
args = ["serve", "--listen", "stdio"]
env = { KEEPER_TEST_SECRET = "s3cr3t-keeper-value" }

[[environments]]
id = "broken"
program = "sh"
args = ["-c", "echo no such host >&2; exit 255"]
""",
    )
    try:
        yield home
    finally:
        for pid in ours(home, "codexexec.environments.keeper"):
            os.kill(pid, signal.SIGTERM)
        wait_for(lambda: not ours(home, "codexexec.environments.keeper"), 5)


def ours(home: Path, marker: str) -> list[int]:
    """Processes started for this test's home whose command line contains ``marker``."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
            environ = (entry / "environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if marker in cmdline and f"CODEXEXEC_HOME={home}".encode() in environ:
            found.append(int(entry.name))
    return found


def wait_for(condition: object, timeout: float) -> bool:
    assert callable(condition)
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def paths(home: Path) -> KeeperPaths:
    return KeeperPaths.for_spec(SPEC, {"CODEXEXEC_HOME": str(home)})


def detach(home: Path, script: str, **env: str) -> str:
    started = cx_env(home, env, "exec", "--env", "ssh-like", "--detach", "--", "sh", "-c", script)
    assert started.returncode == 0, started.stderr
    handle = started.stdout.strip()
    assert handle.startswith("ssh-like#"), handle
    return handle


def cx_env(home: Path, extra: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        codexexec_command(*args),
        capture_output=True,
        text=True,
        env={**cli_env(home), **extra},
        timeout=60,
        cwd="/tmp",
    )


def test_detach_returns_at_once_and_a_later_read_follows_everything_through_the_keeper(
    home: Path,
) -> None:
    started = time.monotonic()
    handle = detach(home, SLOW)
    detach_seconds = time.monotonic() - started
    assert detach_seconds < 1.8  # returned well before the ~2 s of output ended
    followed = cx(home, "read", handle, "--follow")
    assert followed.stdout.splitlines() == EXPECTED, followed.stderr
    assert followed.returncode == 7
    # From yet another process, the retained output again (the session is still held).
    again = cx(home, "read", handle)
    assert again.stdout.splitlines() == EXPECTED and again.returncode == 0, again.stderr
    # The entry's env values never reach the keeper's log or the runtime dir.
    for path in paths(home).directory.iterdir():
        if path.is_file():
            assert SECRET not in path.read_text(errors="replace"), path
    assert oct(paths(home).directory.stat().st_mode & 0o777) == "0o700"


def test_two_detaches_share_one_keeper_and_one_server_and_two_readers_follow_at_once(
    home: Path,
) -> None:
    # Two separate commands at the same moment: the start lock lets one keeper start.
    starts = [
        follow(home, "exec", "--env", "ssh-like", "--detach", "--", "sh", "-c", SLOW)
        for _ in range(2)
    ]
    handles = []
    for start in starts:
        out, err = start.communicate(timeout=60)
        assert start.returncode == 0, err
        handles.append(out.strip())
    assert handles[0].split("/")[0] == handles[1].split("/")[0]  # one session
    assert handles[0] != handles[1]
    assert len(ours(home, "codexexec.environments.keeper")) == 1
    assert len(ours(home, "serve --listen stdio")) == 1
    # Two readers attached to the keeper at the same time, one of them on each process
    # and a third on the first process again.
    readers = [follow(home, "read", h, "--follow") for h in (*handles, handles[0])]
    for reader in readers:
        out, err = reader.communicate(timeout=60)
        assert out.splitlines() == EXPECTED and reader.returncode == 7, err


def test_the_keeper_outlives_a_reader_then_ends_after_its_idle_ttl_and_removes_its_socket(
    home: Path,
) -> None:
    handle = detach(home, "echo first; sleep 1.5; echo second", CODEXEXEC_KEEPER_IDLE_TTL="1")
    socket_path = paths(home).socket
    assert socket_path.exists()
    # Attached for longer than the TTL: the keeper stays.
    followed = cx(home, "read", handle, "--follow")
    assert followed.stdout.splitlines() == ["first", "second"], followed.stderr
    assert ours(home, "codexexec.environments.keeper")
    # Nobody attached: it ends about 1 s later and takes its socket and server with it.
    assert wait_for(lambda: not ours(home, "codexexec.environments.keeper"), 5)
    assert not socket_path.exists()
    assert not ours(home, "serve --listen stdio")
    late = cx(home, "read", handle)
    assert late.returncode != 0
    line = late.stderr.strip()
    assert line == (
        "codexexec: error: environment `ssh-like`: connect: its keeper stopped after 1 s "
        "with no client attached; the session and its processes are gone"
    )


def test_a_killed_stdio_program_gives_the_reader_a_clear_error(home: Path) -> None:
    handle = detach(home, "for i in $(seq 1 100); do echo line$i; sleep 0.1; done")
    reader = follow(home, "read", handle, "--follow")
    time.sleep(1.0)
    (server,) = ours(home, "serve --listen stdio")
    os.kill(server, signal.SIGKILL)
    out, err = reader.communicate(timeout=30)
    assert reader.returncode != 0
    assert out.splitlines() == EXPECTED[: len(out.splitlines())]  # what came, in order
    assert err.strip().endswith(
        "environment `ssh-like`: the exec-server `codexexec serve --listen stdio` ended: "
        "exec-server transport closed (the program was killed by signal 9); "
        "the session and its processes are gone"
    ), err
    assert SECRET not in err
    assert wait_for(lambda: not ours(home, "codexexec.environments.keeper"), 5)
    later = cx(home, "read", handle)
    assert "environment `ssh-like`: connect: the exec-server" in later.stderr, later.stderr


def test_a_stale_socket_is_replaced(home: Path) -> None:
    keeper = paths(home)
    keeper.prepare()
    # A dead keeper's socket: bound, nobody listening.
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(str(keeper.socket))
    stale.close()
    nothing = cx(home, "read", "ssh-like#0000/cx-1")
    assert "connect: no keeper holds its sessions" in nothing.stderr, nothing.stderr
    handle = detach(home, "echo fresh")
    followed = cx(home, "read", handle, "--follow")
    assert followed.stdout == "fresh\n" and followed.returncode == 0, followed.stderr


def test_a_program_that_fails_at_once_gives_one_line_naming_environment_and_step(
    home: Path,
) -> None:
    started = cx(home, "exec", "--env", "broken", "--detach", "--", "true")
    assert started.returncode != 0 and started.stdout == ""
    assert started.stderr == (
        "codexexec: error: environment `broken`: initialize: exec-server transport closed "
        "(the program exited with code 255): no such host\n"
    )
    assert not ours(home, "codexexec.environments.keeper")


def test_a_client_that_stops_reading_is_disconnected_and_the_others_carry_on(home: Path) -> None:
    handle = detach(home, "sleep 1; head -c 12000000 /dev/zero; echo; echo done")
    stuck = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stuck.connect(str(paths(home).socket))
    stuck.sendall(b'{"id":1,"method":"initialize","params":{"clientName":"stuck"}}\n')
    stuck.sendall(b'{"method":"initialized"}\n')
    # It never reads: the ~16 MB of output notifications would pile up in the keeper.
    # The keeper holds everyone back for 5 s, then drops it; a reader then gets it all.
    started = time.monotonic()
    followed = cx(home, "read", handle, "--follow")
    assert time.monotonic() - started < 20
    assert followed.returncode == 0 and followed.stdout.endswith("\ndone\n"), followed.stderr
    (keeper,) = ours(home, "codexexec.environments.keeper")
    rss_kb = int(
        next(
            line.split()[1]
            for line in Path(f"/proc/{keeper}/status").read_text().splitlines()
            if line.startswith("VmHWM:")
        )
    )
    assert rss_kb < 120_000, rss_kb
    # Dropped: what the socket still holds, then end of stream.
    stuck.settimeout(10)
    while stuck.recv(1 << 20):
        pass
    stuck.close()


def test_the_keeper_gates_a_client_as_the_server_does(home: Path) -> None:
    """One lifecycle gate (rpc/lifecycle.py) for the server and the keeper: the same
    refusals, in Codex's words, naming the method's family."""
    import json

    detach(home, "sleep 30")
    client = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    client.connect(str(paths(home).socket))
    client.settimeout(10)
    reader = client.makefile("rb")

    def ask(message: dict[str, object]) -> dict[str, object]:
        client.sendall(json.dumps(message).encode() + b"\n")
        reply: dict[str, object] = json.loads(reader.readline())
        return reply

    early = ask({"id": 1, "method": "process/read", "params": {"processId": "x"}})
    assert early["error"] == {
        "code": -32600,
        "message": "client must call initialize before using exec methods",
    }
    assert "result" in ask({"id": 2, "method": "initialize", "params": {"clientName": "t"}})
    again = ask({"id": 3, "method": "initialize", "params": {"clientName": "t"}})
    assert again["error"]["message"] == "initialize may only be sent once per connection"  # type: ignore[index]
    waiting = ask({"id": 4, "method": "fs/getMetadata", "params": {"path": "file:///tmp"}})
    assert waiting["error"]["message"] == (  # type: ignore[index]
        "client must send initialized before using filesystem methods"
    )
    client.close()
