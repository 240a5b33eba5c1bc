"""The remote stack on one machine: rendezvous, a relayed executor, a harness through it."""

from __future__ import annotations

import os
import pty
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.servers import RunningServer, codexexec_command

TOKEN = "relay-test-token"


class Rendezvous:
    """A `codexexec rendezvous` node; ``db`` as for `--db` (default: an SQLite file), ``bus``
    as for `--bus`."""

    def __init__(
        self, tmp: Path, port: int = 0, db: str | None = None, bus: str | None = None
    ) -> None:
        self.tmp = tmp
        tmp.mkdir(parents=True, exist_ok=True)
        (tmp / "tokens").write_text(f"{TOKEN}\n")
        self.process = subprocess.Popen(
            codexexec_command(
                "rendezvous",
                "--listen",
                f"http://127.0.0.1:{port}",
                "--token-file",
                str(tmp / "tokens"),
                "--db",
                db or str(tmp / "rv.sqlite3"),
                *(["--bus", bus] if bus else []),
            ),
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
        )
        assert self.process.stdout is not None
        self.url = self.process.stdout.readline().decode().strip()
        assert self.url.startswith("http://127.0.0.1:"), self.url

    @property
    def port(self) -> int:
        return int(self.url.rsplit(":", 1)[1])

    def kill(self) -> None:
        self.process.send_signal(signal.SIGKILL)
        self.process.wait()


def env() -> dict[str, str]:
    return {**os.environ, "CODEXEXEC_REGISTRY_TOKEN": TOKEN}


def start_executor(*args: str) -> subprocess.Popen[bytes]:
    process = subprocess.Popen(
        codexexec_command(*args), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env()
    )
    assert process.stderr is not None
    line = process.stderr.readline().decode()
    assert "through the relay" in line, line
    return process


def start_forwarder(
    rendezvous: Rendezvous, environment_id: str, target: str
) -> subprocess.Popen[bytes]:
    """`codexexec register --forward`: relay streams of ``environment_id`` to ``target``."""
    return start_executor(
        "register",
        "--remote",
        rendezvous.url,
        "--environment-id",
        environment_id,
        "--forward",
        target,
    )


def cx(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        codexexec_command(*args), capture_output=True, env=env(), timeout=timeout, cwd="/tmp"
    )


@pytest.fixture
def rendezvous(tmp_path: Path) -> Iterator[Rendezvous]:
    rv = Rendezvous(tmp_path)
    yield rv
    rv.kill()


def stop(process: subprocess.Popen[bytes]) -> None:
    process.terminate()
    try:
        process.wait(10)
    except subprocess.TimeoutExpired:
        process.kill()


def test_exec_through_the_relay(rendezvous: Rendezvous) -> None:
    executor = start_executor("serve", "--remote", rendezvous.url, "--environment-id", "devbox")
    try:
        result = cx("exec", "--registry", rendezvous.url, "--env", "devbox", "--", "uname", "-a")
        assert result.returncode == 0, result.stderr
        assert result.stdout.startswith(b"Linux ")
        big = cx(
            "exec",
            "--registry",
            rendezvous.url,
            "--env",
            "devbox",
            "--",
            "head",
            "-c",
            "3000000",
            "/dev/zero",
        )
        assert len(big.stdout) == 3_000_000  # records reassembled across many frames
        wrong = subprocess.run(
            codexexec_command(
                "exec", "--registry", rendezvous.url, "--env", "devbox", "--", "true"
            ),
            capture_output=True,
            env={**os.environ, "CODEXEXEC_REGISTRY_TOKEN": "nope"},
        )
        assert (
            wrong.returncode == 125 and b"authentication failed (401 Unauthorized)" in wrong.stderr
        )
        assert b"nope" not in wrong.stderr
        # --token-file, as `serve` takes it: it is the bearer, over the environment variable.
        token_file = rendezvous.tmp / "harness-token"
        token_file.write_text(f"# the harness's\n{TOKEN}\n")
        with_file = subprocess.run(
            codexexec_command(
                "exec",
                "--registry",
                rendezvous.url,
                "--env",
                "devbox",
                "--token-file",
                str(token_file),
                "--",
                "echo",
                "from-file",
            ),
            capture_output=True,
            env={**os.environ, "CODEXEXEC_REGISTRY_TOKEN": "nope"},
            timeout=60,
        )
        assert (with_file.returncode, with_file.stdout) == (0, b"from-file\n"), with_file.stderr
    finally:
        stop(executor)


def test_register_forward_in_front_of_the_real_codex(
    rendezvous: Rendezvous, codex_server: RunningServer
) -> None:
    forwarder = start_forwarder(rendezvous, "codexbox", codex_server.url)
    try:
        result = cx(
            "exec",
            "--registry",
            rendezvous.url,
            "--env",
            "codexbox",
            "--",
            "sh",
            "-c",
            "echo through codex; exit 4",
        )
        assert result.stdout == b"through codex\n" and result.returncode == 4
    finally:
        stop(forwarder)


