"""Client of an environment registry (Codex's contract; `codexexec rendezvous` serves it).

    POST {base}/cloud/environment/{id}/register   (executor)
    POST {base}/cloud/environment/{id}/connect    (harness)

Redirects are never followed (a registry must not send credentials elsewhere), each
request is bounded by 10 s, and errors read like Codex 0.169.0's (captured from the real
binary): `environment registry authentication error: environment registry authentication
failed (401 Unauthorized): <message>` and `environment registry request failed (500 Internal
Server Error, <code>): <message>`, where the message is the body's `error.message`, else the
body itself on one line. Unlike Codex, a message that quotes the request's credential is
replaced by `response body omitted`, and an HTML page is not printed. Registration alone is
retried, only for 503 `registration_conflict` and 502 `authentication_service_unavailable`,
after Codex's jittered delays (0.7 s doubling, at most 6 s, +/-20 %).

Credentials: an ``AuthProvider`` (asked for fresh headers before every request), or a bare
bearer token string (the harness's static credential, as Codex's harness has).
"""

from __future__ import annotations

import asyncio
import logging
import random
import re
from typing import TYPE_CHECKING, Any, TypeAlias

import msgspec

from codexexec.protocol.registry import LEGACY_PROFILE, NOISE_PROFILE
from codexexec.remote.errors import RemoteError
from codexexec.shown_urls import origin

if TYPE_CHECKING:
    from codexexec.noise.profiles import NoiseParty
    from codexexec.remote.auth.base import AuthProvider
    from codexexec.remote.http import HttpReply

# How a caller authenticates: a provider asked for headers per request, or a bare token.
Credential: TypeAlias = "AuthProvider | str | None"

REQUEST_TIMEOUT_SECONDS = 10.0
_ENVIRONMENT_ID = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
RETRYABLE_REGISTRATION = {
    (503, "registration_conflict"),
    (502, "authentication_service_unavailable"),
}
RETRY_FIRST_SECONDS, RETRY_MAX_SECONDS, RETRY_JITTER = 0.7, 6.0, 0.2
MAX_ERROR_MESSAGE_CHARS = 4096
# Not the registry's: the executor has no usable credential yet (a rotating one expired).
CREDENTIAL_UNAVAILABLE = "credential_unavailable"
BODY_OMITTED = "response body omitted"
log = logging.getLogger(__name__)


class RegistryError(RemoteError):
    """The registry refused or could not be reached; the message says which and why.

    ``code`` is the registry's machine-readable error code when it sent one;
    ``security_profile`` the profile the environment uses, when the registry names it (a
    codexexec rendezvous does on `security_profile_mismatch`).
    """

    def __init__(
        self,
        message: str,
        code: str | None = None,
        security_profile: str | None = None,
        status: int | None = None,
    ) -> None:
        super().__init__(message)
        self.code = code
        self.security_profile = security_profile
        self.status = status


class RelayBundle(msgspec.Struct, frozen=True):
    environment_id: str
    url: str  # signed: whoever holds it may open the relay socket
    security_profile: str
    executor_registration_id: str

    def __repr__(self) -> str:  # in a log or traceback: the relay's origin, not its signature
        return (
            f"RelayBundle(environment_id={self.environment_id!r}, url={origin(self.url)!r}, "
            f"security_profile={self.security_profile!r}, "
            f"executor_registration_id={self.executor_registration_id!r})"
        )


def check_environment_id(environment_id: str) -> str:
    if not _ENVIRONMENT_ID.match(environment_id):
        raise RegistryError(
            f"invalid environment id `{environment_id}`: use 1-64 of A-Z a-z 0-9 _ -"
        )
    return environment_id


def read_token(token_file: str | None) -> str | None:
    """A harness bearer from ``token_file`` or ``CODEXEXEC_REGISTRY_TOKEN``."""
    import os

    from codexexec.remote.auth.base import AuthError
    from codexexec.remote.auth.bearer import TOKEN_ENV, token_from_file

    if token_file:
        try:
            return token_from_file(token_file)
        except AuthError as exc:
            raise RegistryError(str(exc)) from None
    return os.environ.get(TOKEN_ENV) or None


async def credential_headers(credential: AuthProvider | str | None) -> dict[str, str]:
    """Fresh headers for one request (a provider may refresh first)."""
    from codexexec.remote.auth.base import AuthError, CredentialUnavailable
    from codexexec.remote.auth.bearer import StaticBearer

    try:
        if isinstance(credential, str):
            return await StaticBearer(credential, "the registry token").headers()
        return {} if credential is None else await credential.headers()
    except CredentialUnavailable as exc:
        raise RegistryError(str(exc), code=CREDENTIAL_UNAVAILABLE) from None
    except AuthError as exc:
        raise RegistryError(str(exc)) from None


async def _post(
    base_url: str,
    environment_id: str,
    action: str,
    body: dict[str, Any],
    credential: AuthProvider | str | None,
) -> dict[str, Any]:
    from codexexec.remote.http import Unreachable, post_json, trace_context_headers

    url = (
        f"{base_url.rstrip('/')}/cloud/environment/{check_environment_id(environment_id)}/{action}"
    )
    auth_headers = await credential_headers(credential)
    try:
        reply = await post_json(
            url, body, {**auth_headers, **trace_context_headers()}, REQUEST_TIMEOUT_SECONDS
        )
    except Unreachable as exc:
        raise RegistryError(
            f"cannot reach the environment registry at {origin(base_url)}: {exc}"
        ) from None
    payload = _json(reply.text)
    if not 200 <= reply.status < 300:
        raise _failure(reply, payload, auth_headers)
    if not isinstance(payload, dict):
        raise RegistryError(f"invalid environment registry {action} response: not a JSON object")
    return payload


