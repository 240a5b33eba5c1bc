"""The rendezvous's registry state: the store interface, and the embedded SQLite store.

``RegistryStore`` is what the service uses; ``Store`` (SQLite, the default) and
``pg_store.PostgresStore`` (for a cluster of nodes) implement it, and one test suite runs
against both. SQLite is tiny and synchronous: every statement touches a handful of rows by
primary key, so its methods run directly on the event loop. It keeps

* ``environments``: each environment id and its current executor registration;
* ``registrations``: every executor registration (security profile and the executor's public
  key, stored as opaque canonical JSON, never interpreted);
* ``authorizations``: one-time harness key authorizations, kept only as SHA-256 digests with the
  harness public key they were issued for, an expiry and a used mark;
* ``meta``: the relay URL signing key (so executor URLs survive a restart).

The database file is created 0600 (it holds the signing key).
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import sqlite3
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from codexexec.rendezvous.errors import RendezvousError
from codexexec.rendezvous.signing import KEY_BYTES

MEMORY = ":memory:"
# Registrations kept per environment: the current one and the one it replaced.
KEPT_REGISTRATIONS_PER_ENVIRONMENT = 2

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (
    name TEXT PRIMARY KEY,
    value BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS environments (
    environment_id TEXT PRIMARY KEY,
    created_at REAL NOT NULL,
    current_registration_id TEXT
);
CREATE TABLE IF NOT EXISTS registrations (
    registration_id TEXT PRIMARY KEY,
    environment_id TEXT NOT NULL,
    security_profile TEXT NOT NULL,
    executor_public_key TEXT,
    created_at REAL NOT NULL,
    registered_by TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS authorizations (
    digest TEXT PRIMARY KEY,
    environment_id TEXT NOT NULL,
    registration_id TEXT NOT NULL,
    harness_public_key TEXT NOT NULL,
    expires_at REAL NOT NULL,
    used_at REAL
);
CREATE INDEX IF NOT EXISTS authorizations_expiry ON authorizations(expires_at);
CREATE INDEX IF NOT EXISTS authorizations_outstanding ON authorizations(environment_id)
    WHERE used_at IS NULL;
"""


# Read through the partial index above, whatever number of spent ones wait to expire.
OUTSTANDING_AUTHORIZATIONS = (
    "SELECT COUNT(*) FROM authorizations WHERE environment_id = ? AND used_at IS NULL"
)


