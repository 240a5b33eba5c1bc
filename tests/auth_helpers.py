"""Shared pieces of the auth tests: fake Codex logins, Agent Identity tokens, a recording
loopback HTTP stub, and the CLI run as a real subprocess."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiohttp import web
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    NoEncryption,
    PrivateFormat,
    PublicFormat,
)

from tests.servers import codexexec_command

ACCOUNT = "acct-123"


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def jwt(claims: dict[str, Any]) -> str:
    header = b64url(json.dumps({"alg": "none", "typ": "JWT"}).encode())
    return f"{header}.{b64url(json.dumps(claims).encode())}.c2ln"


def access_token(expires: float, marker: str = "a") -> str:
    return jwt({"exp": int(expires), "marker": marker, "https://api.openai.com/auth": {}})


def chatgpt_login(access: str, refresh: str | None = "rt-OLD-secret") -> dict[str, Any]:
    id_token = jwt(
        {
            "email": "dev@example.com",
            "https://api.openai.com/auth": {
                "chatgpt_plan_type": "pro",
                "chatgpt_account_id": ACCOUNT,
            },
        }
    )
    tokens: dict[str, Any] = {"id_token": id_token, "access_token": access, "account_id": ACCOUNT}
    if refresh is not None:
        tokens["refresh_token"] = refresh
    return {
        "auth_mode": "chatgpt",
        "OPENAI_API_KEY": None,
        "tokens": tokens,
        "last_refresh": "2025-01-01T00:00:00Z",
    }


def codex_home(tmp: Path, login: dict[str, Any] | None = None, config: str = "") -> Path:
    home = tmp / "codex-home"
    home.mkdir(mode=0o700, exist_ok=True)
    if login is not None:
        path = home / "auth.json"
        path.write_text(json.dumps(login, indent=2))
        path.chmod(0o600)
    if config:
        (home / "config.toml").write_text(config)
    return home


@dataclass
class Agent:
    runtime_id: str = "agent-rt-1"
    key: Ed25519PrivateKey = field(default_factory=Ed25519PrivateKey.generate)
    account_id: str = "acct-ai"

    def token(self, *, expires_in: float = 3600, issued_at: float | None = None) -> str:
        now = time.time()
        pkcs8 = self.key.private_bytes(Encoding.DER, PrivateFormat.PKCS8, NoEncryption())
        return jwt(
            {
                "iss": "https://chatgpt.com/codex-backend/agent-identity",
                "aud": "codex-app-server",
                "iat": int(now if issued_at is None else issued_at),
                "exp": int(now + expires_in),
                "agent_runtime_id": self.runtime_id,
                "agent_private_key": base64.b64encode(pkcs8).decode(),
                "account_id": self.account_id,
                "chatgpt_user_id": "user-ai",
                "email": "agent@example.com",
                "plan_type": "pro",
                "chatgpt_account_is_fedramp": False,
            }
        )

    @property
    def public_key(self) -> str:
        raw = self.key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
        return base64.b64encode(raw).decode()


@dataclass
class Recorded:
    method: str
    path: str
    headers: list[tuple[str, str]]
    body: bytes

    def header(self, name: str) -> str | None:
        return next((v for k, v in self.headers if k.lower() == name.lower()), None)


Answer = Callable[[Recorded], web.StreamResponse]


class Stub:
    """A loopback HTTP server that records every request and answers through ``answer``."""

    def __init__(self, answer: Answer) -> None:
        self.answer = answer
        self.requests: list[Recorded] = []
        self._runner: web.AppRunner | None = None
        self.url = ""

    async def __aenter__(self) -> Stub:
        async def handle(request: web.Request) -> web.StreamResponse:
            recorded = Recorded(
                request.method, request.path, list(request.headers.items()), await request.read()
            )
            self.requests.append(recorded)
            return self.answer(recorded)

        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", handle)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        host, port = self._runner.addresses[0][:2]
        self.url = f"http://{host}:{port}"
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._runner is not None
        await self._runner.cleanup()

    def paths(self) -> list[str]:
        return [request.path for request in self.requests]


def error(status: int, code: str | None = None, message: str | None = None) -> web.Response:
    body: dict[str, Any] = {}
    if code is not None:
        body["code"] = code
    if message is not None:
        body["message"] = message
    return web.json_response({"error": body}, status=status)


def clean_env(**extra: str) -> dict[str, str]:
    """The test process's environment without any credential the tests did not put there."""
    dropped = {
        "CODEX_HOME",
        "CODEX_ACCESS_TOKEN",
        "CODEX_API_KEY",
        "OPENAI_API_KEY",
        "CODEXEXEC_REGISTRY_TOKEN",
        "CODEX_REFRESH_TOKEN_URL_OVERRIDE",
        "CODEX_AGENT_IDENTITY_AUTHAPI_BASE_URL",
        "PYTHON_KEYRING_BACKEND",
        "TRACEPARENT",
        "TRACESTATE",
    }
    env = {k: v for k, v in os.environ.items() if k not in dropped}
    env.update(extra)
    return env


@dataclass
class Run:
    returncode: int
    stdout: str
    stderr: str


async def cli(*args: str, env: dict[str, str], timeout: float = 60, stdin: bytes = b"") -> Run:
    process = await asyncio.create_subprocess_exec(
        *codexexec_command(*args),
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=env,
    )
    out, err = await asyncio.wait_for(process.communicate(stdin), timeout)
    assert process.returncode is not None
    return Run(process.returncode, out.decode(), err.decode())
