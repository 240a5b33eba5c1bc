"""The codexexec CLI as a user runs it: real processes, real servers."""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import signal
import subprocess
import time
from pathlib import Path

import pytest

from tests.servers import RunningServer, codexexec_command


def run(
    *args: str, timeout: float = 60, input: bytes | None = None
) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        codexexec_command(*args), capture_output=True, timeout=timeout, input=input, cwd="/tmp"
    )


def assert_gone(pid: int, what: str, within: float = 10) -> None:
    """The process ``pid`` has ended (checked on the host), or the test fails."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.05)
    pytest.fail(f"{what} ({pid}) is still running")


def test_exec_against_the_real_codex_server(codex_server: RunningServer) -> None:
    result = run("exec", "--env", codex_server.url, "--", "sh", "-c", "echo hi; exit 3")
    assert result.stdout == b"hi\n"
    assert result.returncode == 3
    assert result.stderr == b""


@pytest.mark.parametrize("target", ["local", "server"])
def test_exec_streams_stdout_and_stderr_separately(
    target: str, codexexec_server: RunningServer
) -> None:
    env = "local" if target == "local" else codexexec_server.url
    result = run("exec", "--env", env, "--", "sh", "-c", "echo out; echo err >&2; exit 0")
    assert (result.stdout, result.stderr, result.returncode) == (b"out\n", b"err\n", 0)


def test_exec_defaults_to_the_local_environment() -> None:
    result = run("exec", "--", "sh", "-c", "echo $((6*7))")
    assert (result.stdout, result.returncode) == (b"42\n", 0)


def test_exec_cd(codexexec_server: RunningServer) -> None:
    result = run("exec", "--env", codexexec_server.url, "--cd", "/var", "--", "pwd")
    assert result.stdout == b"/var\n"


def test_exec_json_lines_end_with_a_result(server: RunningServer) -> None:
    result = run("exec", "--env", server.url, "--json", "--", "sh", "-c", "echo one; exit 2")
    lines = [json.loads(line) for line in result.stdout.decode().splitlines()]
    assert lines[0] == {"type": "output", "seq": 1, "stream": "stdout", "text": "one\n"}
    final = lines[-1]
    assert final["type"] == "result"
    assert final["exitCode"] == 2 and final["sandboxDenied"] is False
    assert final["sandboxType"] == "linuxSeccomp"  # workspace-write by default
    assert result.returncode == 2


def test_detach_then_read_and_follow(server: RunningServer) -> None:
    started = run(
        "exec",
        "--env",
        server.url,
        "--detach",
        "--",
        "sh",
        "-c",
        "echo first; sleep 1; echo second; exit 4",
    )
    assert started.returncode == 0, started.stderr
    handle = started.stdout.decode().strip()
    assert handle.startswith(server.url + "#") and "\n" not in handle
    time.sleep(0.3)
    snapshot = run("read", handle)
    assert snapshot.stdout == b"first\n"
    followed = run("read", handle, "--follow")
    assert followed.stdout == b"first\nsecond\n"
    assert followed.returncode == 4
    later = run("read", handle, "--after-seq", "1", "--json")
    records = [json.loads(line) for line in later.stdout.decode().splitlines()]
    assert records[0]["text"] == "second\n"
    assert records[-1]["type"] == "status" and records[-1]["closed"] is True


def test_detach_json_prints_the_handle_object(codexexec_server: RunningServer) -> None:
    started = run("exec", "--env", codexexec_server.url, "--detach", "--json", "--", "true")
    record = json.loads(started.stdout)
    assert record["handle"].endswith(f"{record['sessionId']}/{record['processId']}")


def test_tty_forwards_stdin(codexexec_server: RunningServer) -> None:
    result = run(
        "exec",
        "--env",
        codexexec_server.url,
        "--tty",
        "--",
        "sh",
        "-c",
        "read a; echo got:$a",
        input=b"typed\n",
    )
    assert b"got:typed" in result.stdout and result.returncode == 0


@pytest.mark.parametrize("target", ["local", "server"])
def test_piped_stdin_reaches_the_command_and_ends(
    target: str, codexexec_server: RunningServer
) -> None:
    """`producer | codexexec exec -- consumer` works as with ssh: every byte arrives and
    the consumer sees end of input, so it finishes."""
    env = "local" if target == "local" else codexexec_server.url
    data = bytes(range(256)) * 4096  # 1 MiB, every byte value
    result = run("exec", "--env", env, "--", "sh", "-c", "sha256sum; exit 5", input=data)
    expected = hashlib.sha256(data).hexdigest()
    assert (result.stdout.split()[0].decode(), result.returncode) == (expected, 5)
    assert result.stderr == b""


def test_stdin_redirected_from_a_file_reaches_the_command(
    codexexec_server: RunningServer, tmp_path: Path
) -> None:
    # `< file` is a regular file, which an event loop cannot watch like a pipe.
    data = os.urandom(3 * 1024 * 1024)
    source = tmp_path / "input"
    source.write_bytes(data)
    with source.open("rb") as stdin:
        result = subprocess.run(
            codexexec_command("exec", "--env", codexexec_server.url, "--", "sha256sum"),
            stdin=stdin,
            capture_output=True,
            timeout=60,
            cwd="/tmp",
        )
    assert result.stdout.split()[0].decode() == hashlib.sha256(data).hexdigest(), result.stderr


def test_piped_stdin_to_the_real_codex_is_not_forwarded_and_says_why(
    codex_server: RunningServer,
) -> None:
    # Codex's protocol cannot end a process's stdin: forwarding would leave `cat` waiting.
    result = run("exec", "--env", codex_server.url, "--", "sh", "-c", "cat; echo end", input=b"x")
    assert (result.stdout, result.returncode) == (b"end\n", 0)
    assert b"cannot end a command's stdin, so piped input is not forwarded" in result.stderr


def test_close_stdin_is_a_codexexec_extension_refused_for_terminals(
    codexexec_server: RunningServer,
) -> None:
    import asyncio

    from codexexec.client import ExecServerClient, ExecServerError, Exited, Output

    async def scenario() -> None:
        async with await ExecServerClient.connect(codexexec_server.url) as client:
            assert client.can_close_stdin
            process = await client.start(["cat"], cwd="/tmp", pipe_stdin=True)
            assert await process.write(b"one ") == "accepted"
            assert await process.close_stdin() == "accepted"
            with pytest.raises(ExecServerError, match="failed to write to process stdin"):
                await process.write(b"late")
            events = [event async for event in process.events()]
            assert b"".join(e.data for e in events if isinstance(e, Output)) == b"one "
            assert [e.exit_code for e in events if isinstance(e, Exited)] == [0]
            terminal = await client.start(["cat"], cwd="/tmp", tty=True)
            with pytest.raises(ExecServerError, match="closeStdin needs a piped stdin"):
                await terminal.close_stdin()
            await terminal.terminate()

    asyncio.run(scenario())


@pytest.mark.parametrize(
    ("args", "message", "code"),
    [
        (
            ("exec", "--env", "ws://127.0.0.1:9", "--", "true"),
            "cannot connect to ws://127.0.0.1:9",
            125,
        ),
        (("exec", "--env", "nonsense", "--", "true"), "unknown environment `nonsense`", 125),
        (("exec", "--", "/nonexistent/program"), "No such file or directory", 127),
        (("read", "not-a-handle"), "is not a process handle", 2),
        (("exec", "--detach", "--", "true"), "--detach needs a server environment", 2),
        (
            ("serve", "--listen", "ws://localhost:1234"),
            "invalid websocket --listen URL `ws://localhost:1234`; expected `ws://IP:PORT`",
            2,
        ),
    ],
)
def test_errors_are_one_line_without_traceback(
    args: tuple[str, ...], message: str, code: int
) -> None:
    result = run(*args)
    stderr = result.stderr.decode()
    assert result.returncode == code
    assert message in stderr
    assert len(stderr.strip().splitlines()) == 1, stderr
    assert "Traceback" not in stderr


def test_read_of_an_unknown_session_is_a_clear_error(codexexec_server: RunningServer) -> None:
    result = run("read", f"{codexexec_server.url}#no-such-session/p1")
    assert result.returncode == 125
    assert "unknown session id no-such-session" in result.stderr.decode()
    assert "Traceback" not in result.stderr.decode()


def test_serve_prints_the_url_first_and_stops_on_sigterm() -> None:
    process = subprocess.Popen(
        codexexec_command("serve", "--listen", "ws://127.0.0.1:0"), stdout=subprocess.PIPE
    )
    assert process.stdout is not None
    line = process.stdout.readline().decode()
    assert line.startswith("ws://127.0.0.1:") and int(line.strip().rsplit(":", 1)[1]) > 0
    result = run("exec", "--env", line.strip(), "--", "echo", "served")
    assert result.stdout == b"served\n"
    process.terminate()
    assert process.wait(10) == 0


@pytest.mark.parametrize("shell", ["bash", "zsh", "fish"])
def test_committed_completions_match_the_cli(shell: str) -> None:
    import os
    from pathlib import Path

    env = {**os.environ, "_CODEXEXEC_COMPLETE": f"source_{shell}"}
    generated = subprocess.run(codexexec_command(), capture_output=True, env=env, timeout=30).stdout
    committed = (Path(__file__).parent.parent / "completions" / f"codexexec.{shell}").read_bytes()
    assert generated == committed, f"regenerate completions/codexexec.{shell}"


def test_exec_json_ends_with_a_result_record_even_when_nothing_ran() -> None:
    import json as _json

    done = subprocess.run(
        codexexec_command("exec", "--json", "--", "nonexistent-cmd-xyz"),
        capture_output=True,
        timeout=60,
        cwd="/tmp",
    )
    assert done.returncode == 127
    [record] = [_json.loads(line) for line in done.stdout.splitlines()]
    assert record["type"] == "result" and record["exitCode"] == 127
    assert "nonexistent-cmd-xyz" in record["error"]


def test_serve_refuses_an_environment_id_without_remote() -> None:
    done = subprocess.run(
        codexexec_command("serve", "--environment-id", "x"),
        capture_output=True,
        timeout=30,
        stdin=subprocess.DEVNULL,
    )
    assert done.returncode == 2 and "it needs --remote" in done.stderr.decode()


def _alive(marker: str) -> bool:
    found = subprocess.run(["pgrep", "-f", marker], capture_output=True)
    return found.returncode == 0


@pytest.mark.parametrize(
    ("signum", "script", "ends"),
    [
        # Ctrl-C: the command's own handler runs, as with ssh.
        (signal.SIGINT, 'trap "echo got-int; exit 7" INT; sleep {m} & wait', "got-int"),
        # A command that ignores SIGINT is terminated after the grace period.
        (signal.SIGTERM, 'trap "" INT; sleep {m}', ""),
        (signal.SIGHUP, "sleep {m}", ""),
    ],
    ids=["SIGINT", "SIGTERM", "SIGHUP"],
)
def test_a_signal_to_exec_ends_the_remote_command(
    codexexec_server: RunningServer, signum: int, script: str, ends: str
) -> None:
    marker = f"6{secrets.randbelow(10**6)}.5"
    cli = subprocess.Popen(
        codexexec_command(
            *("exec", "--env", codexexec_server.url, "--sandbox", "danger-full-access"),
            *("--", "sh", "-c", script.format(m=marker)),
        ),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        cwd="/tmp",
    )
    deadline = time.monotonic() + 20
    while not _alive(f"^sleep {marker}"):
        assert time.monotonic() < deadline, "the remote command never started"
        time.sleep(0.1)
    cli.send_signal(signum)
    out, err = cli.communicate(timeout=30)
    assert ends in out.decode()
    assert "interrupting" in err.decode()
    deadline = time.monotonic() + 10
    while _alive(f"^sleep {marker}"):
        assert time.monotonic() < deadline, "the remote command outlived the CLI"
        time.sleep(0.1)


def test_an_unreachable_registry_is_named_in_words() -> None:
    import os as _os

    env = {**_os.environ, "CODEXEXEC_REGISTRY_TOKEN": "x"}
    for args in (
        ("exec", "--env", "devbox@http://127.0.0.1:9", "--", "true"),
        ("serve", "--remote", "http://127.0.0.1:9", "--environment-id", "devbox"),
    ):
        done = subprocess.run(
            codexexec_command(*args),
            capture_output=True,
            timeout=60,
            env=env,
            stdin=subprocess.DEVNULL,
        )
        text = done.stderr.decode()
        assert done.returncode == 125 and "connection refused" in text, text
        assert "ClientConnectorError" not in text and text.count("\n") == 1


@pytest.mark.parametrize("target", ["local", "server"])
@pytest.mark.parametrize("data", [b"hello\n", b"partial"], ids=["line", "partial-line"])
def test_tty_fed_from_a_pipe_ends(
    target: str, data: bytes, codexexec_server: RunningServer
) -> None:
    """`echo hello | codexexec exec --tty -- cat` once never exited: the remote terminal now
    gets its end-of-file character when the pipe ends."""
    env = "local" if target == "local" else codexexec_server.url
    result = run(
        "exec",
        "--env",
        env,
        "--sandbox",
        "danger-full-access",
        "--tty",
        "--",
        "cat",
        input=data,
        timeout=30,
    )
    assert result.returncode == 0, result.stderr
    assert data.strip() in result.stdout


@pytest.mark.parametrize(
    ("args", "text"),
    [
        (("rendezvous", "--listen", "bad"), "listen URL must be http://IP:PORT"),
        (("rendezvous", "--bus", "http://x"), "--bus must be a nats:// URL"),
    ],
)
def test_rendezvous_usage_errors_exit_2(args: tuple[str, ...], text: str) -> None:
    done = run(*args)
    assert done.returncode == 2 and text in done.stderr.decode()


def test_an_unreachable_bus_is_reported_without_its_credentials() -> None:
    done = run("rendezvous", "--bus", "nats://alice:s3cret@127.0.0.1:9", timeout=60)
    text = done.stderr.decode()
    assert done.returncode == 1 and "cannot reach the bus at nats://127.0.0.1:9" in text
    assert "s3cret" not in text and "alice" not in text and text.count("\n") == 1


def test_a_sandboxed_exec_leaves_no_zombie_to_a_subreaper_caller() -> None:
    """bwrap's namespace init outlives its monitor; a caller that is a subreaper (a harness,
    tini, a CI runner) must not inherit it as `[bwrap] <defunct>` (#17)."""
    probe = """
import ctypes, os, subprocess, sys, time
ctypes.CDLL(None).prctl(36, 1, 0, 0, 0)  # PR_SET_CHILD_SUBREAPER
for sandbox in ("workspace-write", "read-only", "workspace-write"):
    done = subprocess.run([*sys.argv[1:], "exec", "--sandbox", sandbox, "--", "true"])
    assert done.returncode == 0, done
time.sleep(0.5)
left = []
for pid in os.listdir("/proc"):
    if pid.isdigit():
        try:
            stat = open(f"/proc/{pid}/stat").read()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()
        if int(fields[1]) == os.getpid():
            left.append(stat.split(" ", 1)[1].rsplit(")", 1)[0] + ") " + fields[0])
print(left)
"""
    import sys

    done = subprocess.run(
        [sys.executable, "-c", probe, *codexexec_command()],
        capture_output=True,
        text=True,
        timeout=120,
        cwd="/tmp",
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]", done.stdout


def test_variables_for_the_command_from_flags_and_files(
    server: RunningServer, tmp_path: Path
) -> None:
    """-e KEY=VAL and --env-file, as docker reads them: files first, flags win, `KEY` alone
    passes this shell's value; on codexexec's and on Codex's server alike."""
    env_file = tmp_path / "vars.env"
    env_file.write_text("# settings\nFROM_FILE=file value\n\nBOTH=file\nPASSED\n")
    result = subprocess.run(
        codexexec_command(
            "exec",
            "--env",
            server.url,
            "--env-file",
            str(env_file),
            "-e",
            "BOTH=flag",
            "--setenv",
            "EMPTY=",
            "--",
            "sh",
            "-c",
            'printf "%s|%s|%s|%s" "$FROM_FILE" "$BOTH" "$PASSED" "${EMPTY-unset}"',
        ),
        capture_output=True,
        timeout=60,
        cwd="/tmp",
        env={**os.environ, "PASSED": "from the shell"},
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout == b"file value|flag|from the shell|"
    bad = run("exec", "-e", "NO SPACES=1", "--", "true")
    assert bad.returncode == 2 and b"is not KEY=VAL" in bad.stderr
    missing = run("exec", "--env-file", str(tmp_path / "absent"), "--", "true")
    assert missing.returncode == 2 and b"cannot read the env file" in missing.stderr


@pytest.mark.parametrize("limit", ["--timeout", "--idle-timeout"])
def test_timeouts_end_the_command_and_exit_124(
    limit: str, server: RunningServer, tmp_path: Path
) -> None:
    """Like timeout(1): the command is ended — checked on the host, not by the exit code
    alone — the line says which limit fired, and the exit status is 124."""
    pid_file = tmp_path / "pid"
    script = f"echo $$ > {pid_file}; echo tick; sleep 1; echo tock; exec sleep 60"
    began = time.monotonic()
    result = run(
        "exec",
        "--env",
        server.url,
        "--sandbox",
        "danger-full-access",
        limit,
        "2",
        "--",
        "sh",
        "-c",
        script,
        timeout=60,
    )
    assert result.returncode == 124, result.stderr
    assert result.stdout == b"tick\ntock\n"
    assert f"codexexec: {limit} 2s reached".encode() in result.stderr
    assert time.monotonic() - began < 30
    assert_gone(int(pid_file.read_text()), "the timed-out command")
    json_run = run(
        "exec", "--json", "--env", server.url, "--timeout", "1", "--", "sleep", "30", timeout=60
    )
    assert json_run.returncode == 124
    assert json.loads(json_run.stdout.splitlines()[-1])["timedOut"] == "timeout"


def test_a_lost_connection_is_said_at_once_and_the_command_found_again(
    codexexec_server: RunningServer, tmp_path: Path
) -> None:
    """A cut connection: the CLI says at once that it is reconnecting, then that it is back,
    and the command's output carries on; a server that never comes back gets the handle
    to find the command again (#18)."""
    from tests.tcp_proxy import TcpProxy

    port = int(codexexec_server.url.rsplit(":", 1)[1])
    proxy = TcpProxy(port)
    try:
        process = subprocess.Popen(
            codexexec_command(
                "exec", "--env", proxy.ws_url(), "--", "sh", "-c", "echo one; sleep 2; echo two"
            ),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            cwd="/tmp",
        )
        assert process.stdout is not None and process.stderr is not None
        assert process.stdout.readline() == b"one\n"
        proxy.cut()
        line = process.stderr.readline().decode()
        assert "lost the connection to" in line and "reconnecting for up to 25 s" in line
        assert "reconnected to" in process.stderr.readline().decode()
        out, err = process.communicate(timeout=60)
        assert (process.returncode, out) == (0, b"two\n"), err
    finally:
        proxy.stop()


def test_defaults_in_config_apply_unless_a_flag_says_otherwise(tmp_path: Path) -> None:
    """`[defaults]` in codexexec's config.toml: used when the flag is absent (#18)."""
    home = tmp_path / "home"
    home.mkdir()
    target = Path("/var/lib") / f"cx-defaults-{secrets.token_hex(4)}"

    def cx(*args: str) -> subprocess.CompletedProcess[bytes]:
        return subprocess.run(
            codexexec_command(*args),
            capture_output=True,
            timeout=60,
            cwd="/tmp",
            env={**os.environ, "CODEXEXEC_HOME": str(home)},
        )

    (home / "config.toml").write_text('[defaults]\nsandbox = "read-only"\napproval = "never"\n')
    try:
        denied = cx("exec", "--json", "--", "touch", str(target))
        record = json.loads(denied.stdout.splitlines()[-1])
        assert record["sandboxDenied"] is True and not target.exists()
        allowed = cx("exec", "--sandbox", "danger-full-access", "--", "touch", str(target))
        assert allowed.returncode == 0 and target.exists()
    finally:
        target.unlink(missing_ok=True)
    (home / "config.toml").write_text('[defaults]\nnetwork = "sometimes"\n')
    bad = cx("exec", "--", "true")
    assert bad.returncode == 2
    assert b"defaults.network = 'sometimes': use one of off, proxy, on" in bad.stderr


def test_ps_and_kill_for_detached_processes(
    codexexec_server: RunningServer, tmp_path: Path
) -> None:
    """`ps` lists what `exec --detach` started with its state from the server; `kill` stops
    one — checked on the host (#18)."""
    env = {**os.environ, "CODEXEXEC_HOME": str(tmp_path / "home")}

    def cx(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            codexexec_command(*args), capture_output=True, text=True, env=env, timeout=60
        )

    assert cx("ps").stdout == "no detached processes\n"
    pid_file = tmp_path / "pid"
    sleeper = cx(
        "exec",
        "--detach",
        "--env",
        codexexec_server.url,
        "--sandbox",
        "danger-full-access",  # $$ is then the host's pid
        "--",
        "sh",
        "-c",
        f"echo $$ > {pid_file}; exec sleep 120",
    ).stdout.strip()
    quitter = cx(
        "exec", "--detach", "--env", codexexec_server.url, "--", "sh", "-c", "exit 3"
    ).stdout.strip()
    for _ in range(50):
        states = {r["handle"]: r for r in map(json.loads, cx("ps", "--json").stdout.splitlines())}
        if states.get(quitter, {}).get("state") == "exited" and pid_file.exists():
            break
        time.sleep(0.1)
    assert states[sleeper]["state"] == "running" and states[sleeper]["argv"][0] == "sh"
    assert (states[quitter]["state"], states[quitter]["exitCode"]) == ("exited", 3)
    table = cx("ps").stdout.splitlines()
    assert table[0].split() == ["HANDLE", "STATE", "EXIT", "AGE", "COMMAND"]
    assert any(line.startswith(sleeper) and " running " in line for line in table)
    assert (
        cx("ps", "--env", "ws://127.0.0.1:1").stdout
        == "no detached processes on ws://127.0.0.1:1\n"
    )

    assert cx("kill", sleeper).returncode == 0
    assert_gone(int(pid_file.read_text()), "the killed command")
    again = cx("kill", quitter)
    assert again.returncode == 0 and "has already exited (exit code 3)" in again.stdout
    assert cx("kill", "not-a-handle").returncode == 2


def test_a_server_that_never_comes_back_leaves_the_handle_to_find_the_command() -> None:
    """The server dies mid-command: the loss is said at once, and when the 25 s recovery
    window ends, the line to pick the command up again, not "cannot run" (#18)."""
    from tests.servers import start_server

    with start_server("codexexec") as server:
        process = subprocess.Popen(
            codexexec_command("exec", "--env", server.url, "--", "sh", "-c", "echo up; sleep 60"),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            cwd="/tmp",
        )
        assert process.stdout is not None and process.stderr is not None
        assert process.stdout.readline() == b"up\n"
        lost_at = time.monotonic()
        server.process.kill()
        server.process.wait()
        first = process.stderr.readline().decode()
        assert "lost the connection to" in first and time.monotonic() - lost_at < 5
        _, err = process.communicate(timeout=90)
    assert process.returncode == 125
    text = err.decode()
    assert f"codexexec read {server.url}#" in text and " --follow" in text
    assert f"error: lost `sh` on {server.url}" in text and "cannot run" not in text


def test_piped_input_never_approves_an_unsandboxed_rerun(tmp_path: Path) -> None:
    """`[defaults] approval = "on-failure"` (or the flag) with stdin not a terminal: the
    command's piped data must not answer "run it again without the sandbox" — checked on
    the host: the file the sandbox refused is still absent."""
    home = tmp_path / "home"
    home.mkdir()
    (home / "config.toml").write_text('[defaults]\napproval = "on-failure"\n')
    target = Path("/var/lib") / f"cx-piped-{secrets.token_hex(4)}"
    for flags in ((), ("--approval", "on-failure")):
        result = subprocess.run(
            codexexec_command(
                "exec",
                *flags,
                "--sandbox",
                "read-only",
                "--",
                "sh",
                "-c",
                f"sleep 1; touch {target}",
            ),
            input=b"y\ny\ny\n",
            capture_output=True,
            timeout=60,
            cwd="/tmp",
            env={**os.environ, "CODEXEXEC_HOME": str(home)},
        )
        assert result.returncode == 1, result.stderr
        assert not target.exists()
        assert b"sandbox denied" in result.stderr
        assert b"again without the sandbox" not in result.stderr
