"""`codexexec exec --env NAME`, `env list|check|import`, and detached processes that outlive
a dropped connection: the real CLI against real servers, a real rendezvous and a proxy."""

from __future__ import annotations

import json
import os
import pty
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.servers import RunningServer, codexexec_command
from tests.tcp_proxy import TcpProxy
from tests.test_relay_e2e import TOKEN, Rendezvous, start_executor, stop

BIN = str(Path(sys.executable).parent)
LINES = 40
SLOW_LINES = f"for i in $(seq 1 {LINES}); do echo line$i; sleep 0.1; done; exit 6"


def cli_env(home: Path) -> dict[str, str]:
    # `program = "codexexec"` in the file is found on PATH, as a user's would be.
    return {
        **os.environ,
        "CODEXEXEC_HOME": str(home),
        "CODEXEXEC_REGISTRY_TOKEN": TOKEN,
        "PATH": f"{BIN}:{os.environ['PATH']}",
    }


def cx(home: Path, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        codexexec_command(*args),
        capture_output=True,
        text=True,
        env=cli_env(home),
        timeout=timeout,
        cwd="/tmp",
    )


def write_config(home: Path, text: str) -> None:
    home.mkdir(exist_ok=True)
    (home / "environments.toml").write_text(text)


def follow(home: Path, *args: str) -> subprocess.Popen[str]:
    """A codexexec command in the background, logging its session recoveries."""
    return subprocess.Popen(
        codexexec_command(*args),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**cli_env(home), "CODEXEXEC_LOG": "info"},
    )


def wait_until_ok(home: Path, name: str, timeout: float = 40) -> None:
    deadline = time.monotonic() + timeout
    while True:
        probe = cx(home, "env", "check", name, "--json", timeout=30)
        if probe.returncode == 0 or time.monotonic() > deadline:
            break
        time.sleep(0.3)
    assert probe.returncode == 0, probe.stdout + probe.stderr


@pytest.fixture
def devbox(tmp_path: Path) -> Iterator[tuple[Path, Rendezvous, TcpProxy]]:
    """A `devbox` registry entry whose executor reaches the rendezvous through a proxy
    (so its connection can be cut and restored), and an `ssh-like` stdio entry."""
    rendezvous = Rendezvous(tmp_path)
    proxy = TcpProxy(rendezvous.port)
    executor = start_executor("serve", "--remote", proxy.http_url(), "--environment-id", "devbox")
    home = tmp_path / "home"
    write_config(
        home,
        f"""default = "devbox"

[[environments]]
id = "devbox"
registry = "{rendezvous.url}"

[[environments]]
id = "ssh-like"
program = "codexexec"
args = ["serve", "--listen", "stdio"]
""",
    )
    try:
        yield home, rendezvous, proxy
    finally:
        stop(executor)
        proxy.stop()
        rendezvous.kill()


def test_devbox_and_ssh_like_run_commands_and_a_detached_process_survives_a_cut(
    devbox: tuple[Path, Rendezvous, TcpProxy],
) -> None:
    home, _, proxy = devbox
    on_devbox = cx(home, "exec", "--env", "devbox", "--", "sh", "-c", "echo devbox; exit 4")
    assert (on_devbox.stdout, on_devbox.returncode) == ("devbox\n", 4), on_devbox.stderr
    by_default = cx(home, "exec", "--", "echo", "default")  # `default = "devbox"`
    assert by_default.stdout == "default\n" and by_default.returncode == 0
    on_stdio = cx(home, "exec", "--env", "ssh-like", "--", "sh", "-c", "echo stdio; exit 5")
    assert (on_stdio.stdout, on_stdio.returncode) == ("stdio\n", 5), on_stdio.stderr

    started = cx(home, "exec", "--env", "devbox", "--detach", "--", "sh", "-c", SLOW_LINES)
    handle = started.stdout.strip()
    assert started.returncode == 0 and handle.startswith("devbox#"), started.stderr
    # A reader following from another terminal while the executor's connection drops.
    follower = follow(home, "read", handle, "--follow")
    time.sleep(1.0)
    before = proxy.accepted
    proxy.cut()  # the executor's relay connection (and its registry session) is gone
    time.sleep(0.3)
    wait_until_ok(home, "devbox")  # the executor reconnected by itself
    assert proxy.accepted > before
    followed_out, followed_err = follower.communicate(timeout=60)
    expected = [f"line{i}" for i in range(1, LINES + 1)]
    assert followed_out.splitlines() == expected, followed_err
    assert follower.returncode == 6
    assert f"devbox: resumed session {handle.split('#')[1].split('/')[0]}" in followed_err
    # And later, from yet another process, the whole output again.
    again = cx(home, "read", handle, "--follow")
    assert again.stdout.splitlines() == expected and again.returncode == 6, again.stderr


