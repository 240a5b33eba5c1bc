"""The executor's `/validate` call: may this harness key open a Noise stream?

    POST {base}/cloud/environment/{id}/validate
    x-codex-noise-stream-id: <stream id of the handshake>
    {"executor_registration_id", "harness_public_key", "harness_key_authorization"}

Only a 2xx answer whose `valid` is the JSON boolean `true` admits the stream
(docs/relay-protocol.md §1.4).
The response body is never quoted: a registry may echo the authorization back.
"""

from __future__ import annotations

import enum
import json
from typing import TYPE_CHECKING, Any

from codexexec.protocol.registry import STREAM_ID_HEADER
from codexexec.remote.registry import RegistryError, check_environment_id, credential_headers

if TYPE_CHECKING:
    from codexexec.remote.auth.base import AuthProvider
    from codexexec.remote.http import HttpClient


class Validation(enum.Enum):
    VALID = "valid"
    # The registry refused the executor's own credentials (401): the handshake completes with
    # the "authentication rejected" payload so the harness knows to refresh, then a Reset.
    EXECUTOR_UNAUTHORIZED = "executor_unauthorized"
    # Anything else: Reset. The value is the diagnostic reason Codex logs.
    REJECTED = "validation_protocol"
    REGISTRY_HTTP = "registry_http"


async def validate_harness_key(
    base_url: str,
    environment_id: str,
    token: AuthProvider | str | None,
    *,
    registration_id: str,
    harness_public_key: dict[str, str],
    authorization: str,
    stream_id: str,
    session: HttpClient | None = None,
) -> Validation:
    """One /validate round trip. Network failures count as REGISTRY_HTTP; the caller bounds
    the wait (10 s, docs/relay-protocol.md §1.4) and treats the timeout as a failure too."""
    from codexexec.relay.limits import VALIDATION_TIMEOUT_SECONDS
    from codexexec.remote.http import Unreachable, post_json

    url = (
        f"{base_url.rstrip('/')}/cloud/environment/{check_environment_id(environment_id)}/validate"
    )
    try:
        headers = {STREAM_ID_HEADER: stream_id, **await credential_headers(token)}
    except RegistryError:  # the executor's credential cannot be renewed: no one can say yes
        return Validation.REGISTRY_HTTP
    body = {
        "executor_registration_id": registration_id,
        "harness_public_key": harness_public_key,
        "harness_key_authorization": authorization,
    }
    try:
        reply = await post_json(url, body, headers, VALIDATION_TIMEOUT_SECONDS, session)
    except Unreachable:
        return Validation.REGISTRY_HTTP
    status, text = reply.status, reply.text
    if status == 401:
        return Validation.EXECUTOR_UNAUTHORIZED
    if not 200 <= status < 300:
        return Validation.REGISTRY_HTTP
    return Validation.VALID if _says_valid(text) else Validation.REJECTED


def _says_valid(text: str) -> bool:
    try:
        payload: Any = json.loads(text)
    except ValueError:
        return False
    return isinstance(payload, dict) and payload.get("valid") is True
