"""Websocket authentication (`--ws-auth`), run against codexexec's server and the real Codex
0.169.0 exec-server alike: the same upgrade requests get the same answers (status and
text), the same bad flags the same refusals, and each side's client reaches the other's
server through them."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

from tests.codex_harness import UrlEnvironment, run_codex_turn
from tests.servers import RunningServer, codex_binary, codexexec_command, start_server

TOKEN = "capability-token-0123456789"
SECRET = "shared-secret-" + "s" * 40
ISSUER, AUDIENCE = "issuer-1", "audience-1"


def jwt(claims: dict[str, Any], *, secret: str = SECRET, alg: str = "HS256") -> str:
    def b64(data: bytes) -> str:
        return base64.urlsafe_b64encode(data).rstrip(b"=").decode()

    head = b64(json.dumps({"alg": alg, "typ": "JWT"}).encode())
    body = b64(json.dumps(claims).encode())
    signed = f"{head}.{body}".encode()
    signature = (
        b64(hmac.new(secret.encode(), signed, hashlib.sha256).digest()) if alg == "HS256" else ""
    )
    return f"{head}.{body}.{signature}"


@pytest.fixture(scope="module")
def secrets_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("ws-auth")
    (folder / "token").write_text(TOKEN + "\n")
    (folder / "secret").write_text(SECRET + "\n")
    (folder / "short").write_text("too-short\n")
    (folder / "empty").write_text("  \n")
    return folder


def token_args(folder: Path) -> tuple[str, ...]:
    return ("--ws-auth", "capability-token", "--ws-token-file", str(folder / "token"))


def jwt_args(folder: Path) -> tuple[str, ...]:
    return (
        *("--ws-auth", "signed-bearer-token", "--ws-shared-secret-file", str(folder / "secret")),
        *("--ws-issuer", ISSUER, "--ws-audience", AUDIENCE),
    )


@pytest.fixture(scope="module", params=("codexexec", "codex"))
def token_server(request: pytest.FixtureRequest, secrets_dir: Path) -> Iterator[RunningServer]:
    with start_server(request.param, extra_args=token_args(secrets_dir)) as running:
        yield running


@pytest.fixture(scope="module", params=("codexexec", "codex"))
def jwt_server(request: pytest.FixtureRequest, secrets_dir: Path) -> Iterator[RunningServer]:
    with start_server(request.param, extra_args=jwt_args(secrets_dir)) as running:
        yield running


async def upgrade(url: str, authorization: str | None) -> tuple[int, str]:
    """The upgrade's answer: 101 and an answered initialize, or the refusal's status and text."""
    headers = {} if authorization is None else {"Authorization": authorization}
    try:
        async with connect(url, additional_headers=headers, open_timeout=5) as ws:
            await ws.send(
                json.dumps(
                    {
                        "jsonrpc": "2.0",
                        "id": 1,
                        "method": "initialize",
                        "params": {"clientName": "t"},
                    }
                )
            )
            reply = json.loads(await ws.recv())
            assert "result" in reply, reply
            return 101, ""
    except InvalidStatus as refused:
        return refused.response.status_code, refused.response.body.decode().strip()


@pytest.mark.parametrize(
    ("authorization", "answer"),
    [
        (None, (401, "missing websocket bearer token")),
        ("Bearer wrong-token", (401, "invalid websocket bearer token")),
        (f"Basic {TOKEN}", (401, "invalid authorization header")),
        ("Bearer ", (401, "invalid authorization header")),
        (f"Bearer{TOKEN}", (401, "invalid authorization header")),
        (f"Bearer {TOKEN}", (101, "")),
        (f"bearer {TOKEN}", (101, "")),
        (f"Bearer   {TOKEN}  ", (101, "")),
    ],
)
async def test_capability_token(
    token_server: RunningServer, authorization: str | None, answer: tuple[int, str]
) -> None:
    assert await upgrade(token_server.url, authorization) == answer


def _claims(**changes: Any) -> dict[str, Any]:
    claims: dict[str, Any] = {"exp": int(time.time()) + 600, "iss": ISSUER, "aud": AUDIENCE}
    claims.update(changes)
    return {k: v for k, v in claims.items() if v is not None}


# Tokens are made when the case runs (now), not when the suite is collected.
JWT_CASES: list[tuple[str, Callable[[int], str], tuple[int, str]]] = [
    ("valid", lambda now: jwt(_claims(exp=now + 600)), (101, "")),
    ("audience in a list", lambda now: jwt(_claims(exp=now + 600, aud=["o", AUDIENCE])), (101, "")),
    ("expired within the skew", lambda now: jwt(_claims(exp=now - 5)), (101, "")),
    ("expired", lambda now: jwt(_claims(exp=now - 300)), (401, "expired websocket jwt")),
    (
        "not valid yet",
        lambda now: jwt(_claims(nbf=now + 3000, exp=now + 6000)),
        (401, "websocket jwt is not valid yet"),
    ),
    (
        "other issuer",
        lambda now: jwt(_claims(exp=now + 600, iss="someone-else")),
        (401, "websocket jwt issuer mismatch"),
    ),
    (
        "no issuer",
        lambda now: jwt(_claims(exp=now + 600, iss=None)),
        (401, "websocket jwt issuer mismatch"),
    ),
    (
        "other audience",
        lambda now: jwt(_claims(exp=now + 600, aud="elsewhere")),
        (401, "websocket jwt audience mismatch"),
    ),
    ("no exp", lambda now: jwt(_claims(exp=None)), (401, "invalid websocket jwt")),
    (
        "exp not an integer",
        lambda now: jwt(_claims(exp=now + 600.5)),
        (401, "invalid websocket jwt"),
    ),
    (
        "wrong secret",
        lambda now: jwt(_claims(exp=now + 600), secret="x" * 40),
        (401, "invalid websocket jwt"),
    ),
    (
        "alg none",
        lambda now: jwt(_claims(exp=now + 600), alg="none"),
        (401, "invalid websocket jwt"),
    ),
    ("not a jwt", lambda now: "abc", (401, "invalid websocket jwt")),
]


@pytest.mark.parametrize(("name", "token", "answer"), JWT_CASES, ids=[c[0] for c in JWT_CASES])
async def test_signed_bearer_token(
    jwt_server: RunningServer, name: str, token: Callable[[int], str], answer: tuple[int, str]
) -> None:
    assert await upgrade(jwt_server.url, f"Bearer {token(int(time.time()))}") == answer


def _start_refusal(kind: str, args: tuple[str, ...]) -> tuple[str, int]:
    """What a server says when it will not start with these flags (its first stderr line),
    and its exit status."""
    if kind == "codexexec":
        argv = codexexec_command("serve", "--listen", "ws://127.0.0.1:0", *args)
    else:
        argv = [codex_binary(), "exec-server", "--listen", "ws://127.0.0.1:0", *args]
    home = "/var/tmp/codex-home-ws-auth"
    os.makedirs(home, exist_ok=True)
    done = subprocess.run(
        argv,
        capture_output=True,
        timeout=30,
        env={**os.environ, "CODEX_HOME": home},
        stdin=subprocess.DEVNULL,
    )
    assert done.returncode != 0
    lines = [line for line in done.stderr.decode().splitlines() if line.strip()]
    first = lines[0]
    text = first.removeprefix("Error: ").removeprefix("error: ").removeprefix("codexexec: error: ")
    return text, done.returncode


@pytest.mark.parametrize(
    "args",
    [
        ("--ws-auth", "capability-token"),
        ("--ws-token-file", "{dir}/token"),
        ("--ws-auth", "capability-token", "--ws-token-file", "{dir}/missing"),
        ("--ws-auth", "capability-token", "--ws-token-file", "{dir}/empty"),
        ("--ws-auth", "capability-token", "--ws-token-sha256", "abc"),
        (
            "--ws-auth",
            "capability-token",
            "--ws-token-file",
            "{dir}/token",
            "--ws-token-sha256",
            "ab" * 32,
        ),
        ("--ws-auth", "capability-token", "--ws-token-file", "{dir}/token", "--ws-issuer", "x"),
        ("--ws-auth", "signed-bearer-token"),
        ("--ws-auth", "signed-bearer-token", "--ws-shared-secret-file", "{dir}/short"),
        (
            "--ws-auth",
            "signed-bearer-token",
            "--ws-shared-secret-file",
            "{dir}/secret",
            "--ws-token-file",
            "{dir}/token",
        ),
    ],
)
def test_bad_flags_are_refused_with_codexs_words(secrets_dir: Path, args: tuple[str, ...]) -> None:
    concrete = tuple(arg.replace("{dir}", str(secrets_dir)) for arg in args)
    assert _start_refusal("codexexec", concrete) == _start_refusal("codex", concrete)


def test_a_mode_the_flag_does_not_take_is_a_usage_error() -> None:
    ours, ours_code = _start_refusal("codexexec", ("--ws-auth", "bogus"))
    theirs, theirs_code = _start_refusal("codex", ("--ws-auth", "bogus"))
    assert ours_code == theirs_code == 2
    assert ours.startswith(theirs)  # Codex puts the possible values on a line of their own


def test_a_token_given_as_its_digest(secrets_dir: Path) -> None:
    digest = hashlib.sha256(TOKEN.encode()).hexdigest()
    with start_server(
        "codexexec", extra_args=("--ws-auth", "capability-token", "--ws-token-sha256", digest)
    ) as running:
        import asyncio

        assert asyncio.run(upgrade(running.url, f"Bearer {TOKEN}")) == (101, "")
        assert asyncio.run(upgrade(running.url, "Bearer nope"))[0] == 401


@pytest.mark.parametrize("mode", ["token", "jwt"])
def test_the_codexexec_client_reaches_a_codex_server_either_way(
    secrets_dir: Path, mode: str
) -> None:
    args = token_args(secrets_dir) if mode == "token" else jwt_args(secrets_dir)
    bearer = TOKEN if mode == "token" else jwt(_claims(exp=int(time.time()) + 600))
    with start_server("codex", extra_args=args) as codex:
        run = lambda token: subprocess.run(  # noqa: E731
            codexexec_command("exec", "--env", codex.url, "--", "sh", "-c", "echo authorized"),
            capture_output=True,
            timeout=60,
            env={**os.environ, "CODEX_EXEC_SERVER_CONNECTION_TOKEN": token},
            cwd="/tmp",
        )
        allowed = run(bearer)
        assert allowed.returncode == 0 and allowed.stdout == b"authorized\n", allowed.stderr
        refused = run("not-" + bearer)
        assert refused.returncode == 125 and b"401" in refused.stderr
        assert bearer.encode() not in refused.stderr


@pytest.mark.parametrize("mode", ["token", "jwt"])
async def test_a_codex_harness_reaches_codexexec_serve_either_way(
    secrets_dir: Path, mode: str
) -> None:
    args = token_args(secrets_dir) if mode == "token" else jwt_args(secrets_dir)
    bearer = TOKEN if mode == "token" else jwt(_claims(exp=int(time.time()) + 600))
    with start_server("codexexec", extra_args=args) as server:
        environment = UrlEnvironment(server.url, record=False, bearer=bearer)
        result = await run_codex_turn(environment, "echo through auth; exit 4")
        assert result.turn_status == "completed", result.summary()
        assert result.command.exit_code == 4
        assert result.command.aggregated_output == "through auth\n"


def test_a_non_loopback_listener_without_auth_is_refused_unless_insecure(secrets_dir: Path) -> None:
    """A codexexec extension (Codex's exec-server starts anyway; its app-server refuses)."""
    argv = codexexec_command("serve", "--listen", "ws://0.0.0.0:0")
    refused = subprocess.run(argv, capture_output=True, timeout=30, stdin=subprocess.DEVNULL)
    assert refused.returncode == 1
    assert refused.stderr.decode().count("\n") == 1
    assert (
        "refusing to start non-loopback websocket listener 0.0.0.0:0 without auth"
        in refused.stderr.decode()
    )
    for extra in (token_args(secrets_dir), ("--insecure-no-auth",)):
        with start_server("codexexec", extra_args=extra) as running:  # listens on loopback
            assert running.url.startswith("ws://127.0.0.1:")
        process = subprocess.Popen(
            [*argv, *extra],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            stdin=subprocess.DEVNULL,
        )
        assert process.stdout is not None
        assert process.stdout.readline().startswith(b"ws://0.0.0.0:")
        process.terminate()
        process.wait(10)