@pytest.fixture
def box(tmp_path: Path, codexexec_server: RunningServer) -> Iterator[tuple[Path, TcpProxy]]:
    """A websocket entry `box` whose connections go through a proxy that can cut them."""
    proxy = TcpProxy(int(codexexec_server.url.rsplit(":", 1)[1]))
    home = tmp_path / "home"
    write_config(home, f'[[environments]]\nid = "box"\nurl = "{proxy.ws_url()}"\n')
    yield home, proxy
    proxy.stop()


def cut_while_running(proxy: TcpProxy, running: subprocess.Popen[str]) -> tuple[str, str]:
    """Cut every connection a second into ``running``; its output once it is done."""
    time.sleep(1.0)
    proxy.cut()
    out, err = running.communicate(timeout=60)
    assert out.splitlines() == [f"line{i}" for i in range(1, LINES + 1)], err
    assert running.returncode == 6 and "box: resumed session" in err
    return out, err


def test_detach_on_a_websocket_environment_and_follow_across_a_dropped_connection(
    box: tuple[Path, TcpProxy],
) -> None:
    home, proxy = box
    started = cx(home, "exec", "--env", "box", "--detach", "--", "sh", "-c", SLOW_LINES)
    handle = started.stdout.strip()
    assert started.returncode == 0 and handle.startswith("box#"), started.stderr
    cut_while_running(proxy, follow(home, "read", handle, "--follow"))
    # detach, follow, then the resume (retried while the server still held the old socket)
    assert proxy.accepted >= 3


def test_exec_streams_on_across_a_dropped_connection(box: tuple[Path, TcpProxy]) -> None:
    home, proxy = box
    cut_while_running(proxy, follow(home, "exec", "--env", "box", "--", "sh", "-c", SLOW_LINES))


def test_env_list_and_check(tmp_path: Path, codexexec_server: RunningServer) -> None:
    home = tmp_path / "home"
    marker = tmp_path / "spawned"
    write_config(
        home,
        f"""[[environments]]
id = "box"
url = "{codexexec_server.url}"

[[environments]]
id = "gone"
url = "ws://127.0.0.1:9"
connect_timeout_sec = 2

[[environments]]
id = "ssh-like"
program = "sh"
args = ["-c", "echo x >> {marker}; exec codexexec serve --listen stdio"]
""",
    )
    listed = cx(home, "env", "list", "--json")
    assert listed.returncode == 0, listed.stderr
    rows = {row["id"]: row for row in map(json.loads, listed.stdout.splitlines())}
    assert list(rows) == ["local", "box", "gone", "ssh-like"]
    assert rows["local"]["default"] and rows["local"]["state"] == "ready"
    assert rows["box"]["state"] == "ready" and rows["box"]["latencyMs"] > 0
    assert rows["box"]["kind"] == "websocket" and rows["box"]["target"] == codexexec_server.url
    assert rows["gone"]["state"] == "disconnected" and rows["gone"]["latencyMs"] is None
    assert rows["gone"]["error"].startswith("environment `gone`: connect: cannot connect to")
    assert rows["ssh-like"]["state"] == "pending" and not marker.exists()  # never spawned

    table = cx(home, "env", "list").stdout.splitlines()
    assert table[0].split() == ["ID", "KIND", "TARGET", "STATE", "LATENCY"]
    assert any(line.startswith("ssh-like") and "pending (starts on use)" in line for line in table)

    checked = cx(home, "env", "check", "ssh-like", "--json")
    result = json.loads(checked.stdout)
    assert checked.returncode == 0 and result["ok"] and marker.read_text() == "x\n"
    assert list(result["stepsMs"]) == ["connect", "initialize", "environment/info"]
    assert result["info"]["shell"]["name"] and result["info"]["platformOs"]
    human = cx(home, "env", "check", "box")
    assert human.returncode == 0
    assert [line.split()[0] for line in human.stdout.splitlines()[1:4]] == [
        "connect",
        "initialize",
        "environment/info",
    ]
    assert human.stdout.splitlines()[-1].startswith("ready in ")
    failed = cx(home, "env", "check", "gone")
    assert failed.returncode == 125
    assert failed.stderr.startswith("codexexec: error: environment `gone`: connect: ")