def canonical_json(value: Any) -> str:
    """One spelling per JSON value: sorted keys, no spaces, UTF-8 kept."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def auth_digest(authorization: str) -> str:
    return hashlib.sha256(authorization.encode("utf-8", "surrogateescape")).hexdigest()


class StoreUnavailable(RendezvousError, RuntimeError):
    """The store cannot be reached or used right now; the message says why (never a
    password). The service answers 503, and a caller may try again."""


class AuthorizationLimit(RendezvousError):
    """The environment already holds as many unexpired authorizations as it may."""


@dataclass(frozen=True)
class Registration:
    registration_id: str
    environment_id: str
    security_profile: str
    executor_public_key: Any  # parsed JSON, or None for the legacy profile
    created_at: float


class ValidationOutcome:
    """Why /validate answered as it did (for logs; never echoes the authorization)."""

    VALID = "valid"
    UNKNOWN = "unknown_authorization"
    USED = "already_used"
    EXPIRED = "expired"
    MISMATCH = "mismatch"
    STALE = "stale_registration"


class RegistryStore(Protocol):
    """Registrations, single-use harness authorizations and the URL-signing key, shared by
    every node of a rendezvous."""

    # The relay URL signing key, loaded (or made) when the store opens.
    signing_key: bytes

    async def register(
        self,
        environment_id: str,
        security_profile: str,
        executor_public_key: Any,
        registered_by: str,
    ) -> Registration: ...

    async def current_registration(self, environment_id: str) -> Registration | None: ...

    async def environment_count(self) -> int: ...

    async def issue_authorization(
        self,
        environment_id: str,
        registration_id: str,
        harness_public_key: Any,
        ttl_seconds: float,
        *,
        limit: int | None = None,
    ) -> str: ...

    async def consume_authorization(
        self,
        environment_id: str,
        registration_id: str,
        harness_public_key: Any,
        authorization: str,
    ) -> str: ...

    async def aclose(self) -> None: ...


def judge(
    row: tuple[str, str, str, float],
    current_registration_id: str | None,
    expected: tuple[str, str, Any],
    now: float,
) -> str:
    """The /validate outcome for an authorization just spent (every store decides alike):
    ``row`` is what was stored for it (environment, registration, harness key JSON, expiry),
    ``expected`` what the executor presented (environment, registration, harness key)."""
    environment_id, registration_id, harness_public_key = expected
    if row[3] <= now:
        return ValidationOutcome.EXPIRED
    if (
        row[0] != environment_id
        or row[1] != registration_id
        or row[2] != canonical_json(harness_public_key)
    ):
        return ValidationOutcome.MISMATCH
    if current_registration_id != registration_id:
        return ValidationOutcome.STALE
    return ValidationOutcome.VALID


class Store:
    def __init__(self, path: Path | str, *, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        target = str(path)
        if target != MEMORY:
            file = Path(target)
            file.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            if not file.exists():
                os.close(os.open(file, os.O_WRONLY | os.O_CREAT, 0o600))
        self._db = sqlite3.connect(target, isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA busy_timeout = 2000")
        if target != MEMORY:
            self._db.execute("PRAGMA journal_mode = WAL")
            self._db.execute("PRAGMA synchronous = NORMAL")
        self._db.executescript(_SCHEMA)
        self.signing_key = self._signing_key()

    def close(self) -> None:
        self._db.close()

    async def aclose(self) -> None:
        self.close()

    # -- meta ---------------------------------------------------------------------------------

    def _signing_key(self) -> bytes:
        row = self._db.execute("SELECT value FROM meta WHERE name = 'relay_signing_key'").fetchone()
        if row is not None and isinstance(row[0], bytes) and len(row[0]) >= KEY_BYTES:
            return row[0]
        key = secrets.token_bytes(KEY_BYTES)
        self._db.execute(
            "INSERT OR REPLACE INTO meta(name, value) VALUES ('relay_signing_key', ?)", (key,)
        )
        return key

    # -- registrations ------------------------------------------------------------------------

    async def register(
        self,
        environment_id: str,
        security_profile: str,
        executor_public_key: Any,
        registered_by: str,
    ) -> Registration:
        """Record a new registration and make it the environment's current one."""
        now = self._clock()
        registration_id = f"reg-{uuid.uuid4()}"
        key_text = None if executor_public_key is None else canonical_json(executor_public_key)
        with self._db:
            self._db.execute("BEGIN IMMEDIATE")
            self._db.execute(
                "INSERT INTO registrations(registration_id, environment_id, security_profile,"
                " executor_public_key, created_at, registered_by) VALUES (?, ?, ?, ?, ?, ?)",
                (registration_id, environment_id, security_profile, key_text, now, registered_by),
            )
            self._db.execute(
                "INSERT INTO environments(environment_id, created_at, current_registration_id)"
                " VALUES (?, ?, ?) ON CONFLICT(environment_id)"
                " DO UPDATE SET current_registration_id = excluded.current_registration_id",
                (environment_id, now, registration_id),
            )
            # Only the newest registrations can still be in use (the previous one while its
            # streams wind down): an executor re-registering in a loop must not grow the file.
            self._db.execute(
                "DELETE FROM registrations WHERE environment_id = ? AND registration_id NOT IN"
                " (SELECT registration_id FROM registrations WHERE environment_id = ?"
                " ORDER BY created_at DESC, rowid DESC LIMIT ?)",
                (environment_id, environment_id, KEPT_REGISTRATIONS_PER_ENVIRONMENT),
            )
            self._db.execute(
                "DELETE FROM authorizations WHERE environment_id = ? AND registration_id NOT IN"
                " (SELECT registration_id FROM registrations WHERE environment_id = ?)",
                (environment_id, environment_id),
            )
        return Registration(
            registration_id, environment_id, security_profile, executor_public_key, now
        )

    async def current_registration(self, environment_id: str) -> Registration | None:
        row = self._db.execute(
            "SELECT r.registration_id, r.environment_id, r.security_profile,"
            " r.executor_public_key, r.created_at FROM environments e JOIN registrations r"
            " ON r.registration_id = e.current_registration_id WHERE e.environment_id = ?",
            (environment_id,),
        ).fetchone()
        if row is None:
            return None
        key = None if row[3] is None else json.loads(row[3])
        return Registration(row[0], row[1], row[2], key, row[4])

    async def environment_count(self) -> int:
        row = self._db.execute("SELECT COUNT(*) FROM environments").fetchone()
        return int(row[0])

    # -- one-time harness authorizations ------------------------------------------------------

    async def issue_authorization(
        self,
        environment_id: str,
        registration_id: str,
        harness_public_key: Any,
        ttl_seconds: float,
        *,
        limit: int | None = None,
    ) -> str:
        """A fresh single-use authorization for this harness key; only its digest is kept.

        With ``limit``, AuthorizationLimit when the environment already has that many
        outstanding (unexpired, unspent) ones. A spent one stays a row until it expires, so a
        replay is logged as such, but no longer counts: a harness that opens a connection per
        command would otherwise be refused after ``limit`` of them in one expiry period.
        """
        now = self._clock()
        authorization = "hka-" + secrets.token_urlsafe(32)
        with self._db:
            self._db.execute("BEGIN IMMEDIATE")
            self._db.execute("DELETE FROM authorizations WHERE expires_at < ?", (now,))
            if limit is not None:
                (held,) = self._db.execute(OUTSTANDING_AUTHORIZATIONS, (environment_id,)).fetchone()
                if held >= limit:
                    raise AuthorizationLimit
            self._db.execute(
                "INSERT INTO authorizations(digest, environment_id, registration_id,"
                " harness_public_key, expires_at, used_at) VALUES (?, ?, ?, ?, ?, NULL)",
                (
                    auth_digest(authorization),
                    environment_id,
                    registration_id,
                    canonical_json(harness_public_key),
                    now + ttl_seconds,
                ),
            )
        return authorization

    async def consume_authorization(
        self,
        environment_id: str,
        registration_id: str,
        harness_public_key: Any,
        authorization: str,
    ) -> str:
        """Check and spend an authorization; returns a :class:`ValidationOutcome` value.

        Any presentation of a known authorization spends it, whether or not the rest matches:
        it is single-use, and a mismatched presentation is as suspicious as a replay.
        """
        now = self._clock()
        digest = auth_digest(authorization)
        with self._db:
            self._db.execute("BEGIN IMMEDIATE")
            row = self._db.execute(
                "SELECT environment_id, registration_id, harness_public_key, expires_at, used_at"
                " FROM authorizations WHERE digest = ?",
                (digest,),
            ).fetchone()
            if row is None:
                return ValidationOutcome.UNKNOWN
            if row[4] is not None:
                return ValidationOutcome.USED
            self._db.execute(
                "UPDATE authorizations SET used_at = ? WHERE digest = ?", (now, digest)
            )
            current = self._db.execute(
                "SELECT current_registration_id FROM environments WHERE environment_id = ?",
                (environment_id,),
            ).fetchone()
        return judge(
            (row[0], row[1], row[2], row[3]),
            None if current is None else current[0],
            (environment_id, registration_id, harness_public_key),
            now,
        )


async def open_store(db: str) -> RegistryStore:
    """The store ``db`` names: a ``postgresql://`` URL, or an SQLite file (or ``:memory:``)."""
    if db.startswith(("postgresql://", "postgres://")):
        from codexexec.rendezvous.pg_store import PostgresStore

        return await PostgresStore.open(db)
    return Store(db)