async def _post_retrying(
    base_url: str,
    environment_id: str,
    action: str,
    body: dict[str, Any],
    credential: AuthProvider | str | None,
) -> dict[str, Any]:
    """`_post`, retried while the registry answers a retryable code (each wait bounded)."""
    attempt = 0
    while True:
        try:
            return await _post(base_url, environment_id, action, body, credential)
        except RegistryError as exc:
            if (exc.status, exc.code) not in RETRYABLE_REGISTRATION:
                raise
            attempt += 1
            nominal = min(RETRY_FIRST_SECONDS * 2 ** (attempt - 1), RETRY_MAX_SECONDS)
            delay = nominal * random.uniform(1 - RETRY_JITTER, 1 + RETRY_JITTER)
            log.warning(
                "environment registry %s answered %s %s; retrying in %.1f s (attempt %d)",
                action,
                exc.status,
                exc.code,
                delay,
                attempt,
            )
            await asyncio.sleep(delay)


def _failure(reply: HttpReply, payload: Any, auth_headers: dict[str, str]) -> RegistryError:
    error = payload.get("error") if isinstance(payload, dict) else None
    code = _error_field(error, "code")
    code = code if code is not None and code.isprintable() and len(code) <= 128 else None
    authentication = reply.status in (401, 403)
    message = _error_message(reply, error, authentication)
    secrets = [value.partition(" ")[2] or value for value in auth_headers.values()]
    # The whole body is searched too: the message is cut at 4096 characters, which can leave
    # the head of a long credential (a ChatGPT JWT) that no longer matches it whole.
    if any(len(secret) >= 8 and (secret in message or secret in reply.text) for secret in secrets):
        message = BODY_OMITTED
    if authentication:
        text = (
            "environment registry authentication error: environment registry authentication "
            f"failed ({reply.status_line}): {message}"
        )
    else:
        where = f"{reply.status_line}, {code}" if code else reply.status_line
        text = f"environment registry request failed ({where}): {message}"
    return RegistryError(text, code, _error_field(error, "security_profile"), reply.status)


def _error_message(reply: HttpReply, error: Any, authentication: bool) -> str:
    message = _error_field(error, "message")
    if message is not None:
        return _one_line(message)
    if 300 <= reply.status < 400:
        target = origin(reply.location) if reply.location else "nowhere"
        return f"redirect to {target} not followed (credentials are never forwarded)"
    text = reply.text.strip()
    if not text:
        return "empty error body" if authentication else "empty or malformed error body"
    if "html" in reply.content_type.lower() or text.startswith("<"):
        return f"{BODY_OMITTED} (an HTML page, not the registry's JSON error)"
    return _one_line(text)


def _error_field(error: Any, name: str) -> str | None:
    value = error.get(name) if isinstance(error, dict) else None
    return value if isinstance(value, str) else None


def _one_line(text: str) -> str:
    flat = " ".join("".join(ch if ch.isprintable() else " " for ch in text).split())
    return flat[:MAX_ERROR_MESSAGE_CHARS]


def _json(text: str) -> Any:
    import json

    try:
        return json.loads(text)
    except ValueError:
        return None


def _bundle(payload: dict[str, Any], environment_id: str) -> RelayBundle:
    if payload.get("environment_id") != environment_id:
        raise RegistryError("environment registry returned a different environment id")
    url, registration = payload.get("url"), payload.get("executor_registration_id")
    if not isinstance(url, str) or not url or not isinstance(registration, str) or not registration:
        raise RegistryError("environment registry returned incomplete connection data")
    return RelayBundle(environment_id, url, str(payload.get("security_profile", "")), registration)


async def register_executor(
    base_url: str,
    environment_id: str,
    token: AuthProvider | str | None,
    party: NoiseParty | None = None,
) -> RelayBundle:
    """Register; with a Noise ``party`` its profile and public key, without one the legacy
    cleartext profile."""
    profile = LEGACY_PROFILE if party is None else party.profile
    body: dict[str, Any] = {"security_profile": profile}
    if party is not None:
        body["executor_public_key"] = party.public_key_json()
    payload = await _post_retrying(base_url, environment_id, "register", body, token)
    bundle = _bundle(payload, environment_id)
    if bundle.security_profile != profile:
        raise RegistryError(
            "environment registry returned unsupported security profile "
            f"`{bundle.security_profile}`"
        )
    return bundle


async def connect_harness(base_url: str, environment_id: str, token: Credential) -> RelayBundle:
    payload = await _post(base_url, environment_id, "connect", {}, token)
    return _bundle(payload, environment_id)


async def connect_harness_noise(
    base_url: str,
    environment_id: str,
    token: Credential,
    harness_public_key: dict[str, str],
    profile: str = NOISE_PROFILE,
) -> dict[str, Any]:
    """The Noise connect bundle: url, registration id, executor key, one-time authorization."""
    payload = await _post(
        base_url, environment_id, "connect", {"harness_public_key": harness_public_key}, token
    )
    _bundle(payload, environment_id)  # the common checks
    if payload.get("security_profile") != profile:
        raise RegistryError("environment registry returned an unsupported security profile")
    if not payload.get("harness_key_authorization") or not payload.get("executor_public_key"):
        raise RegistryError("environment registry returned incomplete Noise connection data")
    return payload
