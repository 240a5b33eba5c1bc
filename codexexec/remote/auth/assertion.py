"""The ``AgentAssertion`` authorization format, shared by the signer and the verifier.

    Authorization: AgentAssertion <base64url, no padding, of compact JSON with sorted keys>
    {"agent_runtime_id": R, "signature": S, "task_id": T, "timestamp": "YYYY-MM-DDTHH:MM:SSZ"}
    S = standard base64 of Ed25519(agent key, "R:T:timestamp")

Task registration (``POST {authapi}/v1/agent/R/task/register``) signs ``"R:timestamp"`` the
same way. Both match Codex 0.169.0 byte for byte (captured from the real binary).
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from dataclasses import dataclass
from datetime import UTC, datetime

from codexexec.remote.errors import RemoteError

SCHEME = "AgentAssertion"
MAX_ASSERTION_CHARS = 4096
_TIMESTAMP = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}Z")
_FIELDS = ("agent_runtime_id", "signature", "task_id", "timestamp")


class MalformedAssertion(RemoteError, ValueError):
    """Why an assertion is malformed (safe to show: it never quotes the assertion)."""


@dataclass(frozen=True, slots=True)
class Assertion:
    agent_runtime_id: str
    task_id: str
    timestamp: str
    signature: bytes

    @property
    def signed_message(self) -> bytes:
        return assertion_message(self.agent_runtime_id, self.task_id, self.timestamp)


def timestamp(now: float) -> str:
    return datetime.fromtimestamp(int(now), UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_timestamp(text: str) -> float:
    if not _TIMESTAMP.fullmatch(text):
        raise MalformedAssertion("timestamp is not RFC 3339 UTC seconds (YYYY-MM-DDTHH:MM:SSZ)")
    try:
        return datetime.strptime(text, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC).timestamp()
    except ValueError:
        raise MalformedAssertion("timestamp is not a valid date") from None


def assertion_message(runtime_id: str, task_id: str, stamp: str) -> bytes:
    return f"{runtime_id}:{task_id}:{stamp}".encode()


def task_registration_message(runtime_id: str, stamp: str) -> bytes:
    return f"{runtime_id}:{stamp}".encode()


def encode_assertion(runtime_id: str, task_id: str, stamp: str, signature: bytes) -> str:
    envelope = {
        "agent_runtime_id": runtime_id,
        "signature": base64.b64encode(signature).decode(),
        "task_id": task_id,
        "timestamp": stamp,
    }
    payload = json.dumps(envelope, separators=(",", ":"), sort_keys=True, ensure_ascii=False)
    return f"{SCHEME} " + base64.urlsafe_b64encode(payload.encode()).rstrip(b"=").decode()


def decode_assertion(authorization: str) -> Assertion:
    scheme, _, value = authorization.strip().partition(" ")
    value = value.strip()
    if scheme != SCHEME or not value:
        raise MalformedAssertion(f"expected 'Authorization: {SCHEME} <assertion>'")
    if len(value) > MAX_ASSERTION_CHARS:
        raise MalformedAssertion("the assertion is too long")
    try:
        envelope = json.loads(base64.urlsafe_b64decode(value + "=" * (-len(value) % 4)))
    except (binascii.Error, ValueError):
        raise MalformedAssertion("the assertion is not base64url-encoded JSON") from None
    if not isinstance(envelope, dict) or sorted(envelope) != list(_FIELDS):
        raise MalformedAssertion(f"the assertion must hold exactly {', '.join(_FIELDS)}")
    if not all(isinstance(envelope[name], str) and envelope[name] for name in _FIELDS):
        raise MalformedAssertion("every assertion field must be a non-empty string")
    try:
        signature = base64.b64decode(envelope["signature"], validate=True)
    except binascii.Error:
        raise MalformedAssertion("the assertion signature is not base64") from None
    parse_timestamp(envelope["timestamp"])
    return Assertion(
        envelope["agent_runtime_id"], envelope["task_id"], envelope["timestamp"], signature
    )
