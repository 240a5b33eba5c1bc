"""Agent Identity: an AgentAssertion per request, from the JWT in ``CODEX_ACCESS_TOKEN``.

Used only when the user passes ``--allow-agent-identity-auth``. The JWT is checked for shape
(three base64url JSON parts), its claims (``agent_runtime_id``, a base64 PKCS#8 Ed25519
``agent_private_key``, ``account_id``, ``exp``), expiry and clock skew. Its signature is not
checked here: the registry trusts the agent's public key, not this process.

Before the first request the agent registers a task, once per process, as Codex does:
``POST {authapi}/v1/agent/{runtime}/task/register`` ``{"timestamp", "signature"}``; the
answer holds ``task_id`` (or ``taskId``), or ``encrypted_task_id`` (or ``encryptedTaskId``):
a libsodium sealed box to the X25519 key derived from the agent's Ed25519 seed. ``{authapi}``
is ``CODEX_AGENT_IDENTITY_AUTHAPI_BASE_URL`` if set; otherwise Codex's own service for an
OpenAI registry, and the registry itself for any other (``codexexec rendezvous`` serves
task registration for the agents it knows).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import json
import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, urlsplit

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import load_der_private_key

from codexexec.remote.auth.assertion import (
    assertion_message,
    encode_assertion,
    task_registration_message,
    timestamp,
)
from codexexec.remote.auth.base import AuthError
from codexexec.remote.auth.chatgpt import ACCOUNT_HEADER, FEDRAMP_HEADER
from codexexec.remote.auth.jwt import JwtError, decode_claims, numeric_claim
from codexexec.remote.http import Unreachable, post_json

ACCESS_TOKEN_ENV = "CODEX_ACCESS_TOKEN"
AUTHAPI_ENV = "CODEX_AGENT_IDENTITY_AUTHAPI_BASE_URL"
OPENAI_AUTHAPI_BASE_URL = "https://auth.api.openai.org/api/accounts"  # Codex 0.169.0's default
TASK_REGISTRATION_TIMEOUT_SECONDS = 30.0
MAX_CLOCK_SKEW_SECONDS = 300.0
_OPENAI_HOSTS = ("openai.com", "openai.org", "chatgpt.com")


@dataclass(frozen=True)
class AgentIdentity:
    runtime_id: str
    key: Ed25519PrivateKey
    account_id: str
    fedramp: bool
    expires_at: float


def parse_agent_identity(token: str, now: float | None = None) -> AgentIdentity:
    """Check ``CODEX_ACCESS_TOKEN``; AuthError says what is wrong, never the token."""
    now = time.time() if now is None else now
    what = ACCESS_TOKEN_ENV
    try:
        claims = decode_claims(token.strip())
        expires = numeric_claim(claims, "exp")
        issued = numeric_claim(claims, "iat")
    except JwtError as exc:
        raise AuthError(f"{what} {exc}; it must hold an Agent Identity JWT") from None
    if expires is None:
        raise AuthError(f"{what} has no `exp` claim; it must hold an Agent Identity JWT")
    if expires <= now:
        raise AuthError(
            f"{what} expired {_ago(now - expires)} ago; get a new Agent Identity token "
            "(if it should still be valid, check this machine's clock)"
        )
    if issued is not None and issued > now + MAX_CLOCK_SKEW_SECONDS:
        raise AuthError(
            f"{what} was issued {_ago(issued - now)} in the future; this machine's clock is "
            "probably wrong"
        )
    runtime_id = claims.get("agent_runtime_id")
    account_id = claims.get("account_id")
    if not isinstance(runtime_id, str) or not runtime_id:
        raise AuthError(f"{what} has no `agent_runtime_id` claim")
    if not isinstance(account_id, str):
        raise AuthError(f"{what} has no `account_id` claim")
    return AgentIdentity(
        runtime_id,
        _private_key(claims.get("agent_private_key")),
        account_id,
        claims.get("chatgpt_account_is_fedramp") is True,
        expires,
    )


def _private_key(value: object) -> Ed25519PrivateKey:
    problem = (
        f"{ACCESS_TOKEN_ENV} has an `agent_private_key` that is not a base64 PKCS#8 Ed25519 key"
    )
    if not isinstance(value, str):
        raise AuthError(problem)
    try:
        key = load_der_private_key(base64.b64decode(value, validate=True), password=None)
    except (binascii.Error, ValueError, TypeError):
        raise AuthError(problem) from None
    if not isinstance(key, Ed25519PrivateKey):
        raise AuthError(problem)
    return key


def _ago(seconds: float) -> str:
    seconds = int(seconds)
    return f"{seconds // 60} min" if seconds >= 120 else f"{seconds} s"


def authapi_base_url(registry_url: str, environ: dict[str, str] | Any) -> str:
    configured = str(environ.get(AUTHAPI_ENV, "")).strip().rstrip("/")
    if configured:
        return configured
    host = (urlsplit(registry_url).hostname or "").lower()
    if any(host == name or host.endswith("." + name) for name in _OPENAI_HOSTS):
        return OPENAI_AUTHAPI_BASE_URL
    return registry_url.strip().rstrip("/")


class AgentIdentityAuth:
    def __init__(self, identity: AgentIdentity, authapi_base: str) -> None:
        self._identity = identity
        self._authapi_base = authapi_base
        self._task_id: str | None = None
        self._lock = asyncio.Lock()

    @property
    def description(self) -> str:
        return (
            f"Agent Identity {self._identity.runtime_id} (account {self._identity.account_id}) "
            f"from {ACCESS_TOKEN_ENV}"
        )

    def expires_at(self) -> float:
        return self._identity.expires_at

    async def headers(self) -> dict[str, str]:
        now = time.time()
        if self._identity.expires_at <= now:
            raise AuthError(f"{ACCESS_TOKEN_ENV} has expired; get a new Agent Identity token")
        task_id = await self._task()
        stamp = timestamp(now)
        identity = self._identity
        signature = identity.key.sign(assertion_message(identity.runtime_id, task_id, stamp))
        headers = {
            "Authorization": encode_assertion(identity.runtime_id, task_id, stamp, signature),
            ACCOUNT_HEADER: identity.account_id,
        }
        if identity.fedramp:
            headers[FEDRAMP_HEADER] = "true"
        return headers

    async def _task(self) -> str:
        async with self._lock:
            if self._task_id is None:
                self._task_id = await self._register_task()
            return self._task_id

    async def _register_task(self) -> str:
        identity = self._identity
        stamp = timestamp(time.time())
        signature = identity.key.sign(task_registration_message(identity.runtime_id, stamp))
        url = f"{self._authapi_base}/v1/agent/{quote(identity.runtime_id, safe='')}/task/register"
        body = {"timestamp": stamp, "signature": base64.b64encode(signature).decode()}
        try:
            reply = await post_json(url, body, {}, TASK_REGISTRATION_TIMEOUT_SECONDS)
        except Unreachable as exc:
            raise AuthError(
                f"cannot register the agent task at {self._authapi_base}: {exc}"
            ) from None
        if not 200 <= reply.status < 300:
            raise AuthError(
                f"failed to register agent task with status {reply.status_line} at "
                f"{self._authapi_base}"
            )
        try:
            payload: Any = json.loads(reply.text)
        except ValueError:
            payload = None
        if not isinstance(payload, dict):
            raise AuthError("failed to decode agent task registration response")
        for key in ("task_id", "taskId"):
            if isinstance(payload.get(key), str) and payload[key]:
                return str(payload[key])
        for key in ("encrypted_task_id", "encryptedTaskId"):
            if isinstance(payload.get(key), str) and payload[key]:
                return self._decrypt_task_id(payload[key])
        raise AuthError("agent task registration response omitted task id")

    def _decrypt_task_id(self, sealed: str) -> str:
        from cryptography.hazmat.primitives.serialization import (
            Encoding,
            NoEncryption,
            PrivateFormat,
        )
        from nacl.exceptions import CryptoError
        from nacl.public import PrivateKey, SealedBox

        seed = self._identity.key.private_bytes(Encoding.Raw, PrivateFormat.Raw, NoEncryption())
        scalar = bytearray(hashlib.sha512(seed).digest()[:32])
        scalar[0] &= 248
        scalar[31] &= 127
        scalar[31] |= 64
        try:
            plain = SealedBox(PrivateKey(bytes(scalar))).decrypt(base64.b64decode(sealed))
            return plain.decode()
        except (CryptoError, binascii.Error, ValueError, UnicodeDecodeError):
            raise AuthError("failed to decrypt encrypted task id") from None
