"""Issue #7's "done when", end to end with real processes: `codexexec serve --remote`
registers with a real `codexexec rendezvous` from a ChatGPT-style auth.json (refreshing it
first), and from CODEX_ACCESS_TOKEN only once --allow-agent-identity-auth is given, with an
AgentAssertion the rendezvous verifies; a harness then runs a command through it. No
credential appears in any output or log of either process."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from aiohttp import web

from tests.auth_helpers import (
    Agent,
    Recorded,
    Stub,
    access_token,
    chatgpt_login,
    clean_env,
    cli,
    codex_home,
)
from tests.servers import codexexec_command

HARNESS = "tok-harness-e2e-0123456789"
READY = "through the relay"


class Rendezvous:
    def __init__(self, process: asyncio.subprocess.Process, url: str) -> None:
        self.process = process
        self.url = url

    async def stderr(self) -> str:
        self.process.terminate()
        _, err = await asyncio.wait_for(self.process.communicate(), 10)
        return err.decode()


@contextlib.asynccontextmanager
async def rendezvous(
    tmp: Path, executor_token: str, agent: Agent, scope: str = "executor devbox"
) -> AsyncIterator[Rendezvous]:
    (tmp / "tokens").write_text(f"{executor_token} executor devbox\n{HARNESS} harness\n")
    (tmp / "agents").write_text(
        f"# the agent's key\n{agent.runtime_id} {agent.public_key} {scope}\n"
    )
    process = await asyncio.create_subprocess_exec(
        *codexexec_command(
            "rendezvous",
            "--listen",
            "http://127.0.0.1:0",
            "--token-file",
            str(tmp / "tokens"),
            "--db",
            str(tmp / "rv.sqlite3"),
            "--agent-keys",
            str(tmp / "agents"),
        ),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=clean_env(CODEXEXEC_HOME=str(tmp / "state")),
    )
    assert process.stdout is not None
    url = (await asyncio.wait_for(process.stdout.readline(), 30)).decode().strip()
    assert url.startswith("http://127.0.0.1:"), url
    running = Rendezvous(process, url)
    try:
        yield running
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()


async def start_executor(
    env: dict[str, str], *args: str
) -> tuple[asyncio.subprocess.Process, list[str]]:
    process = await asyncio.create_subprocess_exec(
        *codexexec_command("serve", *args, "--log-level", "debug"),
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
        env=env,
    )
    assert process.stderr is not None
    lines: list[str] = []
    while not any(READY in line for line in lines):
        line = (await asyncio.wait_for(process.stderr.readline(), 30)).decode()
        assert line, f"executor ended before registering: {''.join(lines)}"
        lines.append(line)
    return process, lines


async def stop_executor(process: asyncio.subprocess.Process, lines: list[str]) -> str:
    process.terminate()
    assert process.stderr is not None
    rest = await asyncio.wait_for(process.stderr.read(), 15)
    await process.wait()
    return "".join(lines) + rest.decode()


async def exec_echo(url: str, text: str) -> str:
    run = await cli(
        "exec",
        "--registry",
        url,
        "--env",
        "devbox",
        "--",
        "echo",
        text,
        env=clean_env(CODEXEXEC_REGISTRY_TOKEN=HARNESS),
    )
    assert run.returncode == 0, run.stderr
    return run.stdout


async def test_serve_remote_registers_with_a_refreshed_chatgpt_login(tmp_path: Path) -> None:
    old = access_token(time.time() - 30, "old")
    new = access_token(time.time() + 3600, "new")
    home = codex_home(tmp_path, chatgpt_login(old, refresh="rt-OLD-e2e-secret"))
    agent = Agent()

    def token_endpoint(_: Recorded) -> web.Response:
        return web.json_response({"access_token": new, "refresh_token": "rt-NEW-e2e-secret"})

    async with Stub(token_endpoint) as oauth, rendezvous(tmp_path, new, agent) as rv:
        env = clean_env(
            CODEX_HOME=str(home),
            CODEX_REFRESH_TOKEN_URL_OVERRIDE=f"{oauth.url}/oauth/token",
            CODEX_ACCESS_TOKEN=agent.token(),  # present, but not used without the flag
        )
        executor, lines = await start_executor(
            env, "--remote", rv.url, "--environment-id", "devbox"
        )
        try:
            assert await exec_echo(rv.url, "hello-chatgpt") == "hello-chatgpt\n"
        finally:
            executor_log = await stop_executor(executor, lines)
        rendezvous_log = await rv.stderr()
    assert len(oauth.requests) == 1
    assert "CODEX_ACCESS_TOKEN is set but not used" in executor_log
    for secret in (old, new, "rt-OLD-e2e-secret", "rt-NEW-e2e-secret", agent.token().split(".")[1]):
        assert secret not in executor_log
        assert secret not in rendezvous_log


async def test_agent_identity_registers_only_with_the_flag(tmp_path: Path) -> None:
    agent = Agent()
    token = agent.token()
    empty_home = codex_home(tmp_path)
    env = clean_env(CODEX_HOME=str(empty_home), CODEX_ACCESS_TOKEN=token)
    async with rendezvous(tmp_path, "tok-unused-executor-0123", agent) as rv:
        refused = await cli("serve", "--remote", rv.url, "--environment-id", "devbox", env=env)
        assert refused.returncode == 125
        (line,) = refused.stderr.strip().splitlines()[-1:]
        assert line.startswith("codexexec: error: remote exec-server registration requires ChatGPT")
        assert "pass --allow-agent-identity-auth" in line and "run `codex login`" in line
        executor, lines = await start_executor(
            env, "--remote", rv.url, "--environment-id", "devbox", "--allow-agent-identity-auth"
        )
        try:
            assert await exec_echo(rv.url, "hello-agent") == "hello-agent\n"
        finally:
            executor_log = await stop_executor(executor, lines)
        rendezvous_log = await rv.stderr()
    assert token.split(".")[1] not in refused.stderr + executor_log + rendezvous_log


@pytest.mark.parametrize("scope", ["harness", "executor other-env"])
async def test_the_rendezvous_holds_an_agent_to_its_scope(tmp_path: Path, scope: str) -> None:
    agent = Agent()
    async with rendezvous(tmp_path, "tok-unused-executor-0123", agent, scope) as rv:
        run = await cli(
            "serve",
            "--remote",
            rv.url,
            "--environment-id",
            "devbox",
            "--allow-agent-identity-auth",
            env=clean_env(CODEX_HOME=str(codex_home(tmp_path)), CODEX_ACCESS_TOKEN=agent.token()),
        )
        await rv.stderr()
    assert run.returncode == 125
    assert run.stderr.strip().splitlines()[-1] == (
        "codexexec: error: environment registry authentication error: environment registry "
        "authentication failed (403 Forbidden): this agent is not granted the executor role for "
        "environment 'devbox'"
    )


async def test_the_real_codex_executors_agent_assertion_is_verified_by_the_rendezvous(
    tmp_path: Path,
) -> None:
    """Codex 0.169.0 with --use-agent-identity-auth registers its task with codexexec's
    rendezvous and registers the environment with its AgentAssertion; a codexexec harness
    then runs a command on it. (Codex checks the JWT against a JWKS: a loopback stub
    serves the RSA key that signed it.)"""
    import json
    import shutil
    import tempfile

    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import padding, rsa

    from tests.auth_helpers import b64url
    from tests.servers import codex_binary

    agent = Agent()
    signer = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    numbers = signer.public_key().public_numbers()
    jwks = {
        "keys": [
            {
                "kty": "RSA",
                "kid": "k1",
                "alg": "RS256",
                "use": "sig",
                "n": b64url(numbers.n.to_bytes(256, "big")),
                "e": b64url(numbers.e.to_bytes(3, "big")),
            }
        ]
    }
    unsigned = agent.token()
    header = b64url(json.dumps({"alg": "RS256", "kid": "k1", "typ": "JWT"}).encode())
    payload = unsigned.split(".")[1]
    signature = signer.sign(f"{header}.{payload}".encode(), padding.PKCS1v15(), hashes.SHA256())
    token = f"{header}.{payload}.{b64url(signature)}"
    home = Path(tempfile.mkdtemp(dir="/var/tmp", prefix="cx-auth-"))  # Codex refuses /tmp
    async with (
        Stub(lambda _: web.json_response(jwks)) as jwks_stub,
        rendezvous(tmp_path, "tok-unused-executor-0123", agent) as rv,
    ):
        process = await asyncio.create_subprocess_exec(
            codex_binary(),
            "exec-server",
            "--remote",
            rv.url,
            "--environment-id",
            "devbox",
            "--use-agent-identity-auth",
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE,
            env=clean_env(
                CODEX_HOME=str(home),
                CODEX_ACCESS_TOKEN=token,
                CODEX_AGENT_IDENTITY_JWKS_BASE_URL=jwks_stub.url,
                CODEX_AGENT_IDENTITY_AUTHAPI_BASE_URL=rv.url,
            ),
        )
        try:
            deadline = time.monotonic() + 30
            while True:  # the environment is usable once Codex has registered and connected
                run = await cli(
                    "exec",
                    "--registry",
                    rv.url,
                    "--env",
                    "devbox",
                    "--",
                    "echo",
                    "via-codex",
                    env=clean_env(CODEXEXEC_REGISTRY_TOKEN=HARNESS),
                )
                if run.returncode == 0 or time.monotonic() > deadline:
                    break
                await asyncio.sleep(0.5)
            assert run.stdout == "via-codex\n", run.stderr
        finally:
            process.terminate()
            await process.wait()
            shutil.rmtree(home, ignore_errors=True)
        rendezvous_log = await rv.stderr()
    assert payload not in rendezvous_log
