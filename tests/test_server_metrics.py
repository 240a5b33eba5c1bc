"""`GET /metrics` of `codexexec serve`: Codex's metric names, counts that follow what
happened, behind the websocket's authentication; and `--metrics-listen` for a stdio
executor."""

from __future__ import annotations

import asyncio
import re
import subprocess
import urllib.error
import urllib.request
from pathlib import Path

from codexexec.protocol.path_uri import PathUri
from codexexec.sandbox.policy import legacy_profile, sandbox_context_json
from tests.servers import codexexec_command, start_server
from tests.wire import Wire


def scrape(url: str, token: str | None = None) -> str:
    request = urllib.request.Request(url)
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    with urllib.request.urlopen(request, timeout=10) as response:
        return str(response.read().decode())


def value(text: str, name: str, labels: str = "") -> float:
    match = re.search(rf"^{re.escape(name)}{re.escape(labels)} (\S+)$", text, re.M)
    assert match, f"{name}{labels} not in metrics"
    return float(match.group(1))


async def test_counts_follow_connections_requests_and_processes(tmp_path: Path) -> None:
    with start_server("codexexec") as server:
        metrics_url = server.url.replace("ws://", "http://") + "/metrics"
        before = await asyncio.to_thread(scrape, metrics_url)
        assert value(before, "exec_server_connections_total") == 0
        wire = await Wire.open(server.url)
        await wire.initialize()
        profile = legacy_profile("workspace-write")
        assert profile is not None
        root = str(PathUri.from_host_native_path(str(tmp_path)))
        await wire.start("ok", ["true"])
        await wire.events_until_closed("ok")
        await wire.start(
            "blocked",
            ["touch", "/etc/cx-metrics-probe"],
            cwd=root,
            sandbox=sandbox_context_json(profile, root, [root]),
        )
        await wire.events_until_closed("blocked")
        during = await asyncio.to_thread(scrape, metrics_url)
        await wire.close()
    assert value(during, "exec_server_connections_total") == 1
    assert value(during, "exec_server_connections_active") == 1
    assert value(during, "exec_server_processes_active") == 0
    assert value(during, "exec_server_requests_total", '{method="process/start",outcome="ok"}') == 2
    assert value(during, "exec_server_processes_finished_total", '{sandbox="none"}') == 1
    assert value(during, "exec_server_processes_finished_total", '{sandbox="bubblewrap"}') == 1
    assert value(during, "codexexec_sandbox_denials_total", '{reason="read_only_file_system"}') == 1
    assert "exec_server_request_duration_seconds_bucket" in during


def test_metrics_sit_behind_the_websocket_authentication(tmp_path: Path) -> None:
    (tmp_path / "token").write_text("metrics-token-1234\n")
    args = ("--ws-auth", "capability-token", "--ws-token-file", str(tmp_path / "token"))
    with start_server("codexexec", extra_args=args) as server:
        url = server.url.replace("ws://", "http://") + "/metrics"
        try:
            scrape(url)
            raise AssertionError("metrics were served without the token")
        except urllib.error.HTTPError as refused:
            assert refused.code == 401
        assert "exec_server_connections_total" in scrape(url, "metrics-token-1234")


def test_metrics_listen_serves_a_stdio_executor() -> None:
    process = subprocess.Popen(
        codexexec_command("serve", "--listen", "stdio", "--metrics-listen", "http://127.0.0.1:0"),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert process.stderr is not None and process.stdin is not None
    try:
        line = process.stderr.readline().decode()
        match = re.search(r"metrics on (http://\S+)", line)
        assert match, line
        assert "exec_server_processes_active 0.0" in scrape(match.group(1))
    finally:
        process.stdin.close()
        process.terminate()
        process.wait(10)


def test_a_relayed_executor_counts_registrations_and_rendezvous_connections(
    tmp_path: Path,
) -> None:
    from tests.test_relay_e2e import Rendezvous, cx, env, stop

    rendezvous = Rendezvous(tmp_path)
    executor = subprocess.Popen(
        codexexec_command(
            *("serve", "--remote", rendezvous.url, "--environment-id", "metered"),
            *("--metrics-listen", "http://127.0.0.1:0"),
        ),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        env=env(),
    )
    assert executor.stderr is not None
    try:
        lines = [executor.stderr.readline().decode() for _ in range(2)]
        url = next(m.group(1) for line in lines if (m := re.search(r"metrics on (\S+)", line)))
        assert (
            cx("exec", "--registry", rendezvous.url, "--env", "metered", "--", "true").returncode
            == 0
        )
        text = scrape(url)
        assert value(text, "exec_server_remote_registration_total", '{outcome="ok"}') == 1
        assert value(text, "exec_server_remote_rendezvous_connect_total", '{outcome="ok"}') == 1
        assert value(text, "exec_server_connections_total") >= 1  # the relayed stream
    finally:
        stop(executor)
        rendezvous.kill()
