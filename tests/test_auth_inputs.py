"""Where each credential comes from, and every bad input: one clear line, a non-zero exit,
never a secret. Keyrings are real `keyring` backends (keyrings.alt's, and the default
"fail" backend of a headless machine), selected the way users select them."""

from __future__ import annotations

import base64
import json
import time
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web

from codexexec.remote.auth.api_keys import API_KEY_REFUSED
from codexexec.remote.auth.assertion import encode_assertion, timestamp
from codexexec.remote.auth.storage import KEYRING_SERVICE, keyring_account
from codexexec.rendezvous import RendezvousOptions, Store, TokenTable, start_rendezvous
from tests.auth_helpers import (
    Agent,
    Recorded,
    Run,
    Stub,
    access_token,
    chatgpt_login,
    clean_env,
    cli,
    codex_home,
    error,
)
from tests.keyring_backend import STORE_ENV, KeyringForTests

ACCESS = access_token(time.time() + 3600, "fresh")
TEST_BACKEND = "tests.keyring_backend.KeyringForTests"
PLAINTEXT_BACKEND = "keyrings.alt.file.PlaintextKeyring"
FAIL_BACKEND = "keyring.backends.fail.Keyring"


async def status(env: dict[str, str], *args: str) -> Run:
    return await cli("login", "status", *args, env=env)


def one_error_line(run: Run, *secrets: str) -> str:
    assert run.returncode != 0
    lines = [line for line in run.stderr.splitlines() if line.startswith("codexexec: error:")]
    assert len(lines) == 1, run.stderr
    assert "Traceback" not in run.stderr
    for secret in secrets:
        assert secret not in run.stderr + run.stdout
    return lines[0].removeprefix("codexexec: error: ")


# -- the ChatGPT login in auth.json -------------------------------------------------------------


async def test_login_status_names_the_login_and_its_file_never_the_token(tmp_path: Path) -> None:
    home = codex_home(tmp_path, chatgpt_login(ACCESS))
    run = await status(clean_env(CODEX_HOME=str(home)))
    assert run.returncode == 0, run.stderr
    first, second = run.stdout.splitlines()
    assert first == (
        "registration credential: ChatGPT login (dev@example.com, account acct-123) from "
        f"{home / 'auth.json'}"
    )
    assert second.startswith("expires: ")
    assert ACCESS not in run.stdout + run.stderr and "rt-OLD" not in run.stdout


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (
            "{not json",
            "is not valid JSON (corrupt or partial near line 1); run `codex login` again",
        ),
        ('{"tokens": {"id_token": "x", "access_tok', "is not valid JSON (corrupt or partial"),
        ('{"auth_mode": "chatgpt"}', "holds no ChatGPT tokens (partial login?); run `codex login`"),
        ("[1, 2]", "does not hold a JSON object; run `codex login` again"),
    ],
)
async def test_a_corrupt_or_partial_auth_json_is_one_clear_line(
    tmp_path: Path, content: str, expected: str
) -> None:
    home = codex_home(tmp_path)
    (home / "auth.json").write_text(content)
    assert expected in one_error_line(await status(clean_env(CODEX_HOME=str(home))))


async def test_a_readable_auth_json_is_warned_about_but_used(tmp_path: Path) -> None:
    home = codex_home(tmp_path, chatgpt_login(ACCESS))
    (home / "auth.json").chmod(0o644)
    run = await status(clean_env(CODEX_HOME=str(home)))
    assert run.returncode == 0
    assert run.stderr == (
        f"codexexec: warning: {home / 'auth.json'} is accessible to other users (mode 0644); "
        f"run `chmod 600 {home / 'auth.json'}`\n"
    )


async def test_no_login_names_the_fixes(tmp_path: Path) -> None:
    home = codex_home(tmp_path)
    line = one_error_line(await status(clean_env(CODEX_HOME=str(home))))
    assert line == (
        "remote exec-server registration requires ChatGPT authentication; run `codex login` "
        f"first (no login in {home / 'auth.json'}; set CODEX_HOME if yours is elsewhere)"
    )


async def test_an_expired_token_without_refresh_token_stops_before_any_request(
    tmp_path: Path,
) -> None:
    expired = access_token(time.time() - 10)
    home = codex_home(tmp_path, chatgpt_login(expired, refresh=None))
    async with Stub(lambda _: error(500)) as stub:
        run = await cli(
            "serve",
            "--remote",
            stub.url,
            "--environment-id",
            "devbox",
            env=clean_env(CODEX_HOME=str(home), CODEX_REFRESH_TOKEN_URL_OVERRIDE=stub.url),
        )
    assert stub.requests == []
    assert one_error_line(run, expired) == (
        f"the ChatGPT access token in {home / 'auth.json'} has expired and there is no refresh "
        "token to renew it; run `codex login`"
    )