def test_detached_process_survives_a_rendezvous_restart(tmp_path: Path) -> None:
    rendezvous = Rendezvous(tmp_path)
    executor = start_executor("serve", "--remote", rendezvous.url, "--environment-id", "devbox")
    try:
        started = cx(
            "exec",
            "--registry",
            rendezvous.url,
            "--env",
            "devbox",
            "--detach",
            "--",
            "sh",
            "-c",
            "for i in $(seq 1 30); do echo line$i; sleep 0.1; done; exit 6",
        )
        handle = started.stdout.decode().strip()
        assert started.returncode == 0 and handle.startswith("devbox@"), started.stderr
        port = rendezvous.port
        rendezvous.kill()  # the executor's socket drops mid-output
        time.sleep(0.5)
        rendezvous = Rendezvous(tmp_path, port)
        deadline = time.monotonic() + 40
        while True:  # the executor reconnects with backoff
            probe = cx(
                "exec", "--registry", rendezvous.url, "--env", "devbox", "--", "true", timeout=20
            )
            if probe.returncode == 0 or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        assert probe.returncode == 0, probe.stderr
        followed = cx("read", handle, "--follow")
        assert followed.stdout.decode().splitlines() == [f"line{i}" for i in range(1, 31)]
        assert followed.returncode == 6
    finally:
        stop(executor)
        rendezvous.kill()


async def test_two_streams_on_one_executor_socket_do_not_interfere(rendezvous: Rendezvous) -> None:
    from codexexec.client import ExecServerClient, Output

    os.environ["CODEXEXEC_REGISTRY_TOKEN"] = TOKEN
    executor = start_executor("serve", "--remote", rendezvous.url, "--environment-id", "devbox")
    try:
        target = f"devbox@{rendezvous.url}"
        first = await ExecServerClient.connect(target)
        second = await ExecServerClient.connect(target)
        assert first.session_id != second.session_id
        slow = await first.start(
            ["sh", "-c", "for i in 1 2 3 4 5; do echo a$i; sleep 0.1; done"], cwd="/tmp"
        )
        quick = await second.start(["sh", "-c", "echo b1"], cwd="/tmp")
        quick_out = b"".join([e.data async for e in quick.events() if isinstance(e, Output)])
        await second.close()  # resets the second stream only
        slow_out = b"".join([e.data async for e in slow.events() if isinstance(e, Output)])
        assert quick_out == b"b1\n"
        assert slow_out == b"a1\na2\na3\na4\na5\n"
        await first.close()
    finally:
        stop(executor)
        os.environ.pop("CODEXEXEC_REGISTRY_TOKEN", None)


def test_executor_with_a_wrong_token_stops_with_one_line(rendezvous: Rendezvous) -> None:
    result = subprocess.run(
        codexexec_command("serve", "--remote", rendezvous.url, "--environment-id", "devbox"),
        capture_output=True,
        timeout=30,
        env={**os.environ, "CODEXEXEC_REGISTRY_TOKEN": "wrong-secret-value"},
    )
    stderr = result.stderr.decode()
    assert result.returncode == 125
    assert "environment registry authentication failed (401 Unauthorized)" in stderr
    assert "wrong-secret-value" not in stderr and "Traceback" not in stderr


def test_a_first_connection_waits_for_a_reconnecting_executor(rendezvous: Rendezvous) -> None:
    """`exec` started while the environment's executor is away is not refused at once
    (`environment_offline`): it tries again within its connect budget and runs once the
    executor is back — as Codex's harness does for an established environment."""
    executor = start_executor("serve", "--remote", rendezvous.url, "--environment-id", "devbox")
    executor.send_signal(signal.SIGKILL)  # gone; the rendezvous notices the closed socket
    executor.wait()
    time.sleep(0.5)
    offline = cx("exec", "--registry", rendezvous.url, "--env", "devbox", "--", "true")
    started = time.monotonic()
    # stderr on a terminal: a person watching is told what the command waits for.
    terminal, stderr = pty.openpty()
    command = subprocess.Popen(
        codexexec_command(
            "exec", "--registry", rendezvous.url, "--env", "devbox", "--", "echo", "back"
        ),
        stdout=subprocess.PIPE,
        stderr=stderr,
        env=env(),
        cwd="/tmp",
    )
    os.close(stderr)
    time.sleep(1.5)
    assert command.poll() is None  # still waiting, not refused
    replacement = start_executor("serve", "--remote", rendezvous.url, "--environment-id", "devbox")
    try:
        out, _ = command.communicate(timeout=30)
        err = _read_all(terminal)
        assert command.returncode == 0, err
        assert out == b"back\n"
        assert time.monotonic() - started < 10  # within the connect budget
        assert b"environment `devbox` is offline (its executor may be reconnecting)" in err
        assert b"Traceback" not in err
    finally:
        os.close(terminal)
        stop(replacement)
    # With nobody coming back, the budget runs out and one line says why.
    assert offline.returncode == 125, offline.stderr
    assert b"environment_offline" in offline.stderr or b"offline" in offline.stderr
    assert b"Traceback" not in offline.stderr