def run_in_terminal(home: Path, *args: str) -> tuple[int, str]:
    """Run with stderr on a pseudo-terminal (as a person would), return code and stderr."""
    master, slave = pty.openpty()
    process = subprocess.Popen(
        codexexec_command(*args),
        stdout=subprocess.DEVNULL,
        stderr=slave,
        env=cli_env(home),
        cwd="/tmp",
    )
    os.close(slave)
    chunks = []
    while True:
        try:
            data = os.read(master, 4096)
        except OSError:
            break
        if not data:
            break
        chunks.append(data)
    os.close(master)
    return process.wait(30), b"".join(chunks).decode(errors="replace")


def test_the_spinner_shows_only_after_300ms(tmp_path: Path) -> None:
    home = tmp_path / "home"
    write_config(
        home,
        """[[environments]]
id = "slow"
program = "sh"
args = ["-c", "sleep 1; exec codexexec serve --listen stdio"]

[[environments]]
id = "quick"
program = "codexexec"
args = ["serve", "--listen", "stdio"]
initialize_timeout_sec = 30
""",
    )
    code, slow = run_in_terminal(home, "exec", "--env", "slow", "--", "true")
    assert code == 0 and "connecting to slow" in slow and "\x1b[2K" in slow
    code, quick = run_in_terminal(home, "exec", "--env", "local", "--", "true")
    assert code == 0 and quick == ""


def test_config_errors_and_unknown_names(tmp_path: Path) -> None:
    home = tmp_path / "home"
    write_config(home, '[[environments]]\nid = "local"\nurl = "ws://127.0.0.1:1"\n')
    broken = cx(home, "exec", "--env", "devbox", "--", "true")
    assert broken.returncode == 125
    assert broken.stderr == (
        "codexexec: error: exec-server protocol error: environment id `local` is reserved\n"
    )
    local = cx(home, "exec", "--env", "local", "--", "echo", "fine")  # no file needed
    assert local.stdout == "fine\n"
    write_config(home, '[[environments]]\nid = "devbox"\nurl = "ws://127.0.0.1:1"\n')
    unknown = cx(home, "exec", "--env", "nope", "--", "true")
    assert unknown.returncode == 125 and "unknown environment `nope`" in unknown.stderr
    assert "(configured: devbox)" in unknown.stderr
    write_config(home, 'default = "none"\n[[environments]]\nid = "d"\nurl = "ws://127.0.0.1:1"\n')
    nodefault = cx(home, "exec", "--", "true")
    assert nodefault.returncode == 2 and "no default environment" in nodefault.stderr