@pytest.mark.parametrize(
    ("status_code", "code", "expected"),
    [
        (400, "refresh_token_expired", "because your refresh token has expired. Please log out"),
        (400, "refresh_token_reused", "because your refresh token was already used."),
        (401, "other", "Your access token could not be refreshed. Please log out and sign in"),
        (503, "busy", "Failed to refresh token: 503: busy"),
    ],
)
async def test_a_refused_refresh_says_what_codex_says(
    tmp_path: Path, status_code: int, code: str, expected: str
) -> None:
    home = codex_home(tmp_path, chatgpt_login(access_token(time.time() - 10), "rt-secret-x"))
    async with Stub(lambda _: error(status_code, code, "rt-secret-x is bad")) as stub:
        run = await cli(
            "serve",
            "--remote",
            stub.url,
            "--environment-id",
            "devbox",
            env=clean_env(CODEX_HOME=str(home), CODEX_REFRESH_TOKEN_URL_OVERRIDE=stub.url),
        )
    assert stub.paths() == ["/"]  # the token endpoint only: nothing was registered
    assert expected in one_error_line(run, "rt-secret-x")


async def test_a_registry_echoing_the_credential_never_gets_it_printed_or_logged(
    tmp_path: Path,
) -> None:
    home = codex_home(tmp_path, chatgpt_login(ACCESS))

    def echo(request: Recorded) -> web.Response:
        return error(401, "denied", f"denied {request.header('Authorization')}")

    async with Stub(echo) as stub:
        run = await cli(
            "serve",
            "--remote",
            stub.url,
            "--environment-id",
            "devbox",
            "--log-level",
            "debug",
            env=clean_env(CODEX_HOME=str(home)),
        )
    assert one_error_line(run, ACCESS) == (
        "environment registry authentication error: environment registry authentication failed "
        "(401 Unauthorized): response body omitted"
    )


async def test_config_toml_problems_are_named(tmp_path: Path) -> None:
    home = codex_home(tmp_path, chatgpt_login(ACCESS), config="cli_auth_credentials_store = [")
    assert "config.toml is not valid TOML" in one_error_line(
        await status(clean_env(CODEX_HOME=str(home)))
    )
    (home / "config.toml").write_text('cli_auth_credentials_store = "vault"\n')
    assert one_error_line(await status(clean_env(CODEX_HOME=str(home)))) == (
        f"{home / 'config.toml'}: cli_auth_credentials_store must be one of file, keyring, auto, "
        "ephemeral"
    )


# -- API keys -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("login", "env", "where"),
    [
        (
            chatgpt_login(ACCESS),
            {"CODEX_API_KEY": "sk-proj-secret1"},
            "(CODEX_API_KEY is set: unset it)",
        ),
        (None, {"OPENAI_API_KEY": "sk-secret2"}, "(OPENAI_API_KEY is set, but no ChatGPT login)"),
        ({"auth_mode": "apikey", "OPENAI_API_KEY": "sk-secret3"}, {}, "holds an API key login)"),
        ({"OPENAI_API_KEY": "sk-secret4"}, {}, "holds an API key login)"),
    ],
)
async def test_api_keys_are_refused_for_registration(
    tmp_path: Path, login: dict[str, object] | None, env: dict[str, str], where: str
) -> None:
    home = codex_home(tmp_path, login)
    line = one_error_line(await status(clean_env(CODEX_HOME=str(home), **env)), "sk-")
    assert line.startswith(API_KEY_REFUSED) and line.endswith(where)


async def test_an_api_key_as_registry_token_is_refused_from_file_and_stdin(tmp_path: Path) -> None:
    (tmp_path / "token").write_text("sk-proj-secret5\n")
    env = clean_env(CODEX_HOME=str(codex_home(tmp_path)))
    from_file = await status(env, "--token-file", str(tmp_path / "token"))
    assert one_error_line(from_file, "sk-proj-secret5") == API_KEY_REFUSED
    from_stdin = await cli(
        "serve",
        "--remote",
        "http://127.0.0.1:9",
        "--environment-id",
        "devbox",
        "--token-stdin",
        env=env,
        stdin=b"sk-proj-secret6\n",
    )
    assert one_error_line(from_stdin, "sk-proj-secret6") == API_KEY_REFUSED


