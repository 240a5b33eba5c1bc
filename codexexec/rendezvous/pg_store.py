"""The registry in PostgreSQL, so several rendezvous nodes share one truth.

`codexexec rendezvous --db postgresql://USER@HOST:PORT/DB`. The same tables as the SQLite
store; the schema is created and migrated by the rendezvous itself (``schema_version``).
What two nodes may race on is decided by the database:

* an authorization is spent by one ``UPDATE … WHERE used_at IS NULL RETURNING``, so of two
  nodes validating it at once exactly one sees it unspent;
* issuing under the per-environment limit, and registering, hold a transaction-scoped
  advisory lock on the environment;
* the URL-signing key is inserted once (``ON CONFLICT DO NOTHING``) and read back, so every
  node signs and verifies with the same key.
"""

from __future__ import annotations

import contextlib
import json
import secrets
import time
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

import psycopg
from psycopg import AsyncConnection
from psycopg.conninfo import conninfo_to_dict
from psycopg_pool import AsyncConnectionPool, PoolTimeout

from codexexec.rendezvous.signing import KEY_BYTES
from codexexec.rendezvous.store import (
    KEPT_REGISTRATIONS_PER_ENVIRONMENT,
    AuthorizationLimit,
    Registration,
    StoreUnavailable,
    ValidationOutcome,
    auth_digest,
    canonical_json,
    judge,
)

# Each entry moves the schema from its index to the next version.
MIGRATIONS = (
    """
    CREATE TABLE meta (name TEXT PRIMARY KEY, value BYTEA NOT NULL);
    CREATE TABLE environments (
        environment_id TEXT PRIMARY KEY,
        created_at DOUBLE PRECISION NOT NULL,
        current_registration_id TEXT
    );
    CREATE TABLE registrations (
        registration_id TEXT PRIMARY KEY,
        environment_id TEXT NOT NULL,
        security_profile TEXT NOT NULL,
        executor_public_key TEXT,
        created_at DOUBLE PRECISION NOT NULL,
        serial BIGSERIAL,
        registered_by TEXT NOT NULL
    );
    CREATE INDEX registrations_environment ON registrations(environment_id);
    CREATE TABLE authorizations (
        digest TEXT PRIMARY KEY,
        environment_id TEXT NOT NULL,
        registration_id TEXT NOT NULL,
        harness_public_key TEXT NOT NULL,
        expires_at DOUBLE PRECISION NOT NULL,
        used_at DOUBLE PRECISION
    );
    CREATE INDEX authorizations_expiry ON authorizations(expires_at);
    CREATE INDEX authorizations_environment ON authorizations(environment_id);
    """,
    # The limit counts outstanding authorizations only; spent ones stay until they expire,
    # and must not be scanned on every /connect.
    """
    CREATE INDEX authorizations_outstanding ON authorizations(environment_id)
        WHERE used_at IS NULL;
    """,
)
SCHEMA_VERSION = len(MIGRATIONS)
# One lock id for schema migrations across nodes starting at once.
_MIGRATION_LOCK = 0x636F6465  # "code"
POOL_MAX_SIZE = 8
CONNECT_TIMEOUT_SECONDS = 10.0


def _reason(exc: BaseException, url: str) -> str:
    """The first line of a driver error, with the URL's password (if any) blanked out."""
    text = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
    password = conninfo_to_dict(url).get("password") if url else None
    return text.replace(str(password), "***") if password else text


