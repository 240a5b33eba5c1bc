"""Client of an environment registry (Codex's contract; `codexexec rendezvous` serves it).

    POST {base}/cloud/environment/{id}/register   (executor)
    POST {base}/cloud/environment/{id}/connect    (harness)

Redirects are never followed (a registry must not send credentials elsewhere), each
request is bounded by 10 s, and errors quote the registry's `{"error": {code, message}}`
but never the request's credentials.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from codexexec.protocol.registry import LEGACY_PROFILE, NOISE_PROFILE

REQUEST_TIMEOUT_SECONDS = 10.0
TOKEN_ENV = "CODEXEXEC_REGISTRY_TOKEN"
_ENVIRONMENT_ID = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


class RegistryError(Exception):
    """The registry refused or could not be reached; the message says which and why.

    ``code`` is the registry's machine-readable error code when it sent one.
    """

    def __init__(self, message: str, code: str | None = None) -> None:
        super().__init__(message)
        self.code = code


@dataclass(frozen=True, slots=True)
class RelayBundle:
    environment_id: str
    url: str
    security_profile: str
    executor_registration_id: str


def check_environment_id(environment_id: str) -> str:
    if not _ENVIRONMENT_ID.match(environment_id):
        raise RegistryError(
            f"invalid environment id `{environment_id}`: use 1-64 of A-Z a-z 0-9 _ -"
        )
    return environment_id


def read_token(token_file: str | None) -> str | None:
    """A bearer from --token-file (first non-comment line) or CODEXEXEC_REGISTRY_TOKEN."""
    import os

    if token_file:
        try:
            with open(token_file, encoding="utf-8") as handle:
                for line in handle:
                    line = line.strip()
                    if line and not line.startswith("#"):
                        return line.split()[0]
        except OSError as exc:
            raise RegistryError(f"cannot read token file {token_file}: {exc.strerror}") from None
        raise RegistryError(f"token file {token_file} holds no token")
    return os.environ.get(TOKEN_ENV) or None


async def _post(
    base_url: str, environment_id: str, action: str, body: dict[str, Any], token: str | None
) -> dict[str, Any]:
    import aiohttp

    url = (
        f"{base_url.rstrip('/')}/cloud/environment/{check_environment_id(environment_id)}/{action}"
    )
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    timeout = aiohttp.ClientTimeout(total=REQUEST_TIMEOUT_SECONDS)
    try:
        async with (
            aiohttp.ClientSession(timeout=timeout) as http,
            http.post(url, json=body, headers=headers, allow_redirects=False) as response,
        ):
            text = await response.text()
            status = response.status
    except aiohttp.ClientError as exc:
        raise RegistryError(
            f"cannot reach the environment registry at {base_url}: {type(exc).__name__}"
        ) from None
    except TimeoutError:
        raise RegistryError(
            f"the environment registry at {base_url} did not answer in time"
        ) from None
    payload = _json(text)
    if status in (401, 403):
        raise RegistryError(
            f"environment registry authentication failed ({status}): "
            f"{_error_message(payload, text)}"
        )
    if not 200 <= status < 300:
        raise RegistryError(
            f"environment registry request failed ({status}): {_error_message(payload, text)}",
            _error_code(payload),
        )
    if not isinstance(payload, dict):
        raise RegistryError("environment registry answered with something that is not JSON")
    return payload


def _json(text: str) -> Any:
    import json

    try:
        return json.loads(text)
    except ValueError:
        return None


def _error_message(payload: Any, text: str) -> str:
    if isinstance(payload, dict) and isinstance(payload.get("error"), dict):
        error = payload["error"]
        return str(error.get("message") or error.get("code") or "error")
    return text[:200].strip() or "no details"


def _error_code(payload: Any) -> str | None:
    if isinstance(payload, dict) and isinstance(payload.get("error"), dict):
        code = payload["error"].get("code")
        return code if isinstance(code, str) else None
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
    token: str | None,
    executor_public_key: dict[str, str] | None = None,
) -> RelayBundle:
    """Register; with ``executor_public_key`` the Noise profile, without it the legacy one."""
    profile = LEGACY_PROFILE if executor_public_key is None else NOISE_PROFILE
    body: dict[str, Any] = {"security_profile": profile}
    if executor_public_key is not None:
        body["executor_public_key"] = executor_public_key
    payload = await _post(base_url, environment_id, "register", body, token)
    bundle = _bundle(payload, environment_id)
    if bundle.security_profile != profile:
        raise RegistryError(
            "environment registry returned unsupported security profile "
            f"`{bundle.security_profile}`"
        )
    return bundle


async def connect_harness(base_url: str, environment_id: str, token: str | None) -> RelayBundle:
    payload = await _post(base_url, environment_id, "connect", {}, token)
    return _bundle(payload, environment_id)


async def connect_harness_noise(
    base_url: str, environment_id: str, token: str | None, harness_public_key: dict[str, str]
) -> dict[str, Any]:
    """The Noise connect bundle: url, registration id, executor key, one-time authorization."""
    payload = await _post(
        base_url, environment_id, "connect", {"harness_public_key": harness_public_key}, token
    )
    _bundle(payload, environment_id)  # the common checks
    if payload.get("security_profile") != NOISE_PROFILE:
        raise RegistryError("environment registry returned an unsupported security profile")
    if not payload.get("harness_key_authorization") or not payload.get("executor_public_key"):
        raise RegistryError("environment registry returned incomplete Noise connection data")
    return payload
