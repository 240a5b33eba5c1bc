"""The registry requests codexexec sends, checked byte for byte on a loopback stub against
what the real Codex 0.169.0 executor was captured sending (headers, compact bodies, the
token refresh, AgentAssertion and task registration) and the error texts it printed."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import re
import stat
import time
from pathlib import Path

import pytest
from aiohttp import web
from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat
from nacl.public import PrivateKey, SealedBox

from codexexec.remote import registry
from codexexec.remote.auth.agent_identity import AgentIdentityAuth, parse_agent_identity
from codexexec.remote.auth.bearer import StaticBearer
from codexexec.remote.registry import RegistryError, register_executor
from tests.auth_helpers import (
    ACCOUNT,
    Agent,
    Recorded,
    Stub,
    access_token,
    chatgpt_login,
    clean_env,
    cli,
    codex_home,
    error,
)

STOP = "environment registry request failed (500 Internal Server Error, stop): stop here"
BUNDLE = {
    "environment_id": "devbox",
    "url": "ws://127.0.0.1:9/relay",
    "security_profile": "legacy",
    "executor_registration_id": "reg-1",
}


def stop(_: Recorded) -> web.Response:
    return error(500, "stop", "stop here")


async def test_a_chatgpt_login_registers_with_the_headers_and_body_codex_sends(
    tmp_path: Path,
) -> None:
    access = access_token(time.time() + 3600)
    home = codex_home(tmp_path, chatgpt_login(access))
    async with Stub(stop) as stub:
        run = await cli(
            "serve",
            "--remote",
            stub.url,
            "--environment-id",
            "devbox",
            env=clean_env(CODEX_HOME=str(home)),
        )
    assert run.returncode == 125
    assert run.stderr.splitlines()[-1] == f"codexexec: error: {STOP}"
    (request,) = stub.requests
    assert (request.method, request.path) == ("POST", "/cloud/environment/devbox/register")
    # Codex 0.169.0 sent exactly these (no User-Agent, no Accept-Encoding, no trace header).
    assert sorted(name.lower() for name, _ in request.headers) == sorted(
        ["host", "content-type", "authorization", "chatgpt-account-id", "accept", "content-length"]
    )
    assert request.header("Authorization") == f"Bearer {access}"
    assert request.header("chatgpt-account-id") == ACCOUNT
    assert request.header("Content-Type") == "application/json"
    assert request.header("Accept") == "*/*"
    body = json.loads(request.body)
    assert body["security_profile"] == "noise_hybrid_ik_v1"
    assert list(body["executor_public_key"]) == [
        "suite",
        "x25519_public_key",
        "mlkem768_public_key",
    ]
    assert request.body == json.dumps(body, separators=(",", ":")).encode()  # compact, as serde
    assert len(request.body) == 1792  # the size Codex's register body had
    assert access not in run.stderr


async def test_an_expired_access_token_is_refreshed_and_written_back_atomically(
    tmp_path: Path,
) -> None:
    old = access_token(time.time() - 60, "old")
    new = access_token(time.time() + 3600, "new")
    login = chatgpt_login(old, refresh="rt-OLD-secret")
    home = codex_home(tmp_path, login)

    def answer(request: Recorded) -> web.Response:
        if request.path == "/oauth/token":
            return web.json_response({"access_token": new, "refresh_token": "rt-NEW-secret"})
        return stop(request)

    async with Stub(answer) as stub:
        run = await cli(
            "serve",
            "--remote",
            stub.url,
            "--environment-id",
            "devbox",
            env=clean_env(
                CODEX_HOME=str(home), CODEX_REFRESH_TOKEN_URL_OVERRIDE=f"{stub.url}/oauth/token"
            ),
        )
    assert run.stderr.splitlines()[-1] == f"codexexec: error: {STOP}"
    token_request, register = stub.requests
    assert token_request.path == "/oauth/token"
    assert token_request.body == (  # byte for byte what Codex 0.169.0 sent
        b'{"client_id":"app_EMoamEEZ73f0CkXaXp7hrann","grant_type":"refresh_token",'
        b'"refresh_reason":"proactive_expiry","refresh_token":"rt-OLD-secret"}'
    )
    assert token_request.header("Content-Type") == "application/json"
    # Codex 0.169.0 sent `originator: codex_cli_rs` and `User-Agent: codex_cli_rs/0.169.0
    # (Debian 12.0.0; x86_64) xterm`; codexexec names itself in the same shape.
    assert token_request.header("originator") == "codex_cli_rs"
    assert re.fullmatch(r"codexexec/\S+ \(\S+ \S+; \S+\)", token_request.header("User-Agent") or "")
    assert register.header("Authorization") == f"Bearer {new}"
    path = home / "auth.json"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    saved = json.loads(path.read_text())
    assert saved["tokens"] == {
        **login["tokens"],
        "access_token": new,
        "refresh_token": "rt-NEW-secret",
    }
    assert list(saved) == list(login)  # the other fields and their order are kept
    assert saved["last_refresh"] != login["last_refresh"]
    assert sorted(p.name for p in home.iterdir()) == ["auth.json", "auth.json.lock"]
    for secret in (old, new, "rt-OLD-secret", "rt-NEW-secret"):
        assert secret not in run.stderr


TOKEN = "tok-abcdefgh-secret"
ERROR_TEXTS = [  # (status, body or None for empty, content type, expected text)
    (
        401,
        {"error": {"code": "unauthorized", "message": "token says no"}},
        None,
        "environment registry authentication error: environment registry authentication failed "
        "(401 Unauthorized): token says no",
    ),
    (
        403,
        {"error": {"code": "forbidden", "message": "no role"}},
        None,
        "environment registry authentication error: environment registry authentication failed "
        "(403 Forbidden): no role",
    ),
    (
        401,
        "plain text nope",
        "text/plain",
        "environment registry authentication error: environment registry authentication failed "
        "(401 Unauthorized): plain text nope",
    ),
    (
        401,
        None,
        None,
        "environment registry authentication error: environment registry authentication failed "
        "(401 Unauthorized): empty error body",
    ),
    (
        500,
        None,
        None,
        "environment registry request failed (500 Internal Server Error): empty or malformed error body",
    ),
    (
        500,
        {"error": {"code": "only_code"}},
        None,
        'environment registry request failed (500 Internal Server Error, only_code): {"error": {"code": "only_code"}}',
    ),
    (
        500,
        {"error": {"code": "boom_code", "message": "the registry message"}},
        None,
        "environment registry request failed (500 Internal Server Error, boom_code): the registry message",
    ),
    (
        503,
        {"error": {"code": "other_code", "message": "m"}},
        None,
        "environment registry request failed (503 Service Unavailable, other_code): m",
    ),
    # codexexec's departures from Codex: no HTML page and no echoed credential on the terminal.
    (
        502,
        "<html><body>\n<h1>Bad gateway</h1>\n</body></html>",
        "text/html",
        "environment registry request failed (502 Bad Gateway): response body omitted "
        "(an HTML page, not the registry's JSON error)",
    ),
    (
        401,
        {"error": {"code": "x", "message": f"bad token {TOKEN}"}},
        None,
        "environment registry authentication error: environment registry authentication failed "
        "(401 Unauthorized): response body omitted",
    ),
]


@pytest.mark.parametrize(("status", "body", "content_type", "expected"), ERROR_TEXTS)
async def test_registry_errors_read_like_codex(
    status: int, body: object, content_type: str | None, expected: str
) -> None:
    def answer(_: Recorded) -> web.Response:
        if isinstance(body, dict):
            return web.json_response(body, status=status)
        return web.Response(
            status=status, text=body or "", content_type=content_type or "text/plain"
        )

    async with Stub(answer) as stub:
        with pytest.raises(RegistryError) as caught:
            await register_executor(stub.url, "devbox", StaticBearer(TOKEN, "test"))
    assert str(caught.value) == expected
    assert len(stub.requests) == 1  # none of these is retried


async def test_a_redirect_is_reported_and_never_followed() -> None:
    async with Stub(lambda _: web.json_response(BUNDLE)) as elsewhere:
        redirect = web.Response(status=307, headers={"Location": f"{elsewhere.url}/steal?x=1"})
        async with Stub(lambda _: redirect) as stub:
            with pytest.raises(RegistryError) as caught:
                await register_executor(stub.url, "devbox", StaticBearer(TOKEN, "test"))
        assert elsewhere.requests == []
    assert str(caught.value) == (
        "environment registry request failed (307 Temporary Redirect): redirect to "
        f"{elsewhere.url} not followed (credentials are never forwarded)"
    )


async def test_a_non_json_success_is_a_clear_error() -> None:
    async with Stub(
        lambda _: web.Response(text="<html>hi</html>", content_type="text/html")
    ) as stub:
        with pytest.raises(RegistryError, match=r"^invalid environment registry register response"):
            await register_executor(stub.url, "devbox", StaticBearer(TOKEN, "test"))


async def test_only_codes_codex_retries_are_retried_with_its_backoff() -> None:
    answers = [
        error(503, "registration_conflict"),
        error(502, "authentication_service_unavailable"),
        web.json_response(BUNDLE),
    ]
    async with Stub(lambda _: answers.pop(0)) as stub:
        started = time.monotonic()
        bundle = await register_executor(stub.url, "devbox", StaticBearer(TOKEN, "test"))
        elapsed = time.monotonic() - started
    assert bundle.executor_registration_id == "reg-1"
    assert len(stub.requests) == 3
    assert 0.8 * (0.7 + 1.4) <= elapsed <= 1.2 * (0.7 + 1.4) + 1.0  # 0.7 s, then 1.4 s, +/-20 %
    for status, code in ((500, "registration_conflict"), (503, None), (502, "other")):
        async with Stub(lambda _, s=status, c=code: error(s, c)) as stub:
            with pytest.raises(RegistryError):
                await register_executor(stub.url, "devbox", StaticBearer(TOKEN, "test"))
        assert len(stub.requests) == 1


async def test_w3c_trace_context_is_passed_through_when_well_formed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    parent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
    monkeypatch.setenv("TRACEPARENT", parent)
    monkeypatch.setenv("TRACESTATE", "vendor=abc")
    async with Stub(stop) as stub:
        with pytest.raises(RegistryError):
            await register_executor(stub.url, "devbox", StaticBearer(TOKEN, "test"))
        monkeypatch.setenv("TRACEPARENT", "not-a-trace")
        with pytest.raises(RegistryError):
            await register_executor(stub.url, "devbox", StaticBearer(TOKEN, "test"))
    first, second = stub.requests
    assert (first.header("traceparent"), first.header("tracestate")) == (parent, "vendor=abc")
    assert second.header("traceparent") is None and second.header("tracestate") is None


async def test_a_registry_that_never_answers_is_cut_at_the_timeout(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(registry, "REQUEST_TIMEOUT_SECONDS", 0.5)
    held: list[asyncio.StreamWriter] = []

    async def hold(_: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        held.append(writer)

    server = await asyncio.start_server(hold, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    started = time.monotonic()
    with pytest.raises(RegistryError) as caught:
        await register_executor(f"http://127.0.0.1:{port}", "devbox", StaticBearer(TOKEN, "t"))
    assert time.monotonic() - started < 3
    assert str(caught.value) == (
        f"cannot reach the environment registry at http://127.0.0.1:{port}: no answer in time"
    )
    server.close()
    for writer in held:
        writer.close()


def _x25519_of(agent: Agent) -> PrivateKey:
    seed = agent.key.private_bytes(Encoding.Raw, PrivateFormat.Raw, NoEncryption())
    scalar = bytearray(hashlib.sha512(seed).digest()[:32])
    scalar[0] &= 248
    scalar[31] &= 127
    scalar[31] |= 64
    return PrivateKey(bytes(scalar))


@pytest.mark.parametrize("sealed", [False, True])
async def test_agent_identity_sends_codexs_assertion_after_one_task_registration(
    sealed: bool,
) -> None:
    agent = Agent()

    def answer(request: Recorded) -> web.Response:
        if request.path.endswith("/task/register"):
            if sealed:
                box = SealedBox(_x25519_of(agent).public_key).encrypt(b"task-sealed")
                return web.json_response({"encryptedTaskId": base64.b64encode(box).decode()})
            return web.json_response({"task_id": "task-xyz"})
        return stop(request)

    async with Stub(answer) as stub:
        auth = AgentIdentityAuth(parse_agent_identity(agent.token()), stub.url)
        for _ in range(2):
            with pytest.raises(RegistryError):
                await register_executor(stub.url, "devbox", auth)
    task, first, second = stub.requests
    assert task.path == "/v1/agent/agent-rt-1/task/register"  # once per process
    match = re.fullmatch(
        rb'\{"timestamp":"([0-9TZ:-]{20})","signature":"([A-Za-z0-9+/=]+)"\}', task.body
    )
    assert match is not None, task.body
    public = agent.key.public_key()
    public.verify(base64.b64decode(match[2]), b"agent-rt-1:" + match[1])
    task_id = "task-sealed" if sealed else "task-xyz"
    for request in (first, second):
        scheme, _, value = (request.header("Authorization") or "").partition(" ")
        assert scheme == "AgentAssertion" and "=" not in value
        raw = base64.urlsafe_b64decode(value + "=" * (-len(value) % 4))
        envelope = json.loads(raw)
        assert raw == json.dumps(envelope, separators=(",", ":"), sort_keys=True).encode()
        assert list(envelope) == ["agent_runtime_id", "signature", "task_id", "timestamp"]
        assert envelope["agent_runtime_id"] == "agent-rt-1" and envelope["task_id"] == task_id
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", envelope["timestamp"])
        message = f"agent-rt-1:{task_id}:{envelope['timestamp']}".encode()
        public.verify(base64.b64decode(envelope["signature"]), message)
        assert request.header("chatgpt-account-id") == "acct-ai"