class PostgresStore:
    def __init__(
        self, pool: AsyncConnectionPool[AsyncConnection[Any]], url: str, clock: Callable[[], float]
    ) -> None:
        self._pool = pool
        self._url = url
        self._clock = clock
        self.signing_key = b""

    @classmethod
    async def open(cls, url: str, *, clock: Callable[[], float] = time.time) -> PostgresStore:
        # One plain connection first: its error says what is wrong (the pool's would only
        # time out, after logging every retry).
        try:
            probe = await AsyncConnection.connect(url, connect_timeout=int(CONNECT_TIMEOUT_SECONDS))
        except psycopg.Error as exc:
            raise StoreUnavailable(f"PostgreSQL store unavailable: {_reason(exc, url)}") from None
        await probe.close()
        pool: AsyncConnectionPool[AsyncConnection[Any]] = AsyncConnectionPool(
            url,
            min_size=1,
            max_size=POOL_MAX_SIZE,
            timeout=CONNECT_TIMEOUT_SECONDS,
            kwargs={"autocommit": True},
            open=False,
        )
        try:
            await pool.open(wait=True, timeout=CONNECT_TIMEOUT_SECONDS)
            store = cls(pool, url, clock)
            await store._migrate()
            store.signing_key = await store._signing_key()
        except StoreUnavailable:
            await pool.close()
            raise
        except Exception as exc:
            await pool.close()
            raise StoreUnavailable(f"PostgreSQL store unavailable: {_reason(exc, url)}") from None
        return store

    async def aclose(self) -> None:
        await self._pool.close()

    @contextlib.asynccontextmanager
    async def _connection(self) -> AsyncIterator[AsyncConnection[Any]]:
        """A pooled connection; a database that went away is StoreUnavailable (the pool
        connects again once it is back)."""
        try:
            async with self._pool.connection() as conn:
                yield conn
        except (psycopg.OperationalError, psycopg.InterfaceError, PoolTimeout) as exc:
            raise StoreUnavailable(
                f"PostgreSQL store unavailable: {_reason(exc, self._url)}"
            ) from None

    async def _migrate(self) -> None:
        async with self._connection() as conn, conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock(%s)", (_MIGRATION_LOCK,))
            await conn.execute(
                "CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)"
            )
            row = await (await conn.execute("SELECT version FROM schema_version")).fetchone()
            version = 0 if row is None else int(row[0])
            if version > SCHEMA_VERSION:
                raise StoreUnavailable(
                    f"the database's schema version {version} is newer than this codexexec's "
                    f"({SCHEMA_VERSION})"
                )
            for migration in MIGRATIONS[version:]:
                await conn.execute(migration)
            if row is None:
                await conn.execute("INSERT INTO schema_version VALUES (%s)", (SCHEMA_VERSION,))
            else:
                await conn.execute("UPDATE schema_version SET version = %s", (SCHEMA_VERSION,))

    async def _signing_key(self) -> bytes:
        async with self._connection() as conn:
            await conn.execute(
                "INSERT INTO meta(name, value) VALUES ('relay_signing_key', %s)"
                " ON CONFLICT (name) DO NOTHING",
                (secrets.token_bytes(KEY_BYTES),),
            )
            row = await (
                await conn.execute("SELECT value FROM meta WHERE name = 'relay_signing_key'")
            ).fetchone()
        assert row is not None
        return bytes(row[0])

    # -- registrations ------------------------------------------------------------------------

    async def register(
        self,
        environment_id: str,
        security_profile: str,
        executor_public_key: Any,
        registered_by: str,
    ) -> Registration:
        now = self._clock()
        registration_id = f"reg-{uuid.uuid4()}"
        key_text = None if executor_public_key is None else canonical_json(executor_public_key)
        async with self._connection() as conn, conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", (environment_id,))
            await conn.execute(
                "INSERT INTO registrations(registration_id, environment_id, security_profile,"
                " executor_public_key, created_at, registered_by)"
                " VALUES (%s, %s, %s, %s, %s, %s)",
                (registration_id, environment_id, security_profile, key_text, now, registered_by),
            )
            await conn.execute(
                "INSERT INTO environments(environment_id, created_at, current_registration_id)"
                " VALUES (%s, %s, %s) ON CONFLICT (environment_id)"
                " DO UPDATE SET current_registration_id = excluded.current_registration_id",
                (environment_id, now, registration_id),
            )
            await conn.execute(
                "DELETE FROM registrations WHERE environment_id = %s AND registration_id NOT IN"
                " (SELECT registration_id FROM registrations WHERE environment_id = %s"
                " ORDER BY serial DESC LIMIT %s)",
                (environment_id, environment_id, KEPT_REGISTRATIONS_PER_ENVIRONMENT),
            )
            await conn.execute(
                "DELETE FROM authorizations WHERE environment_id = %s AND registration_id NOT IN"
                " (SELECT registration_id FROM registrations WHERE environment_id = %s)",
                (environment_id, environment_id),
            )
        return Registration(
            registration_id, environment_id, security_profile, executor_public_key, now
        )

    async def current_registration(self, environment_id: str) -> Registration | None:
        async with self._connection() as conn:
            row = await (
                await conn.execute(
                    "SELECT r.registration_id, r.environment_id, r.security_profile,"
                    " r.executor_public_key, r.created_at FROM environments e JOIN registrations r"
                    " ON r.registration_id = e.current_registration_id"
                    " WHERE e.environment_id = %s",
                    (environment_id,),
                )
            ).fetchone()
        if row is None:
            return None
        key = None if row[3] is None else json.loads(row[3])
        return Registration(row[0], row[1], row[2], key, float(row[4]))

    async def environment_count(self) -> int:
        async with self._connection() as conn:
            row = await (await conn.execute("SELECT COUNT(*) FROM environments")).fetchone()
        return 0 if row is None else int(row[0])

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
        now = self._clock()
        authorization = "hka-" + secrets.token_urlsafe(32)
        async with self._connection() as conn, conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", (environment_id,))
            await conn.execute("DELETE FROM authorizations WHERE expires_at < %s", (now,))
            if limit is not None:
                row = await (
                    await conn.execute(
                        "SELECT COUNT(*) FROM authorizations"
                        " WHERE environment_id = %s AND used_at IS NULL",
                        (environment_id,),
                    )
                ).fetchone()
                if row is not None and int(row[0]) >= limit:
                    raise AuthorizationLimit
            await conn.execute(
                "INSERT INTO authorizations(digest, environment_id, registration_id,"
                " harness_public_key, expires_at, used_at) VALUES (%s, %s, %s, %s, %s, NULL)",
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
        now = self._clock()
        digest = auth_digest(authorization)
        async with self._connection() as conn:
            spent = await (
                await conn.execute(
                    "UPDATE authorizations SET used_at = %s WHERE digest = %s AND used_at IS NULL"
                    " RETURNING environment_id, registration_id, harness_public_key, expires_at",
                    (now, digest),
                )
            ).fetchone()
            if spent is None:
                known = await (
                    await conn.execute("SELECT 1 FROM authorizations WHERE digest = %s", (digest,))
                ).fetchone()
                return ValidationOutcome.UNKNOWN if known is None else ValidationOutcome.USED
            current = await (
                await conn.execute(
                    "SELECT current_registration_id FROM environments WHERE environment_id = %s",
                    (environment_id,),
                )
            ).fetchone()
        return judge(
            (spent[0], spent[1], spent[2], float(spent[3])),
            None if current is None else current[0],
            (environment_id, registration_id, harness_public_key),
            now,
        )