# -- Agent Identity -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("token", "expected"),
    [
        (
            "abc.def",
            "CODEX_ACCESS_TOKEN is not a JWT (expected three non-empty dot-separated parts)",
        ),
        ("a.!!!.c", "CODEX_ACCESS_TOKEN has a header that is not base64url-encoded JSON"),
        (Agent().token(expires_in=-300), "min ago; get a new Agent Identity token"),
        (
            Agent().token(issued_at=time.time() + 3600),
            "min in the future; this machine's clock is probably wrong",
        ),
    ],
)
async def test_a_bad_agent_identity_token_is_one_clear_line(
    tmp_path: Path, token: str, expected: str
) -> None:
    env = clean_env(CODEX_HOME=str(codex_home(tmp_path)), CODEX_ACCESS_TOKEN=token)
    line = one_error_line(await status(env, "--allow-agent-identity-auth"), token)
    assert expected in line


async def test_agent_identity_is_ignored_without_the_flag_and_used_with_it(tmp_path: Path) -> None:
    agent = Agent()
    env = clean_env(
        CODEX_HOME=str(codex_home(tmp_path, chatgpt_login(ACCESS))),
        CODEX_ACCESS_TOKEN=agent.token(),
    )
    without = await status(env)
    assert without.stdout.startswith("registration credential: ChatGPT login")
    assert without.stderr == (
        "codexexec: CODEX_ACCESS_TOKEN is set but not used: registration uses Agent Identity "
        "only with --allow-agent-identity-auth\n"
    )
    with_flag = await status(env, "--allow-agent-identity-auth")
    assert with_flag.stdout.startswith(
        "registration credential: Agent Identity agent-rt-1 (account acct-ai) from CODEX_ACCESS_TOKEN"
    )


# -- keyrings -----------------------------------------------------------------------------------


def keyring_env(tmp_path: Path, backend: str, mode: str, **extra: str) -> dict[str, str]:
    home = codex_home(tmp_path, config=f'cli_auth_credentials_store = "{mode}"\n')
    return clean_env(
        CODEX_HOME=str(home),
        PYTHON_KEYRING_BACKEND=backend,
        PYTHONPATH=str(Path(__file__).parent.parent),
        XDG_DATA_HOME=str(tmp_path / "xdg"),
        **{STORE_ENV: str(tmp_path / "keyring.cfg")},
        **extra,
    )


