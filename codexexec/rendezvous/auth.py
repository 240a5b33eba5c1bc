"""Bearer-token authentication for the rendezvous registry endpoints.

Token file format (one grant per line; blank lines and ``#`` comments ignored)::

    TOKEN                               # both roles, every environment
    TOKEN executor                      # executor role only, every environment
    TOKEN harness env-1,env-2           # harness role, only these environments
    TOKEN both env-1                    # both roles, one environment

A token is printable ASCII without spaces. ``*`` as the environment list means "every
environment". A field starting with ``#`` begins a trailing comment.

Tokens are held only as SHA-256 digests; every check compares the digest of the presented
bearer against every grant with :func:`hmac.compare_digest`, so timing does not reveal which
(or whether a) prefix matched. Tokens never appear in errors or logs: a grant is named by its
file line (``token-file:3``).
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
import stat
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from codexexec.remote.auth.api_keys import API_KEY_PREFIX, API_KEY_REFUSED, looks_like_api_key
from codexexec.rendezvous.errors import RendezvousError
from codexexec.state_dir import ensure_private_dir

Role = Literal["executor", "harness"]
ROLES: tuple[Role, ...] = ("executor", "harness")
_ROLE_WORDS: dict[str, frozenset[Role]] = {
    "executor": frozenset({"executor"}),
    "harness": frozenset({"harness"}),
    "both": frozenset(ROLES),
}

DEV_TOKEN_PREFIX = "cxr_"
DEV_TOKEN_FILENAME = "rendezvous-tokens"


class TokenFileError(RendezvousError, ValueError):
    """The token file cannot be used; the message names a line, never a token."""


@dataclass(frozen=True)
class RequestRefused(RendezvousError):
    """A refused request: HTTP status plus a Codex-style ``{"error":{code,message}}`` body."""

    status: int
    code: str
    message: str

    def __str__(self) -> str:
        return f"{self.status} {self.code}: {self.message}"


@dataclass(frozen=True)
class TokenGrant:
    digest: bytes
    roles: frozenset[Role]
    environments: frozenset[str] | None  # None: every environment
    label: str  # "token-file:LINE", safe to log

    def allows(self, role: Role, environment_id: str) -> bool:
        if role not in self.roles:
            return False
        return self.environments is None or environment_id in self.environments


@dataclass(frozen=True)
class Principal:
    """Who made an authenticated request (the grant label is safe to log)."""

    label: str
    role: Role


def _digest(token: str) -> bytes:
    return hashlib.sha256(token.encode("utf-8", "surrogateescape")).digest()


def _valid_token_text(token: str) -> bool:
    return bool(token) and all(33 <= ord(ch) <= 126 for ch in token)


class TokenTable:
    """The grants from one token file."""

    def __init__(self, grants: Sequence[TokenGrant]) -> None:
        if not grants:
            raise TokenFileError("the token file holds no tokens")
        self._grants = tuple(grants)

    @property
    def grants(self) -> tuple[TokenGrant, ...]:
        return self._grants

    @classmethod
    def parse(cls, text: str, *, source: str = "token-file") -> TokenTable:
        grants: list[TokenGrant] = []
        seen: set[bytes] = set()
        for where, fields in config_lines(text, source):
            token = fields[0]
            if not _valid_token_text(token):
                raise TokenFileError(f"{where}: a token must be printable ASCII without spaces")
            if looks_like_api_key(token):
                raise TokenFileError(
                    f"{where}: this looks like an OpenAI API key ('{API_KEY_PREFIX}…'); the "
                    "rendezvous uses its own tokens, never an API key"
                )
            roles, environments = parse_scope(
                fields[1:], where, "TOKEN [executor|harness|both [ENV-ID,...]]"
            )
            digest = _digest(token)
            if digest in seen:
                raise TokenFileError(f"{where}: the same token appears on an earlier line")
            seen.add(digest)
            grants.append(TokenGrant(digest, roles, environments, where))
        return cls(grants)

    @classmethod
    def load(cls, path: Path) -> TokenTable:
        return cls.parse(read_grant_file(path, "token file"), source=path.name)

    def authenticate(self, authorization: str | None, role: Role, environment_id: str) -> Principal:
        """Check an ``Authorization`` header value for ``role`` on ``environment_id``.

        Raises :class:`RequestRefused` (401 for a missing/unknown bearer, 403 for a known bearer
        without that role or environment).
        """
        token = bearer_token(authorization)
        if looks_like_api_key(token):
            raise RequestRefused(401, "api_key_not_accepted", API_KEY_REFUSED)
        presented = _digest(token)
        match: TokenGrant | None = None
        for grant in self._grants:  # no early exit: every grant is compared
            if hmac.compare_digest(presented, grant.digest) and match is None:
                match = grant
        if match is None:
            raise RequestRefused(401, "unauthorized", "invalid bearer token")
        if not match.allows(role, environment_id):
            raise RequestRefused(
                403,
                "forbidden",
                f"this token does not grant the {role} role for environment {environment_id!r}",
            )
        return Principal(match.label, role)


def read_grant_file(path: Path, what: str) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except OSError as error:
        raise TokenFileError(f"cannot read {what} {path}: {error.strerror}") from None
    except UnicodeDecodeError:
        raise TokenFileError(f"{what} {path} is not UTF-8 text") from None


def config_lines(text: str, source: str) -> Iterator[tuple[str, list[str]]]:
    """(``source:LINE``, fields) of each line that holds more than blanks and a ``#`` comment."""
    for number, raw in enumerate(text.splitlines(), start=1):
        fields: list[str] = []
        for field in raw.split():
            if field.startswith("#"):
                break
            fields.append(field)
        if fields:
            yield f"{source}:{number}", fields


