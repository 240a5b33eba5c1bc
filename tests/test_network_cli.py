"""Managed network end to end: the CLI, the executor's proxy, the sandbox and the ask flow."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from codexexec.client import ExecServerClient, ExecServerError
from codexexec.client.client import NetworkProxyRequest
from codexexec.network.policy import NetworkPolicy
from codexexec.server.managed_network import ExecutorNetwork
from tests.origins import http_origin
from tests.servers import RunningServer, codexexec_command, start_server
from tests.test_sandbox_cli import run_in_terminal

pytestmark = pytest.mark.skipif(
    shutil.which("bwrap") is None or shutil.which("curl") is None, reason="needs bwrap and curl"
)


@pytest.fixture(scope="module")
def origin() -> Iterator[int]:
    with http_origin(b"origin says hi\n") as port:
        yield port


def cx(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        codexexec_command(*args),
        capture_output=True,
        cwd="/tmp",
        timeout=60,
        env={**os.environ, **(env or {})},
    )


LOCAL_ONLY = ("--network", "proxy", "--allow-local", "--approval", "never")
PROXY = (
    "--network",
    "proxy",
    "--allow-domain",
    "localhost",
    "--allow-local",
    "--approval",
    "never",
)


def test_done_when_through_the_proxy_direct_and_disallowed(origin: int) -> None:
    url = f"http://localhost:{origin}/"
    through = cx("exec", *PROXY, "--", "curl", "-sS", url)
    assert through.returncode == 0 and through.stdout == b"origin says hi\n", through.stderr
    direct = cx("exec", *PROXY, "--json", "--", "curl", "-sS", "--noproxy", "*", url)
    result = json.loads(direct.stdout.decode().splitlines()[-1])
    assert direct.returncode == 7 and result["sandboxDenied"] is True
    assert result["denial"]["reason"] == "network_blocked"
    blocked = cx("exec", *PROXY, "--", "curl", "-sS", "-f", "http://example.com/")
    assert blocked.returncode == 22
    stderr = blocked.stderr.decode()
    assert "the proxy blocked example.com:80 (not_allowed, baseline_policy, http)" in stderr
    assert "network_policy_denied" in stderr
    body = cx("exec", *PROXY, "--", "curl", "-sS", "http://example.com/")
    assert b"CODEX_NETWORK_POLICY_DECISION {" in body.stdout  # the proxy's 403 explains itself


def test_json_carries_the_proxy_decisions(origin: int) -> None:
    result = cx(
        "exec",
        *PROXY,
        "--json",
        "--deny-domain",
        "*.example.com",
        "--",
        "curl",
        "-sS",
        "-f",
        "https://api.example.com/",
    )
    final = json.loads(result.stdout.decode().splitlines()[-1])
    decision = final["networkDecisions"][0]
    assert decision["host"] == "api.example.com" and decision["port"] == 443
    assert decision["decision"] == "deny" and decision["reason"] == "denied"
    assert decision["protocol"] == "httpsConnect" and decision["processId"] == final["processId"]


def test_ask_flow_allow_and_deny() -> None:
    # A loopback address --allow-local does not list by name (127.0.0.1, ::1, localhost).
    with http_origin(b"origin says hi\n", host="127.0.0.2") as port:
        ask_about(f"http://127.0.0.2:{port}/")


def ask_about(url: str) -> None:
    ask = [
        "exec",
        "--network",
        "proxy",
        "--ask-domains",
        "--allow-local",
        "--approval",
        "never",
        "--",
        "curl",
        "-sS",
        "-f",
        url,
    ]
    code, screen = run_in_terminal(ask, prompt=b"Allow?", answer="y")
    assert "A command wants network access" in screen and "origin says hi" in screen and code == 0
    code, screen = run_in_terminal(ask, prompt=b"Allow?", answer="n")
    assert code != 0 and "origin says hi" not in screen


async def test_env_and_sandbox_ports_come_from_one_snapshot() -> None:
    network = ExecutorNetwork()
    try:
        prepared = await network.prepare("p", NetworkPolicy(), lambda _: None, None, set())
        from codexexec.sandbox.proxy_routes import check_routes, loopback_ports_from_env

        assert loopback_ports_from_env(prepared.env) == set(prepared.context.loopback_ports)
        assert check_routes(prepared.env, prepared.context) == tuple(
            sorted(prepared.context.loopback_ports)
        )
        assert all(
            f"{prepared.token}@127.0.0.1:" in prepared.env[k] for k in ("HTTP_PROXY", "ALL_PROXY")
        )
    finally:
        await network.close()


async def test_client_api_sees_policy_decisions(codexexec_server: RunningServer) -> None:
    async with await ExecServerClient.connect(codexexec_server.url) as client:
        process = await client.start(
            ["curl", "-sS", "-f", "http://blocked.example/"],
            cwd="/tmp",
            sandbox="workspace-write",
            network_proxy=NetworkProxyRequest(),
        )
        exited = await process.wait()
        assert exited.exit_code == 22 and exited.sandbox_denied
        assert exited.denial is not None and exited.denial["backend"] == "managed_network_proxy"
        decisions = client.network_decisions(process.process_id)
        assert decisions[0]["host"] == "blocked.example" and decisions[0]["decision"] == "deny"


def test_operator_policy_file_denials_always_apply(origin: int, tmp_path: Path) -> None:
    policy = tmp_path / "network.toml"
    policy.write_text('[network]\nallow_local = true\n\n[network.domains]\n"localhost" = "deny"\n')
    with start_server("codexexec", extra_args=("--network-policy", str(policy))) as running:
        result = cx(
            "exec",
            "--env",
            running.url,
            *PROXY,
            "--",
            "curl",
            "-sS",
            "-f",
            f"http://localhost:{origin}/",
        )
        assert result.returncode == 22
        assert b"the proxy blocked localhost" in result.stderr and b"denied" in result.stderr
    bad = tmp_path / "bad.toml"
    bad.write_text('[network]\nmode = "full"\n\n[network.domains]\n"x.com" = "maybe"\n')
    failed = cx("serve", "--network-policy", str(bad))
    assert failed.returncode == 2 and f"{bad}:5" in failed.stderr.decode()


def test_proxy_flags_need_network_proxy() -> None:
    result = cx("exec", "--allow-domain", "x.com", "--", "true")
    assert result.returncode == 2 and b"need --network proxy" in result.stderr


def test_landlock_fallback_admits_only_the_proxy(origin: int) -> None:
    env = {"CODEXEXEC_LINUX_SANDBOX": "landlock"}
    url = f"http://localhost:{origin}/"
    through = cx(
        "exec", "--sandbox", "danger-full-access", *PROXY, "--", "curl", "-sS", url, env=env
    )
    assert through.returncode == 0 and through.stdout == b"origin says hi\n", through.stderr
    direct = cx(
        "exec",
        "--sandbox",
        "danger-full-access",
        *PROXY,
        "--",
        "curl",
        "-sS",
        "--noproxy",
        "*",
        url,
        env=env,
    )
    assert direct.returncode == 7 and b"sandbox denied" in direct.stderr


def test_network_off_failures_are_denials_with_the_flag_that_allows_them(origin: int) -> None:
    """Under --network off, a refused connection or an unresolvable name is the sandbox at
    work: reported as a denial, with what would allow it (#18)."""
    for argv in (
        ["curl", "-sS", f"http://127.0.0.1:{origin}/"],
        ["curl", "-sS", "http://example.invalid/"],
    ):
        run = cx("exec", "--approval", "never", "--", *argv)
        assert run.returncode in (6, 7), run.stderr
        assert b"(network_disabled, bubblewrap); the network is off in this sandbox" in run.stderr
        assert b"--network on or --network proxy allows it" in run.stderr
        as_json = cx("exec", "--approval", "never", "--json", "--", *argv)
        result = json.loads(as_json.stdout.decode().splitlines()[-1])
        assert result["sandboxDenied"] is True
        assert result["denial"]["reason"] == "network_disabled"
    # Unsandboxed, the same failure is just the tool's.
    plain = cx(
        "exec", "--sandbox", "danger-full-access", "--", "curl", "-sS", "http://127.0.0.1:9/"
    )
    assert plain.returncode == 7 and b"sandbox denied" not in plain.stderr


def test_allow_local_alone_reaches_loopback_and_blocks_say_what_allows_them(origin: int) -> None:
    local = cx("exec", *LOCAL_ONLY, "--", "curl", "-sS", f"http://127.0.0.1:{origin}/")
    assert (local.returncode, local.stdout) == (0, b"origin says hi\n"), local.stderr
    blocked = cx(
        "exec",
        "--network",
        "proxy",
        "--approval",
        "never",
        "--",
        "curl",
        "-sS",
        "-o",
        "/dev/null",
        "http://example.invalid/",
    )
    assert b"the proxy blocked example.invalid:80 (not_allowed" in blocked.stderr
    assert b"--allow-domain example.invalid allows it" in blocked.stderr


async def test_a_start_that_fails_gives_back_what_was_prepared_for_it(tmp_path: Path) -> None:
    """Starting a process is one transaction: a start refused after its proxy registration
    and sandbox were prepared leaves neither behind (the proxy's per-process policy, the
    sandbox's placeholders for protected names)."""
    from codexexec.server.app import ExecServer
    from codexexec.transport.memory import memory_pair

    server = ExecServer()
    client_end, server_end = memory_pair()
    serving = asyncio.create_task(server.serve(server_end, malformed_prefix="invalid"))
    client = await ExecServerClient.over(client_end, description="in-process")
    try:
        for argv in (["/nonexistent/program"], [str(tmp_path)]):  # ENOENT, then EACCES
            with pytest.raises(ExecServerError):
                await client.start(
                    argv,
                    cwd=str(tmp_path),
                    sandbox="workspace-write",
                    network_proxy=NetworkProxyRequest(),
                )
        assert server.network._owners == {}
        assert not (tmp_path / ".codex").exists() and not (tmp_path / ".git").exists()
        # The next one starts and runs as usual.
        process = await client.start(["true"], cwd=str(tmp_path), sandbox="workspace-write")
        assert (await process.wait()).exit_code == 0
    finally:
        await client.close()
        await server.aclose()
        serving.cancel()