def test_import_codex_environments(tmp_path: Path) -> None:
    codex_home = tmp_path / "codex"
    codex_home.mkdir()
    (codex_home / "environments.toml").write_text(
        """default = "devbox"

[[environments]]
id = "devbox"
url = "ws://127.0.0.1:4512"
connect_timeout_sec = 12.0

[[environments]]
id = "ssh-dev"
program = "ssh"
args = ["dev", "codex exec-server --listen stdio"]
cwd = "work"
[environments.env]
CODEX_LOG = "debug"
"""
    )
    home = tmp_path / "home"
    write_config(home, '[[environments]]\nid = "mine"\nurl = "ws://127.0.0.1:1"\n')
    imported = cx(home, "env", "import", "--codex-home", str(codex_home))
    assert imported.returncode == 0, imported.stderr
    assert "imported 2 environments (devbox, ssh-dev)" in imported.stdout
    assert 'default = "devbox"' in imported.stdout  # reported, not copied
    from codexexec.environments.config import StdioSpec, WebSocketSpec, load_config

    config = load_config(home / "environments.toml")
    assert [spec.id for spec in config.environments] == ["mine", "devbox", "ssh-dev"]
    assert config.environments[1] == WebSocketSpec("devbox", "ws://127.0.0.1:4512", 12.0)
    assert config.environments[2] == StdioSpec(
        "ssh-dev",
        "ssh",
        ("dev", "codex exec-server --listen stdio"),
        {"CODEX_LOG": "debug"},
        str(codex_home / "work"),
    )
    again = cx(home, "env", "import", "--codex-home", str(codex_home))
    assert again.returncode == 125 and "already has `devbox`, `ssh-dev`" in again.stderr
    assert len(load_config(home / "environments.toml").environments) == 3  # unchanged


def test_registry_errors_name_the_step_and_never_the_token(
    devbox: tuple[Path, Rendezvous, TcpProxy], tmp_path: Path
) -> None:
    home, rendezvous, _ = devbox
    (tmp_path / "devbox.token").write_text(f"{TOKEN}\n")
    write_config(
        home,
        f"""[[environments]]
id = "by-file"
registry = "{rendezvous.url}"
environment_id = "devbox"
token_file = "{tmp_path / "devbox.token"}"

[[environments]]
id = "wrong"
registry = "{rendezvous.url}"
environment_id = "devbox"
token_env = "WRONG_TOKEN"

[[environments]]
id = "unset"
registry = "{rendezvous.url}"
environment_id = "devbox"
token_env = "UNSET_TOKEN"

[[environments]]
id = "nobody"
registry = "{rendezvous.url}"
""",
    )
    by_file = cx(home, "exec", "--env", "by-file", "--", "echo", "ok")
    assert by_file.stdout == "ok\n", by_file.stderr
    os.environ["WRONG_TOKEN"] = "not-the-secret-value"
    try:
        wrong = cx(home, "exec", "--env", "wrong", "--", "true")
    finally:
        del os.environ["WRONG_TOKEN"]
    assert wrong.returncode == 125
    assert wrong.stderr.startswith("codexexec: error: environment `wrong`: auth: ")
    assert "401" in wrong.stderr and "not-the-secret-value" not in wrong.stderr
    unset = cx(home, "exec", "--env", "unset", "--", "true")
    assert unset.stderr == (
        "codexexec: error: environment `unset`: auth: environment registry bearer token is "
        "required: set UNSET_TOKEN (or token_file in the environment's entry)\n"
    )
    nobody = cx(home, "exec", "--env", "nobody", "--", "true")
    assert nobody.stderr.startswith("codexexec: error: environment `nobody`: connect: ")
    assert "404" in nobody.stderr


def test_read_opens_only_the_connection_it_resumes(box: tuple[Path, TcpProxy]) -> None:
    home, proxy = box
    started = cx(home, "exec", "--env", "box", "--detach", "--", "echo", "once")
    handle = started.stdout.strip()
    for _ in range(2):
        read = cx(home, "read", handle, "--follow")
        assert read.stdout == "once\n" and read.returncode == 0, read.stderr
    assert proxy.accepted == 3  # no background start of a session nobody would use