def parse_scope(
    fields: list[str], where: str, usage: str
) -> tuple[frozenset[Role], frozenset[str] | None]:
    """``[executor|harness|both [ENV-ID,...|*]]``: the roles and environments of one grant."""
    if len(fields) > 2:
        raise TokenFileError(f"{where}: expected '{usage}'")
    roles = frozenset(ROLES)
    if fields:
        word = fields[0].lower()
        if word not in _ROLE_WORDS:
            raise TokenFileError(
                f"{where}: unknown role {fields[0]!r} (use executor, harness or both)"
            )
        roles = _ROLE_WORDS[word]
    environments: frozenset[str] | None = None
    if len(fields) == 2 and fields[1] != "*":
        names = [name for name in fields[1].split(",") if name]
        if not names:
            raise TokenFileError(f"{where}: empty environment list")
        environments = frozenset(names)
    return roles, environments


def bearer_token(authorization: str | None) -> str:
    if authorization is None or not authorization.strip():
        raise RequestRefused(401, "unauthorized", "missing Authorization: Bearer token")
    scheme, _, value = authorization.strip().partition(" ")
    value = value.strip()
    if scheme.lower() != "bearer" or not value:
        raise RequestRefused(401, "unauthorized", "the Authorization header must be 'Bearer TOKEN'")
    return value


def create_dev_token_file(directory: Path) -> tuple[Path, bool]:
    """Return the development token file under ``directory``, creating it (0600) if absent.

    The second value is True when the file was created by this call.
    """
    ensure_private_dir(directory)
    path = directory / DEV_TOKEN_FILENAME
    return path, create_token_file(path)


def create_token_file(path: Path) -> bool:
    """Write a fresh token granting both roles for every environment to ``path`` (0600),
    unless the file exists; True when it was created."""
    token = DEV_TOKEN_PREFIX + secrets.token_urlsafe(32)
    text = (
        "# codexexec rendezvous development token: grants the executor and harness roles\n"
        "# for every environment. Format: TOKEN [executor|harness|both [ENV-ID,...]]\n"
        f"{token}\n"
    )
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return False
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write(text)
    return True


def loosely_permitted(path: Path) -> bool:
    """True when group or others may read the file (worth a warning)."""
    try:
        mode = path.stat().st_mode
    except OSError:
        return False
    return bool(mode & (stat.S_IRGRP | stat.S_IROTH))
