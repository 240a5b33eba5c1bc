"""One suite for every registry store: the embedded SQLite store and PostgreSQL (a private
server these tests start), as the behaviour suite runs against both exec-servers."""

from __future__ import annotations

import asyncio
import re
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from codexexec.rendezvous.pg_store import MIGRATIONS, SCHEMA_VERSION, PostgresStore
from codexexec.rendezvous.store import (
    OUTSTANDING_AUTHORIZATIONS,
    AuthorizationLimit,
    RegistryStore,
    Store,
    StoreUnavailable,
    ValidationOutcome,
)
from tests.pg import private_postgres
from tests.test_rendezvous import FakeClock, noise_key


@pytest.fixture(scope="module")
def postgres() -> Iterator[str]:
    with private_postgres() as server:
        yield server.url


def _fresh_database(url: str) -> str:
    """A new, empty database on the private server (each test starts from nothing)."""
    name = f"t_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name}")
    return url.rsplit("/", 1)[0] + f"/{name}"


@pytest.fixture(params=["sqlite", "postgresql"])
async def opened(
    request: pytest.FixtureRequest, tmp_path: Path
) -> AsyncIterator[tuple[RegistryStore, FakeClock, str]]:
    clock = FakeClock()
    if request.param == "sqlite":
        where = str(tmp_path / "rv.sqlite3")
        store: RegistryStore = Store(where, clock=clock)
    else:
        where = _fresh_database(request.getfixturevalue("postgres"))
        store = await PostgresStore.open(where, clock=clock)
    yield store, clock, where
    await store.aclose()


async def _reopen(where: str, clock: FakeClock) -> RegistryStore:
    if where.startswith("postgresql://"):
        return await PostgresStore.open(where, clock=clock)
    return Store(where, clock=clock)


async def test_authorizations_are_single_use_and_state_survives_a_restart(
    opened: tuple[RegistryStore, FakeClock, str],
) -> None:
    store, clock, where = opened
    registration = await store.register("env-1", "noise_hybrid_ik_v1", noise_key(1), "test")
    key = noise_key(7)
    auth = await store.issue_authorization("env-1", registration.registration_id, key, 30)
    args = ("env-1", registration.registration_id, key)
    assert await store.consume_authorization(*args, auth) == ValidationOutcome.VALID
    assert await store.consume_authorization(*args, auth) == ValidationOutcome.USED
    mismatched = await store.issue_authorization("env-1", registration.registration_id, key, 30)
    other = ("env-1", registration.registration_id, noise_key(8), mismatched)
    assert await store.consume_authorization(*other) == ValidationOutcome.MISMATCH
    late = await store.issue_authorization("env-1", registration.registration_id, key, 30)
    clock.now += 31
    assert await store.consume_authorization(*args, late) == ValidationOutcome.EXPIRED
    assert await store.consume_authorization(*args, "hka-unknown") == ValidationOutcome.UNKNOWN
    reopened = await _reopen(where, clock)
    try:
        assert reopened.signing_key == store.signing_key and len(store.signing_key) >= 32
        current = await reopened.current_registration("env-1")
        assert current is not None and current.executor_public_key == noise_key(1)
        assert await reopened.consume_authorization(*args, auth) == ValidationOutcome.USED
    finally:
        await reopened.aclose()


async def test_a_new_registration_supersedes_and_old_ones_are_pruned(
    opened: tuple[RegistryStore, FakeClock, str],
) -> None:
    store, clock, _ = opened
    first = await store.register("env-1", "noise_hybrid_ik_v1", noise_key(1), "test")
    auth = await store.issue_authorization("env-1", first.registration_id, noise_key(2), 60)
    second = await store.register("env-1", "noise_hybrid_ik_v1", noise_key(3), "test")
    current = await store.current_registration("env-1")
    assert current is not None and current.registration_id == second.registration_id
    # Issued under the replaced registration: stale, not valid.
    args = ("env-1", first.registration_id, noise_key(2), auth)
    assert await store.consume_authorization(*args) == ValidationOutcome.STALE
    for _ in range(5):
        clock.now += 1
        await store.register("env-1", "noise_hybrid_ik_v1", noise_key(4), "test")
    assert await store.environment_count() == 1
    assert await store.current_registration("env-nope") is None


async def test_the_authorization_limit_holds(
    opened: tuple[RegistryStore, FakeClock, str],
) -> None:
    store, clock, _ = opened
    registration = await store.register("env-1", "noise_hybrid_ik_v1", noise_key(1), "test")
    args = ("env-1", registration.registration_id, noise_key(2))

    async def issue() -> str:
        return await store.issue_authorization(*args, 30, limit=3)

    issued = [await issue() for _ in range(3)]
    with pytest.raises(AuthorizationLimit):
        await issue()
    # A spent one no longer counts (a harness opening a connection per command is not
    # refused after ``limit`` of them), but is still known as spent.
    assert await store.consume_authorization(*args, issued[0]) == ValidationOutcome.VALID
    await issue()
    assert await store.consume_authorization(*args, issued[0]) == ValidationOutcome.USED
    with pytest.raises(AuthorizationLimit):
        await issue()
    clock.now += 31  # expired ones no longer count
    await issue()