def _read_all(fd: int) -> bytes:
    """What a terminal's other side has written, until it is closed."""
    data = bytearray()
    while True:
        try:
            chunk = os.read(fd, 4096)
        except OSError:  # EIO: every writer has gone
            return bytes(data)
        if not chunk:
            return bytes(data)
        data.extend(chunk)


def test_exec_through_a_rendezvous_on_postgresql(tmp_path: Path) -> None:
    """`rendezvous --db postgresql://…`: the registry lives in PostgreSQL (a private server
    the test starts), and a command runs through the relay as with SQLite."""
    import psycopg

    from tests.pg import private_postgres

    with private_postgres() as server:
        node = Rendezvous(tmp_path, db=server.url)
        try:
            executor = start_executor("serve", "--remote", node.url, "--environment-id", "devbox")
            try:
                result = cx("exec", "--registry", node.url, "--env", "devbox", "--", "echo", "pg")
                assert result.returncode == 0, result.stderr
                assert result.stdout == b"pg\n"
            finally:
                stop(executor)
        finally:
            node.kill()
        with psycopg.connect(server.url) as conn:
            environments = conn.execute("SELECT environment_id FROM environments").fetchall()
        assert environments == [("devbox",)]


def test_a_second_node_on_the_same_database_takes_over(tmp_path: Path) -> None:
    """Two rendezvous nodes on one PostgreSQL behind a load balancer (a TCP proxy here).
    The node holding the executor is shut down (SIGTERM) while a detached command writes;
    the balancer sends new connections to the other node, the executor reconnects there
    with the same signed URL (the nodes share the signing key and the registration), and
    `read HANDLE --follow` through it gets every line exactly once."""
    from tests.pg import private_postgres
    from tests.tcp_proxy import TcpProxy

    with private_postgres() as database:
        (tmp_path / "a").mkdir()
        (tmp_path / "b").mkdir()
        node_a = Rendezvous(tmp_path / "a", db=database.url)
        node_b = Rendezvous(tmp_path / "b", db=database.url)
        balancer = TcpProxy(node_a.port)
        executor = start_executor(
            "serve", "--remote", balancer.http_url(), "--environment-id", "devbox"
        )
        try:
            script = "for i in $(seq 1 80); do echo $i; sleep 0.05; done"
            detached = cx(
                "exec",
                "--registry",
                balancer.http_url(),
                "--env",
                "devbox",
                "--detach",
                "--",
                "sh",
                "-c",
                script,
            )
            assert detached.returncode == 0, detached.stderr
            handle = detached.stdout.decode().strip()
            balancer.upstream_port = node_b.port
            started = time.monotonic()
            node_a.process.terminate()
            node_a.process.wait(15)  # drains and exits within its bound
            assert time.monotonic() - started < 15
            followed = cx("read", handle, "--follow", timeout=90)
            assert followed.returncode == 0, followed.stderr
            assert followed.stdout.decode().split() == [str(i) for i in range(1, 81)]
        finally:
            stop(executor)
            balancer.stop()
            stop(node_a.process)
            stop(node_b.process)


@pytest.mark.parametrize("how", ["flag", "env"])
def test_exit_on_stdin_close(rendezvous: Rendezvous, how: str) -> None:
    """As Codex's flag: the executor reads its bearer from stdin, serves, and exits 0 when
    the parent closes the pipe."""
    extra = ["--exit-on-stdin-close"] if how == "flag" else []
    environ = (
        {**os.environ, "CODEX_EXEC_SERVER_EXIT_ON_STDIN_CLOSE": "true"} if how == "env" else None
    )
    process = subprocess.Popen(
        codexexec_command(
            *(
                "serve",
                "--remote",
                rendezvous.url,
                "--environment-id",
                "piped",
                "--token-stdin",
                *extra,
            ),
            *("--name", "Piped box"),
        ),
        stdin=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        env=environ,
    )
    assert process.stdin is not None and process.stderr is not None
    process.stdin.write(TOKEN.encode() + b"\n")
    process.stdin.flush()
    line = process.stderr.readline().decode()
    assert "serving environment `piped` (Piped box) through the relay" in line, line
    result = cx("exec", "--registry", rendezvous.url, "--env", "piped", "--", "echo", "up")
    assert result.stdout == b"up\n"
    process.stdin.close()
    assert process.wait(10) == 0


@pytest.mark.parametrize(
    ("args", "environ", "text"),
    [
        (("--exit-on-stdin-close",), {}, "needs --remote and --environment-id"),
        (
            (),
            {"CODEX_EXEC_SERVER_EXIT_ON_STDIN_CLOSE": "1"},
            "invalid value '1' for '--exit-on-stdin-close'",
        ),
        (
            (),
            {"CODEX_EXEC_SERVER_EXIT_ON_STDIN_CLOSE": ""},
            "a value is required for '--exit-on-stdin-close'",
        ),
    ],
)
def test_exit_on_stdin_close_refusals(
    args: tuple[str, ...], environ: dict[str, str], text: str
) -> None:
    done = subprocess.run(
        codexexec_command("serve", *args),
        capture_output=True,
        stdin=subprocess.DEVNULL,
        env={**os.environ, **environ},
        timeout=30,
    )
    assert done.returncode == 2 and text in done.stderr.decode()
