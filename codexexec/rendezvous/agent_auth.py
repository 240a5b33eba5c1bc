"""Agent Identity at the rendezvous: agent keys, task registration, AgentAssertion checks.

Agent keys file (``--agent-keys``; one agent per line, ``#`` comments)::

    AGENT_RUNTIME_ID PUBLIC_KEY [executor|harness|both [ENV-ID,...]]
    AGENT_RUNTIME_ID ssh-ed25519 BASE64 [executor|harness|both [ENV-ID,...]]

``PUBLIC_KEY`` is the agent's Ed25519 public key as standard base64 of its 32 bytes, or in
the ``ssh-ed25519`` form Codex prints for an agent key. The scope words mean what they mean
in the token file.

``POST /v1/agent/{runtime}/task/register`` ``{"timestamp", "signature"}`` (Ed25519 over
``"runtime:timestamp"``) answers ``{"task_id"}``: an HMAC-bound id, so the rendezvous keeps
no task table and ids survive a restart (the key derives from the store's signing key).
A request carrying ``Authorization: AgentAssertion …`` is admitted when its agent is listed,
its task id was issued to that agent, its timestamp is within 5 minutes of this clock and
its signature verifies. An assertion is not single-use (Codex signs a new one per request,
but two in the same second are byte-identical), so the timestamp window bounds a replay.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import secrets
import time
from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from codexexec.remote.auth.assertion import (
    SCHEME,
    MalformedAssertion,
    decode_assertion,
    parse_timestamp,
    task_registration_message,
)
from codexexec.rendezvous.auth import (
    Principal,
    RequestRefused,
    Role,
    TokenFileError,
    config_lines,
    parse_scope,
    read_grant_file,
)

MAX_ASSERTION_SKEW_SECONDS = 300.0
_USAGE = "AGENT_RUNTIME_ID PUBLIC_KEY [executor|harness|both [ENV-ID,...]]"
_SSH_ED25519 = b"ssh-ed25519"


@dataclass(frozen=True)
class AgentGrant:
    runtime_id: str
    key: Ed25519PublicKey
    roles: frozenset[Role]
    environments: frozenset[str] | None
    label: str  # "agent-keys:LINE", safe to log


def is_agent_assertion(authorization: str | None) -> bool:
    return authorization is not None and authorization.strip().startswith(f"{SCHEME} ")


class AgentKeys:
    def __init__(self, grants: list[AgentGrant], task_key: bytes) -> None:
        self._grants = {grant.runtime_id: grant for grant in grants}
        self._task_key = hmac.new(task_key, b"codexexec agent task ids", hashlib.sha256).digest()

    @classmethod
    def parse(cls, text: str, task_key: bytes, *, source: str = "agent-keys") -> AgentKeys:
        grants: list[AgentGrant] = []
        for where, fields in config_lines(text, source):
            if len(fields) < 2:
                raise TokenFileError(f"{where}: expected '{_USAGE}'")
            runtime_id = fields[0]
            if fields[1] == _SSH_ED25519.decode():
                if len(fields) < 3:
                    raise TokenFileError(f"{where}: ssh-ed25519 needs its base64 key")
                key, rest = _ssh_key(fields[2], where), fields[3:]
            else:
                key, rest = _raw_key(fields[1], where), fields[2:]
            roles, environments = parse_scope(rest, where, _USAGE)
            if any(grant.runtime_id == runtime_id for grant in grants):
                raise TokenFileError(f"{where}: agent {runtime_id!r} is listed twice")
            grants.append(AgentGrant(runtime_id, key, roles, environments, where))
        if not grants:
            raise TokenFileError(f"{source} lists no agents")
        return cls(grants, task_key)

    @classmethod
    def load(cls, path: Path, task_key: bytes) -> AgentKeys:
        return cls.parse(read_grant_file(path, "agent keys file"), task_key, source=path.name)

    # -- tasks ------------------------------------------------------------------------------

    def _task_mac(self, runtime_id: str, nonce: str) -> str:
        digest = hmac.new(self._task_key, f"{runtime_id}\0{nonce}".encode(), hashlib.sha256)
        return base64.urlsafe_b64encode(digest.digest()[:18]).decode()

    def register_task(self, runtime_id: str, stamp: object, signature: object) -> str:
        """A new task id for a signed ``{timestamp, signature}`` registration."""
        grant = self._grant(runtime_id)
        if not isinstance(stamp, str) or not isinstance(signature, str):
            raise RequestRefused(400, "invalid_request", "expected timestamp and signature strings")
        self._check_time(stamp, time.time())
        _verify(grant, task_registration_message(runtime_id, stamp), signature)
        nonce = secrets.token_urlsafe(12)
        return f"task_{nonce}.{self._task_mac(runtime_id, nonce)}"

    def _task_issued(self, runtime_id: str, task_id: str) -> bool:
        if not task_id.isascii():  # ids issued here are ASCII; compare_digest refuses others
            return False
        nonce, dot, mac = task_id.removeprefix("task_").partition(".")
        return bool(dot) and hmac.compare_digest(mac, self._task_mac(runtime_id, nonce))

    # -- assertions -------------------------------------------------------------------------

    def authenticate(
        self, authorization: str, role: Role, environment_id: str, now: float | None = None
    ) -> Principal:
        try:
            assertion = decode_assertion(authorization)
        except MalformedAssertion as exc:
            raise RequestRefused(401, "invalid_agent_assertion", str(exc)) from None
        grant = self._grant(assertion.agent_runtime_id)
        self._check_time(assertion.timestamp, time.time() if now is None else now)
        if not self._task_issued(grant.runtime_id, assertion.task_id):
            raise RequestRefused(
                401, "unknown_agent_task", "the assertion's task was not registered here"
            )
        try:
            grant.key.verify(assertion.signature, assertion.signed_message)
        except InvalidSignature:
            raise RequestRefused(
                401, "invalid_agent_assertion", "the assertion signature does not verify"
            ) from None
        if role not in grant.roles or (
            grant.environments is not None and environment_id not in grant.environments
        ):
            raise RequestRefused(
                403,
                "forbidden",
                f"this agent is not granted the {role} role for environment {environment_id!r}",
            )
        return Principal(grant.label, role)

    def _grant(self, runtime_id: str) -> AgentGrant:
        grant = self._grants.get(runtime_id)
        if grant is None:
            raise RequestRefused(401, "unknown_agent", "this agent runtime is not known here")
        return grant

    @staticmethod
    def _check_time(stamp: str, now: float) -> None:
        try:
            skew = abs(now - parse_timestamp(stamp))
        except MalformedAssertion as exc:
            raise RequestRefused(401, "invalid_agent_assertion", str(exc)) from None
        if skew > MAX_ASSERTION_SKEW_SECONDS:
            raise RequestRefused(
                401,
                "agent_assertion_stale",
                f"the timestamp is {skew:.0f} s away from the rendezvous clock (at most "
                f"{MAX_ASSERTION_SKEW_SECONDS:.0f} s); check both clocks",
            )


def _verify(grant: AgentGrant, message: bytes, signature: str) -> None:
    try:
        grant.key.verify(base64.b64decode(signature, validate=True), message)
    except (binascii.Error, InvalidSignature):
        raise RequestRefused(
            401, "invalid_agent_signature", "the signature does not verify"
        ) from None


def _raw_key(text: str, where: str) -> Ed25519PublicKey:
    try:
        raw = base64.b64decode(text, validate=True)
        return Ed25519PublicKey.from_public_bytes(raw)
    except (binascii.Error, ValueError):
        raise TokenFileError(
            f"{where}: the public key must be base64 of 32 Ed25519 bytes or 'ssh-ed25519 BASE64'"
        ) from None


def _ssh_key(text: str, where: str) -> Ed25519PublicKey:
    """The ``ssh-ed25519`` wire blob: string "ssh-ed25519", then string of 32 key bytes."""
    try:
        blob = base64.b64decode(text, validate=True)
    except binascii.Error:
        blob = b""
    name_length = int.from_bytes(blob[:4], "big")
    name, rest = blob[4 : 4 + name_length], blob[4 + name_length :]
    if name != _SSH_ED25519 or int.from_bytes(rest[:4], "big") != 32 or len(rest) != 36:
        raise TokenFileError(f"{where}: not an ssh-ed25519 public key")
    return Ed25519PublicKey.from_public_bytes(rest[4:])