def test_codexs_environment_variables_choose_the_environment(
    tmp_path: Path, codexexec_server: RunningServer
) -> None:
    """An orchestrator that sets Codex's variables for a Codex harness gets the same
    environment from codexexec, in Codex's order: Noise variables, the file, the URL."""
    home = tmp_path / "home"
    home.mkdir()
    clean = {k: v for k, v in cli_env(home).items() if not k.startswith("CODEX_EXEC_SERVER")}

    def run(extra: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            codexexec_command(*args),
            capture_output=True,
            text=True,
            env={**clean, **extra},
            timeout=60,
            cwd="/tmp",
        )

    parent = "--sandbox", "danger-full-access", "--", "sh", "-c", "echo $PPID"
    url = {"CODEX_EXEC_SERVER_URL": codexexec_server.url}
    remote = run(url, "exec", *parent)
    assert remote.stdout == f"{codexexec_server.process.pid}\n", remote.stderr
    listed = run(url, "env", "list")
    assert listed.stdout.splitlines()[1].split()[:3] == ["remote", "*", "websocket"]
    assert "local" not in listed.stdout and "CODEX_EXEC_SERVER_URL" in listed.stdout
    disabled = run({"CODEX_EXEC_SERVER_URL": "None"}, "exec", "--", "true")
    assert disabled.returncode == 2 and "no default environment" in disabled.stderr
    # codexexec's own file, when there is one, comes before CODEX_EXEC_SERVER_URL.
    write_config(home, 'default = "local"\n')
    local = run(url, "exec", *parent)
    assert local.stdout.strip() != str(codexexec_server.process.pid)
    partial = run(
        {"CODEX_EXEC_SERVER_NOISE_REGISTRY_URL": "http://127.0.0.1:1"}, "exec", "--", "true"
    )
    assert partial.returncode == 125
    assert partial.stderr == (
        "codexexec: error: environment registry configuration error: Noise environment "
        "requires CODEX_EXEC_SERVER_NOISE_REGISTRY_URL, CODEX_EXEC_SERVER_NOISE_ENVIRONMENT_ID, "
        "and CODEX_EXEC_SERVER_NOISE_AUTH_TOKEN\n"
    )
    rendezvous = Rendezvous(tmp_path)
    executor = start_executor("serve", "--remote", rendezvous.url, "--environment-id", "devbox")
    try:
        noise = {
            "CODEX_EXEC_SERVER_NOISE_REGISTRY_URL": rendezvous.url,
            "CODEX_EXEC_SERVER_NOISE_ENVIRONMENT_ID": " devbox ",
            "CODEX_EXEC_SERVER_NOISE_AUTH_TOKEN": TOKEN,
            **url,
        }
        through = run(noise, "exec", "--", "sh", "-c", "echo via-noise; exit 3")
        assert (through.stdout, through.returncode) == ("via-noise\n", 3), through.stderr
        assert TOKEN not in through.stderr
    finally:
        stop(executor)
        rendezvous.kill()


def test_shell_completion_offers_the_configured_environments(tmp_path: Path) -> None:
    """`--env <TAB>` and `fs ls <TAB>` complete the names in environments.toml (#18)."""
    home = tmp_path / "home"
    write_config(
        home,
        '[[environments]]\nid = "devbox"\nurl = "ws://127.0.0.1:9"\n'
        '[[environments]]\nid = "ci-runner"\nurl = "ws://127.0.0.1:9"\n',
    )

    def complete(words: str) -> list[str]:
        done = subprocess.run(
            codexexec_command(),
            capture_output=True,
            text=True,
            timeout=60,
            env={
                **cli_env(home),
                "_CODEXEXEC_COMPLETE": "complete_bash",
                "COMP_WORDS": words,
                "COMP_CWORD": str(len(words.split(" ")) - 1),
            },
        )
        assert done.returncode == 0, done.stderr
        return done.stdout.split()

    assert complete("codexexec exec --env ") == ["local", "devbox", "ci-runner"]
    assert complete("codexexec exec --env de") == ["devbox"]
    assert complete("codexexec fs ls c") == ["ci-runner:"]
    assert complete("codexexec fs get devbox:/et") == []  # paths are the shell's business
    write_config(home, "not toml [")
    assert complete("codexexec exec --env ") == ["local"]  # nothing printed into the line