async def test_a_login_in_the_keyring_is_read_and_a_refresh_is_written_back_there(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(STORE_ENV, str(tmp_path / "keyring.cfg"))
    old, new = access_token(time.time() - 5, "old"), access_token(time.time() + 3600, "new")
    env = keyring_env(tmp_path, TEST_BACKEND, "keyring")
    home = Path(env["CODEX_HOME"])
    account = keyring_account(home)
    backend = KeyringForTests()
    backend.set_password(KEYRING_SERVICE, account, json.dumps(chatgpt_login(old)))
    run = await status(env)
    assert run.stdout.splitlines()[0] == (
        "registration credential: ChatGPT login (dev@example.com, account acct-123) from keyring "
        f"({TEST_BACKEND}, service 'Codex Auth', account '{account}')"
    )

    def answer(request: Recorded) -> web.Response:
        if request.path == "/oauth/token":
            return web.json_response({"access_token": new, "refresh_token": "rt-NEW-kr"})
        return error(500, "stop", "stop here")

    async with Stub(answer) as stub:
        env["CODEX_REFRESH_TOKEN_URL_OVERRIDE"] = f"{stub.url}/oauth/token"
        await cli("serve", "--remote", stub.url, "--environment-id", "devbox", env=env)
    assert stub.requests[1].header("Authorization") == f"Bearer {new}"
    stored = json.loads(backend.get_password(KEYRING_SERVICE, account) or "{}")
    assert stored["tokens"]["refresh_token"] == "rt-NEW-kr"
    assert not (home / "auth.json").exists()


@pytest.mark.parametrize("backend", [FAIL_BACKEND, PLAINTEXT_BACKEND])
async def test_auto_without_a_real_keyring_falls_back_to_the_file_and_says_so(
    tmp_path: Path, backend: str
) -> None:
    env = keyring_env(tmp_path, backend, "auto")
    home = Path(env["CODEX_HOME"])
    (home / "auth.json").write_text(json.dumps(chatgpt_login(ACCESS)))
    (home / "auth.json").chmod(0o600)
    run = await status(env)
    assert run.returncode == 0
    assert run.stdout.startswith(
        f"registration credential: ChatGPT login (dev@example.com, account acct-123) from {home / 'auth.json'}"
    )
    assert run.stderr == (
        f'codexexec: no usable OS keyring ({backend}); cli_auth_credentials_store = "auto" '
        f"falls back to {home / 'auth.json'}\n"
    )
    assert not (tmp_path / "xdg").exists()  # nothing was written to a plaintext keyring


async def test_keyring_mode_refuses_a_plaintext_backend(tmp_path: Path) -> None:
    env = keyring_env(tmp_path, PLAINTEXT_BACKEND, "keyring")
    assert one_error_line(await status(env)) == (
        f'{Path(env["CODEX_HOME"]) / "config.toml"} sets cli_auth_credentials_store = "keyring" '
        f"but no OS keyring is available (the keyring library chose {PLAINTEXT_BACKEND}, which is "
        'not a real keyring); unlock or install one, or set cli_auth_credentials_store = "file"'
    )


async def test_a_failing_keyring_is_an_error_in_keyring_mode_and_a_fallback_in_auto(
    tmp_path: Path,
) -> None:
    (tmp_path / "keyring.cfg").write_text("this is not an INI file\n")
    env = keyring_env(tmp_path, TEST_BACKEND, "keyring")
    assert one_error_line(await status(env)) == (
        f"failed to load CLI auth from keyring {TEST_BACKEND}: MissingSectionHeaderError"
    )
    env = keyring_env(tmp_path, TEST_BACKEND, "auto")
    home = Path(env["CODEX_HOME"])
    (home / "auth.json").write_text(json.dumps(chatgpt_login(ACCESS)))
    (home / "auth.json").chmod(0o600)
    run = await status(env)
    assert run.returncode == 0
    assert run.stderr == (
        f"codexexec: failed to load CLI auth from keyring {TEST_BACKEND}: "
        f'MissingSectionHeaderError; cli_auth_credentials_store = "auto" falls back to '
        f"{home / 'auth.json'}\n"
    )


# -- the rendezvous's side ----------------------------------------------------------------------


async def test_the_rendezvous_verifies_each_part_of_an_agent_assertion(tmp_path: Path) -> None:
    agent, stranger = Agent(), Agent("agent-rt-2")
    (tmp_path / "tokens").write_text("tok-exec-0123456789 executor\n")
    (tmp_path / "agents").write_text(
        f"{agent.runtime_id} {agent.public_key}\n{stranger.runtime_id} {stranger.public_key}\n"
    )
    store = Store(tmp_path / "rv.sqlite3")
    options = RendezvousOptions(heartbeat=None, agent_keys=tmp_path / "agents")
    running = await start_rendezvous(
        "http://127.0.0.1:0", TokenTable.load(tmp_path / "tokens"), store, options
    )
    base = running.url

    def assertion(
        who: Agent, task_id: str, at: float | None = None, signer: Agent | None = None
    ) -> str:
        stamp = timestamp(time.time() if at is None else at)
        message = f"{who.runtime_id}:{task_id}:{stamp}".encode()
        return encode_assertion(who.runtime_id, task_id, stamp, (signer or who).key.sign(message))

    try:
        async with aiohttp.ClientSession() as http:

            async def task_for(who: Agent) -> str:
                stamp = timestamp(time.time())
                signature = base64.b64encode(who.key.sign(f"{who.runtime_id}:{stamp}".encode()))
                async with http.post(
                    f"{base}/v1/agent/{who.runtime_id}/task/register",
                    json={"timestamp": stamp, "signature": signature.decode()},
                ) as response:
                    assert response.status == 200
                    return str((await response.json())["task_id"])

            async def register(authorization: str) -> tuple[int, dict[str, str]]:
                async with http.post(
                    f"{base}/cloud/environment/devbox/register",
                    json={"security_profile": "legacy"},
                    headers={"Authorization": authorization},
                ) as response:
                    body = await response.json()
                    return response.status, body.get("error", {})

            task, other_task = await task_for(agent), await task_for(stranger)
            assert (await register(assertion(agent, task)))[0] == 200
            cases = {
                "agent_assertion_stale": assertion(agent, task, at=time.time() - 600),
                "invalid_agent_assertion": assertion(agent, task, signer=stranger),
                "unknown_agent_task": assertion(agent, other_task),
                "unknown_agent": assertion(Agent("nobody"), task),
            }
            for code, header in cases.items():
                status_code, body = await register(header)
                assert (status_code, body["code"]) == (401, code)
            # A task id that is not ASCII (or not even encodable) is unknown, not a 500.
            lone_surrogate = json.dumps(
                {
                    "agent_runtime_id": agent.runtime_id,
                    "signature": "AA==",
                    "task_id": "\ud800",
                    "timestamp": timestamp(time.time()),
                }
            ).encode()
            for header in (
                assertion(agent, "task_\u00e9.\u00fc"),
                "AgentAssertion " + base64.urlsafe_b64encode(lone_surrogate).decode(),
            ):
                status_code, body = await register(header)
                assert (status_code, body["code"]) == (401, "unknown_agent_task")
            status_code, body = await register("AgentAssertion not-base64-json")
            assert (status_code, body["code"]) == (401, "invalid_agent_assertion")
            status_code, body = await register("Bearer sk-proj-abcdef")
            assert (status_code, body["message"]) == (401, API_KEY_REFUSED)
    finally:
        await running.stop()
        store.close()