async def test_two_nodes_racing_for_one_authorization_only_one_wins(postgres: str) -> None:
    """Two rendezvous nodes (two stores, two connection pools) validate the same
    authorization at once, many times over: exactly one of each pair sees it valid."""
    where = _fresh_database(postgres)
    node_a, node_b = await PostgresStore.open(where), await PostgresStore.open(where)
    try:
        assert node_a.signing_key == node_b.signing_key  # one key for the whole cluster
        registration = await node_a.register("env-1", "noise_hybrid_ik_v1", noise_key(1), "t")
        key = noise_key(5)
        for _ in range(50):
            auth = await node_a.issue_authorization("env-1", registration.registration_id, key, 60)
            args: tuple[Any, ...] = ("env-1", registration.registration_id, key, auth)
            outcomes = await asyncio.gather(
                node_a.consume_authorization(*args), node_b.consume_authorization(*args)
            )
            assert sorted(outcomes) == sorted([ValidationOutcome.VALID, ValidationOutcome.USED])
    finally:
        await node_a.aclose()
        await node_b.aclose()


async def test_the_schema_is_created_once_and_versioned(postgres: str) -> None:
    where = _fresh_database(postgres)
    stores = await asyncio.gather(*(PostgresStore.open(where) for _ in range(4)))
    for store in stores:
        await store.aclose()
    with psycopg.connect(where) as conn:
        assert conn.execute("SELECT version FROM schema_version").fetchall() == [(SCHEMA_VERSION,)]


async def test_an_older_schema_is_migrated_in_place(postgres: str) -> None:
    where = _fresh_database(postgres)
    with psycopg.connect(where) as conn:
        conn.execute(MIGRATIONS[0])
        conn.execute("CREATE TABLE schema_version (version INTEGER NOT NULL)")
        conn.execute("INSERT INTO schema_version VALUES (1)")
        conn.execute("INSERT INTO environments VALUES ('env-kept', 1.0, NULL)")
    store = await PostgresStore.open(where)
    await store.aclose()
    with psycopg.connect(where) as conn:
        assert conn.execute("SELECT version FROM schema_version").fetchall() == [(SCHEMA_VERSION,)]
        assert conn.execute("SELECT environment_id FROM environments").fetchall() == [("env-kept",)]
        indexes = dict(
            conn.execute(
                "SELECT indexname, indexdef FROM pg_indexes WHERE tablename = 'authorizations'"
            ).fetchall()
        )
    assert "WHERE (used_at IS NULL)" in indexes["authorizations_outstanding"]


def test_the_embedded_store_counts_outstanding_authorizations_by_index(tmp_path: Path) -> None:
    """Spent authorizations wait for their expiry as rows; the limit's count must not scan
    them on every /connect."""
    store = Store(tmp_path / "rv.sqlite3")
    try:
        [plan] = store._db.execute(
            "EXPLAIN QUERY PLAN " + OUTSTANDING_AUTHORIZATIONS, ("env-1",)
        ).fetchall()
    finally:
        store.close()
    # A search, not a scan, through that index, however the SQLite version words it
    # ("SEARCH TABLE …" before 3.36, "… USING COVERING INDEX …").
    assert re.match(r"SEARCH (TABLE )?authorizations USING", plan[3]), plan
    assert "INDEX authorizations_outstanding (environment_id=?)" in plan[3], plan


async def test_an_unreachable_database_is_one_clear_error(postgres: str) -> None:
    port = int(postgres.rsplit(":", 1)[1].split("/")[0])
    with pytest.raises(StoreUnavailable, match="PostgreSQL store unavailable") as caught:
        await PostgresStore.open(f"postgresql://cx:secret-pw@127.0.0.1:{port + 1}/postgres")
    assert "secret-pw" not in str(caught.value)


async def test_a_database_outage_is_a_clear_503_and_the_node_recovers(tmp_path: Path) -> None:
    """PostgreSQL goes away under a running node: registry calls answer 503
    `store_unavailable` (not a 500), /healthz says so, and once the database is back the
    same node serves again without a restart."""
    import aiohttp

    from codexexec.rendezvous import RendezvousOptions, start_rendezvous
    from codexexec.rendezvous.auth import TokenTable

    (tmp_path / "tokens").write_text("outage-token\n")
    with private_postgres() as server:
        store = await PostgresStore.open(_fresh_database(server.url))
        running = await start_rendezvous(
            "http://127.0.0.1:0",
            TokenTable.load(tmp_path / "tokens"),
            store,
            RendezvousOptions(heartbeat=None),
        )
        headers = {"Authorization": "Bearer outage-token"}
        register = f"{running.url}/cloud/environment/env-1/register"
        body = {"security_profile": "noise_hybrid_ik_v1", "executor_public_key": noise_key(1)}
        try:
            async with aiohttp.ClientSession(headers=headers) as http:
                async with http.post(register, json=body) as response:
                    assert response.status == 200
                server.stop()
                async with http.post(register, json=body) as response:
                    assert response.status == 503
                    assert (await response.json())["error"]["code"] == "store_unavailable"
                async with http.get(f"{running.url}/healthz") as response:
                    assert response.status == 503
                    assert (await response.json())["store"].startswith("unavailable")
                server.start()
                for _ in range(100):
                    async with http.post(register, json=body) as response:
                        if response.status == 200:
                            break
                    await asyncio.sleep(0.1)
                assert response.status == 200
                async with http.get(f"{running.url}/healthz") as response:
                    assert response.status == 200
        finally:
            await running.stop()
            await store.aclose()


def test_the_sqlite_file_is_private(tmp_path: Path) -> None:
    """It holds the URL-signing key: created 0600."""
    import stat

    Store(tmp_path / "rv.sqlite3").close()
    assert stat.S_IMODE((tmp_path / "rv.sqlite3").stat().st_mode) == 0o600
