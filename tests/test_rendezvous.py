"""`codexexec rendezvous`: registry endpoints, signed relay URLs and frame routing.

Everything runs on real sockets on 127.0.0.1: the service through aiohttp's runner, HTTP calls
through an aiohttp client, relay sockets through the `websockets` client.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
import os
import signal
import stat
import subprocess
import sys
import urllib.request
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, parse_qsl, urlencode, urlsplit, urlunsplit

import aiohttp
import pytest
from websockets.asyncio.client import ClientConnection
from websockets.asyncio.client import connect as ws_connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from codexexec.relay.frames import (
    body_kind,
    data_frame,
    decode,
    encode,
    reset_frame,
    resume_frame,
)
from codexexec.rendezvous import (
    RelayUrlSigner,
    RendezvousOptions,
    RunningRendezvous,
    SignatureError,
    Store,
    TokenFileError,
    TokenTable,
    parse_listen_url,
    start_rendezvous,
)
from codexexec.rendezvous.auth import RequestRefused, create_dev_token_file

BOTH = "tok-both-0123456789abcdef"
EXECUTOR = "tok-exec-0123456789abcdef"
HARNESS = "tok-harness-0123456789abcdef"
ENV1_ONLY = "tok-env1-0123456789abcdef"
ALL_TOKENS = (BOTH, EXECUTOR, HARNESS, ENV1_ONLY)

TOKEN_FILE = f"""
# test tokens
{BOTH}
{EXECUTOR} executor
{HARNESS}   harness   # trailing comment
{ENV1_ONLY} both env-1
"""

SUITE = "Noise_hybridIK_X25519+MLKEM768_AESGCM_SHA256"


def noise_key(seed: int) -> dict[str, str]:
    return {
        "suite": SUITE,
        "x25519_public_key": base64.b64encode(bytes([seed]) * 32).decode(),
        "mlkem768_public_key": base64.b64encode(bytes([seed + 1]) * 1184).decode(),
    }


class FakeClock:
    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now


class Service:
    def __init__(self, running: RunningRendezvous, store: Store, clock: FakeClock) -> None:
        self.running = running
        self.store = store
        self.clock = clock
        self.url = running.url
        self.http = aiohttp.ClientSession()

    async def post(
        self, path: str, token: str | None, body: Any = None, *, raw: bytes | None = None
    ) -> tuple[int, Any]:
        headers = {"Content-Type": "application/json"}
        if token is not None:
            headers["Authorization"] = f"Bearer {token}"
        data = raw if raw is not None else (b"" if body is None else json.dumps(body).encode())
        async with self.http.post(self.url + path, data=data, headers=headers) as response:
            text = await response.text()
            return response.status, json.loads(text) if text else None

    async def register(self, env: str = "env-1", key: Any = None) -> dict[str, Any]:
        body = (
            None
            if key is False
            else {
                "security_profile": "noise_hybrid_ik_v1",
                "executor_public_key": key or noise_key(1),
            }
        )
        status, answer = await self.post(f"/cloud/environment/{env}/register", EXECUTOR, body)
        assert status == 200, answer
        return dict(answer)

    async def connect(self, env: str = "env-1", key: Any = None) -> dict[str, Any]:
        body = None if key is False else {"harness_public_key": key or noise_key(7)}
        status, answer = await self.post(f"/cloud/environment/{env}/connect", HARNESS, body)
        assert status == 200, answer
        return dict(answer)

    async def validate(self, body: dict[str, Any], env: str = "env-1") -> tuple[int, Any]:
        return await self.post(f"/cloud/environment/{env}/validate", EXECUTOR, body)


@pytest.fixture
async def service(tmp_path: Path) -> AsyncIterator[Service]:
    async with running_service(tmp_path) as svc:
        yield svc


@contextlib.asynccontextmanager
async def running_service(tmp_path: Path, **tunables: Any) -> AsyncIterator[Service]:
    """A rendezvous on loopback with the test tokens, a fake clock and ``tunables``."""
    token_file = tmp_path / "tokens"
    token_file.write_text(TOKEN_FILE)
    clock = FakeClock()
    store = Store(tmp_path / "rendezvous.sqlite3", clock=clock)
    options = RendezvousOptions(heartbeat=None, close_timeout=2.0, **tunables)
    running = await start_rendezvous(
        "http://127.0.0.1:0", TokenTable.load(token_file), store, options
    )
    svc = Service(running, store, clock)
    try:
        yield svc
    finally:
        await svc.http.close()
        await running.stop()
        store.close()


async def open_ws(url: str) -> ClientConnection:
    return await ws_connect(url, max_size=None, compression=None, open_timeout=5)


async def recv_frame(ws: ClientConnection, timeout: float = 5.0) -> bytes:
    message = await asyncio.wait_for(ws.recv(), timeout)
    assert isinstance(message, bytes)
    return message


async def assert_silent(ws: ClientConnection, timeout: float = 0.3) -> None:
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(ws.recv(), timeout)


async def online_executor(
    svc: Service, env: str = "env-1"
) -> tuple[dict[str, Any], ClientConnection]:
    registration = await svc.register(env)
    executor = await open_ws(registration["url"])
    await wait_for(lambda: env in svc.running.state.relay.executors)
    return registration, executor


def validation(registration: dict[str, Any], key: Any, bundle: dict[str, Any]) -> dict[str, Any]:
    """The executor's /validate body for a harness that connected with ``key``."""
    return {
        "executor_registration_id": registration["executor_registration_id"],
        "harness_public_key": key,
        "harness_key_authorization": bundle["harness_key_authorization"],
    }


async def wait_for(predicate: Any, timeout: float = 5.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not predicate():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError("condition not reached")
        await asyncio.sleep(0.01)


def status_of(error: InvalidStatus) -> int:
    return error.response.status_code


# -- registry endpoints ------------------------------------------------------------------------


async def test_register_connect_validate_happy_path(service: Service) -> None:
    executor_key = noise_key(1)
    registration = await service.register("env-1", executor_key)
    assert set(registration) == {
        "environment_id",
        "url",
        "security_profile",
        "executor_registration_id",
    }
    assert registration["environment_id"] == "env-1"
    assert registration["security_profile"] == "noise_hybrid_ik_v1"
    registration_id = registration["executor_registration_id"]
    assert registration_id.startswith("reg-") and registration_id.strip() == registration_id
    url = urlsplit(registration["url"])
    assert (url.scheme, url.netloc, url.path) == ("ws", urlsplit(service.url).netloc, "/relay")
    assert [name for name, _ in parse_qsl(url.query)] == [
        "role",
        "environment_id",
        "registration_id",
        "expires",
        "sig",
    ]
    query = parse_qs(url.query)
    assert query["role"] == ["environment"]
    assert query["environment_id"] == ["env-1"]
    assert query["registration_id"] == [registration_id]

    executor = await open_ws(registration["url"])
    await wait_for(lambda: "env-1" in service.running.state.relay.executors)

    harness_key = noise_key(7)
    bundle = await service.connect("env-1", harness_key)
    assert set(bundle) == {
        "environment_id",
        "url",
        "security_profile",
        "executor_registration_id",
        "executor_public_key",
        "harness_key_authorization",
    }
    assert bundle["environment_id"] == "env-1"
    assert bundle["security_profile"] == "noise_hybrid_ik_v1"
    assert bundle["executor_registration_id"] == registration_id
    assert bundle["executor_public_key"] == executor_key
    authorization = bundle["harness_key_authorization"]
    assert authorization.strip() and len(authorization.encode()) <= 4096
    harness_query = parse_qs(urlsplit(bundle["url"]).query)
    assert harness_query["role"] == ["harness"]
    assert harness_query["registration_id"] == [registration_id]

    request = {
        "executor_registration_id": registration_id,
        "harness_public_key": harness_key,
        "harness_key_authorization": authorization,
    }
    assert await service.validate(request) == (200, {"valid": True})
    # Single use: the same authorization never validates twice.
    assert await service.validate(request) == (200, {"valid": False})

    # Each /connect issues a fresh authorization, bound to the key it was issued for.
    second = await service.connect("env-1", harness_key)
    assert second["harness_key_authorization"] != authorization
    wrong_key = dict(
        request,
        harness_public_key=noise_key(9),
        harness_key_authorization=second["harness_key_authorization"],
    )
    assert await service.validate(wrong_key) == (200, {"valid": False})
    # ...and a mismatched presentation spends it too.
    spent = dict(wrong_key, harness_public_key=harness_key)
    assert await service.validate(spent) == (200, {"valid": False})

    third = await service.connect("env-1", harness_key)
    other_registration = dict(
        request,
        executor_registration_id="reg-other",
        harness_key_authorization=third["harness_key_authorization"],
    )
    assert await service.validate(other_registration) == (200, {"valid": False})
    unknown = dict(request, harness_key_authorization="hka-never-issued")
    assert await service.validate(unknown) == (200, {"valid": False})
    await executor.close()


async def test_validate_accepts_a_key_with_other_key_order(service: Service) -> None:
    """The executor rebuilds the harness key JSON; equal JSON values must match."""
    registration, executor = await online_executor(service)
    key = noise_key(7)
    bundle = await service.connect("env-1", key)
    reordered = {name: key[name] for name in reversed(list(key))}
    body = validation(registration, reordered, bundle)
    assert await service.validate(body) == (200, {"valid": True})
    await executor.close()


async def test_authorization_expires(service: Service) -> None:
    registration, executor = await online_executor(service)
    key = noise_key(7)
    bundle = await service.connect("env-1", key)
    service.clock.now += RendezvousOptions().authorization_ttl + 1
    body = validation(registration, key, bundle)
    assert await service.validate(body) == (200, {"valid": False})
    await executor.close()


async def test_authorization_dies_with_its_registration(service: Service) -> None:
    registration, executor = await online_executor(service)
    key = noise_key(7)
    bundle = await service.connect("env-1", key)
    await service.register("env-1")  # re-registration: the old bundle is stale
    body = validation(registration, key, bundle)
    assert await service.validate(body) == (200, {"valid": False})
    await executor.close()


async def test_re_registering_in_a_loop_keeps_the_store_small(service: Service) -> None:
    """An executor restarting over and over (or a token holder looping on /register) must
    not grow the database: only the current registration and the one it replaced stay."""
    previous = current = await service.register("env-1")
    for _ in range(50):
        # Each registration had an authorization issued under it, too.
        await service.store.issue_authorization(
            "env-1", current["executor_registration_id"], noise_key(1), 120
        )
        current = await service.register("env-1")
    rows = service.store._db.execute("SELECT COUNT(*) FROM registrations").fetchone()[0]
    grants = service.store._db.execute("SELECT COUNT(*) FROM authorizations").fetchone()[0]
    assert rows == 2 and grants == 1  # the one issued under the previous registration
    assert (await service.store.current_registration("env-1")).registration_id == (  # type: ignore[union-attr]
        current["executor_registration_id"]
    )
    assert previous["executor_registration_id"] != current["executor_registration_id"]


@pytest.mark.parametrize(
    ("authorization", "code"),
    [
        (None, "unauthorized"),
        ("Bearer wrong-token-0123456789", "unauthorized"),
        (f"Basic {BOTH}", "unauthorized"),
        ("Bearer ", "unauthorized"),
        ("Bearer sk-proj-abcdefghijklmnop", "api_key_not_accepted"),
    ],
)
async def test_missing_or_wrong_token_is_401(
    service: Service, authorization: str | None, code: str
) -> None:
    headers = {} if authorization is None else {"Authorization": authorization}
    for endpoint in ("register", "connect", "validate"):
        async with service.http.post(
            f"{service.url}/cloud/environment/env-1/{endpoint}", json={}, headers=headers
        ) as response:
            assert response.status == 401
            body = await response.json()
            assert set(body) == {"error"}
            assert set(body["error"]) == {"code", "message"}
            assert body["error"]["code"] == code
            assert body["error"]["message"]
            assert response.headers["WWW-Authenticate"].startswith("Bearer")
    if code == "api_key_not_accepted":
        assert "API key" in body["error"]["message"]


async def test_role_and_environment_grants(service: Service) -> None:
    status, body = await service.post(
        "/cloud/environment/env-1/register", HARNESS, {"security_profile": "legacy"}
    )
    assert status == 403 and body["error"]["code"] == "forbidden"
    status, body = await service.post("/cloud/environment/env-1/connect", EXECUTOR, {})
    assert status == 403 and body["error"]["code"] == "forbidden"
    status, body = await service.post("/cloud/environment/env-2/register", ENV1_ONLY, None)
    assert status == 403
    status, body = await service.post("/cloud/environment/env-1/register", ENV1_ONLY, None)
    assert status == 200 and body["environment_id"] == "env-1"
    status, body = await service.post("/cloud/environment/env-3/register", BOTH, None)
    assert status == 200


async def test_registry_errors_are_codex_shaped(service: Service) -> None:
    status, body = await service.post(
        "/cloud/environment/env-1/register", EXECUTOR, {"security_profile": "plain"}
    )
    assert (status, body["error"]["code"]) == (400, "unsupported_security_profile")
    status, body = await service.post(
        "/cloud/environment/env-1/register", EXECUTOR, {"security_profile": "noise_hybrid_ik_v1"}
    )
    assert (status, body["error"]["code"]) == (400, "invalid_request")
    status, body = await service.post(
        "/cloud/environment/env-1/register", EXECUTOR, raw=b"not json"
    )
    assert (status, body["error"]["code"]) == (400, "invalid_request")
    status, body = await service.post("/cloud/environment/bad%20id/register", EXECUTOR, None)
    assert (status, body["error"]["code"]) == (400, "invalid_environment_id")
    status, body = await service.post("/cloud/environment/nowhere/connect", HARNESS, {})
    assert (status, body["error"]["code"]) == (404, "environment_not_found")
    await service.register("env-1")
    status, body = await service.post(
        "/cloud/environment/env-1/connect", HARNESS, {"harness_public_key": noise_key(7)}
    )
    assert (status, body["error"]["code"]) == (409, "environment_offline")
    status, body = await service.validate({"harness_key_authorization": "x"})
    assert (status, body["error"]["code"]) == (400, "invalid_request")
    async with service.http.get(f"{service.url}/cloud/environment/env-1/register") as response:
        assert response.status == 405
        assert (await response.json())["error"]["code"] == "method_not_allowed"
    async with service.http.get(f"{service.url}/nope") as response:
        assert response.status == 404
        assert (await response.json())["error"]["code"] == "not_found"
    async with service.http.post(
        f"{service.url}/cloud/environment/env-1/register",
        data=b"{" + b" " * (128 * 1024) + b"}",
        headers={"Authorization": f"Bearer {EXECUTOR}"},
    ) as response:
        assert response.status == 413
        assert (await response.json())["error"]["code"] == "request_too_large"


async def test_noise_connect_needs_a_harness_key(service: Service) -> None:
    _, executor = await online_executor(service)
    status, body = await service.post("/cloud/environment/env-1/connect", HARNESS, None)
    assert (status, body["error"]["code"]) == (400, "invalid_request")
    await executor.close()


async def test_healthz(service: Service) -> None:
    async with service.http.get(f"{service.url}/healthz") as response:
        assert response.status == 200
        body = await response.json()
    assert body["status"] == "ok" and body["store"] == "ok"
    assert body["executors_online"] == 0


# -- relay URLs ------------------------------------------------------------------------------


def with_query(url: str, **changes: str | None) -> str:
    parts = urlsplit(url)
    pairs = [
        (k, changes.get(k, v)) for k, v in parse_qsl(parts.query) if changes.get(k, v) is not None
    ]
    return urlunsplit((parts.scheme, parts.netloc, parts.path, urlencode(pairs), ""))


async def test_forged_or_expired_relay_urls_are_refused_at_upgrade(service: Service) -> None:
    registration = await service.register("env-1")
    url = registration["url"]
    sig = parse_qs(urlsplit(url).query)["sig"][0]
    forged_sig = ("A" if sig[0] != "A" else "B") + sig[1:]
    signer = RelayUrlSigner(service.store.signing_key)
    base = f"ws://{urlsplit(url).netloc}"
    expired = signer.sign(
        base, "environment", "env-1", registration["executor_registration_id"], -10
    )
    other_key = RelayUrlSigner(b"k" * 32).sign(
        base, "environment", "env-1", registration["executor_registration_id"], 600
    )
    cases = [
        (with_query(url, sig=forged_sig), 403),
        (with_query(url, role="harness"), 403),
        (with_query(url, environment_id="env-2"), 403),
        (with_query(url, expires="9999999999"), 403),
        (other_key, 403),
        (expired, 401),
        (with_query(url, sig=None), 401),
    ]
    for bad, status in cases:
        with pytest.raises(InvalidStatus) as caught:
            await open_ws(bad)
        assert status_of(caught.value) == status, bad
    assert service.running.state.relay.executors == {}
    executor = await open_ws(url)  # the genuine URL still works
    await executor.close()


async def test_stale_registration_urls_are_refused(service: Service) -> None:
    first = await service.register("env-1")
    executor = await open_ws(first["url"])
    await wait_for(lambda: "env-1" in service.running.state.relay.executors)
    second = await service.register("env-1")
    # The socket under the old registration is closed...
    with pytest.raises(ConnectionClosed):
        await asyncio.wait_for(executor.recv(), 5)
    assert executor.close_code == 4001
    # ...and its URL no longer opens one (401: Codex's executor re-registers on a 4xx).
    with pytest.raises(InvalidStatus) as caught:
        await open_ws(first["url"])
    assert status_of(caught.value) == 401
    replacement = await open_ws(second["url"])
    await replacement.close()


async def test_harness_url_needs_an_online_executor(service: Service) -> None:
    _, executor = await online_executor(service)
    bundle = await service.connect()
    await executor.close()
    await wait_for(lambda: "env-1" not in service.running.state.relay.executors)
    with pytest.raises(InvalidStatus) as caught:
        await open_ws(bundle["url"])
    assert status_of(caught.value) == 409


# -- routing ---------------------------------------------------------------------------------

S1 = "11111111-1111-4111-8111-111111111111"
S2 = "22222222-2222-4222-8222-222222222222"


async def open_harness(service: Service) -> ClientConnection:
    bundle = await service.connect()
    return await open_ws(bundle["url"])


async def test_two_harness_streams_are_routed_without_cross_talk(service: Service) -> None:
    _, executor = await online_executor(service)
    h1 = await open_harness(service)
    h2 = await open_harness(service)
    sent = {
        encode(resume_frame(S1)),
        encode(data_frame(S1, 0, b"ciphertext one")),
        encode(resume_frame(S2)),
        encode(data_frame(S2, 0, b"ciphertext two")),
    }
    await h1.send(encode(resume_frame(S1)))
    await h2.send(encode(resume_frame(S2)))
    await h1.send(encode(data_frame(S1, 0, b"ciphertext one")))
    await h2.send(encode(data_frame(S2, 0, b"ciphertext two")))
    received = [await recv_frame(executor) for _ in range(4)]
    assert set(received) == sent  # byte for byte, nothing else
    assert received.index(encode(resume_frame(S1))) < received.index(
        encode(data_frame(S1, 0, b"ciphertext one"))
    )

    to_two = encode(data_frame(S2, 0, b"reply two"))
    to_one = encode(data_frame(S1, 0, b"reply one"))
    to_one_again = encode(data_frame(S1, 1, b"reply one again"))
    await executor.send(to_two)
    await executor.send(to_one)
    await executor.send(to_one_again)
    assert await recv_frame(h1) == to_one
    assert await recv_frame(h1) == to_one_again
    assert await recv_frame(h2) == to_two
    # Frames for a stream nobody claimed go nowhere.
    await executor.send(encode(data_frame("33333333-3333-4333-8333-333333333333", 0, b"x")))
    await assert_silent(h1)
    await assert_silent(h2)
    stats = service.running.state.relay.stats
    assert (stats.to_executor, stats.to_harness, stats.dropped_unrouted) == (4, 3, 1)
    for ws in (h1, h2, executor):
        await ws.close()


async def test_harness_disconnect_resets_its_streams_at_the_executor(service: Service) -> None:
    _, executor = await online_executor(service)
    h1 = await open_harness(service)
    h2 = await open_harness(service)
    await h1.send(encode(resume_frame(S1)))
    await h2.send(encode(resume_frame(S2)))
    assert {await recv_frame(executor), await recv_frame(executor)} == {
        encode(resume_frame(S1)),
        encode(resume_frame(S2)),
    }
    await h1.close()
    frame = decode(await recv_frame(executor))
    assert body_kind(frame) == "reset"
    assert frame.stream_id == S1
    assert frame.reset.reason
    # The other harness is unaffected.
    reply = encode(data_frame(S2, 0, b"still here"))
    await executor.send(reply)
    assert await recv_frame(h2) == reply
    await assert_silent(executor)
    await h2.close()
    assert decode(await recv_frame(executor)).stream_id == S2
    await executor.close()


async def test_reset_from_either_side_releases_the_stream(service: Service) -> None:
    _, executor = await online_executor(service)
    harness = await open_harness(service)
    await harness.send(encode(resume_frame(S1)))
    await recv_frame(executor)
    reset = encode(reset_frame(S1))
    await executor.send(reset)
    assert await recv_frame(harness) == reset
    await wait_for(lambda: not len(service.running.state.relay.executors["env-1"].router))
    # The stream is over: closing the harness sends no second Reset.
    await harness.close()
    await assert_silent(executor)
    await executor.close()


async def test_garbage_and_text_frames_are_dropped_and_sockets_stay_up(service: Service) -> None:
    _, executor = await online_executor(service)
    harness = await open_harness(service)
    bad_version = encode(data_frame(S1, 0, b"x")).replace(b"\x08\x01", b"\x08\x02", 1)
    for junk in (b"\xff\xff\xff\xff", b"", b"\x08\x01", bad_version):
        await harness.send(junk)
        await executor.send(junk)
    await harness.send("a text message")
    await executor.send("a text message")
    await assert_silent(executor)
    await assert_silent(harness)
    stats = service.running.state.relay.stats
    assert stats.dropped_text == 2
    assert stats.dropped_invalid == 8
    # Both sockets still route.
    frame = encode(data_frame(S1, 0, b"after the junk"))
    await harness.send(frame)
    assert await recv_frame(executor) == frame
    reply = encode(data_frame(S1, 0, b"reply"))
    await executor.send(reply)
    assert await recv_frame(harness) == reply
    await harness.close()
    await executor.close()


async def test_stream_claimed_by_another_harness_is_refused(service: Service) -> None:
    _, executor = await online_executor(service)
    owner = await open_harness(service)
    intruder = await open_harness(service)
    await owner.send(encode(resume_frame(S1)))
    await recv_frame(executor)
    await intruder.send(encode(data_frame(S1, 0, b"spoofed")))
    refused = decode(await recv_frame(intruder))
    assert body_kind(refused) == "reset" and refused.stream_id == S1
    await assert_silent(executor)
    # A second stream id on one harness socket is refused too (one logical connection each).
    await owner.send(encode(resume_frame(S2)))
    refused = decode(await recv_frame(owner))
    assert body_kind(refused) == "reset" and refused.stream_id == S2
    # The owner's stream is intact.
    reply = encode(data_frame(S1, 0, b"for the owner"))
    await executor.send(reply)
    assert await recv_frame(owner) == reply
    await assert_silent(intruder)
    assert service.running.state.relay.stats.refused_streams == 2
    # The intruder closing must not reset the owner's stream.
    await intruder.close()
    await assert_silent(executor)
    for ws in (owner, executor):
        await ws.close()


async def test_executor_reconnect_replaces_the_old_socket(service: Service) -> None:
    registration, old = await online_executor(service)
    harness = await open_harness(service)
    await harness.send(encode(resume_frame(S1)))
    await recv_frame(old)
    new = await open_ws(registration["url"])  # same URL: Codex reconnects without re-registering
    with pytest.raises(ConnectionClosed):
        await asyncio.wait_for(old.recv(), 5)
    assert old.close_code == 4000
    # Harness streams lived on the old physical connection: Reset, then closed.
    frame = decode(await recv_frame(harness))
    assert body_kind(frame) == "reset" and frame.stream_id == S1
    with pytest.raises(ConnectionClosed):
        await asyncio.wait_for(harness.recv(), 5)
    # New harnesses route through the new socket.
    fresh = await open_harness(service)
    await fresh.send(encode(resume_frame(S2)))
    assert await recv_frame(new) == encode(resume_frame(S2))
    await fresh.close()
    await new.close()


async def test_oversized_messages_close_the_sender(service: Service) -> None:
    _, executor = await online_executor(service)
    harness = await open_harness(service)
    await harness.send(encode(data_frame(S1, 0, b"x" * (256 * 1024))))
    with pytest.raises(ConnectionClosed):
        await asyncio.wait_for(harness.recv(), 5)
    assert harness.close_code == 1009
    await executor.close()


async def test_a_slow_harness_is_cut_off_without_stalling_the_executor(tmp_path: Path) -> None:
    token_file = tmp_path / "tokens"
    token_file.write_text(TOKEN_FILE)
    store = Store(tmp_path / "db.sqlite3")
    options = RendezvousOptions(outbox_frames=4, outbox_bytes=1 << 20, close_timeout=1.0)
    running = await start_rendezvous(
        "http://127.0.0.1:0", TokenTable.load(token_file), store, options
    )
    svc = Service(running, store, FakeClock())
    try:
        _, executor = await online_executor(svc)
        bundle = await svc.connect()
        # A harness that stops reading: its client buffers one message, then TCP fills up.
        slow = await ws_connect(bundle["url"], max_size=None, max_queue=1, close_timeout=1)
        fast = await open_harness(svc)
        await slow.send(encode(resume_frame(S1)))
        await fast.send(encode(resume_frame(S2)))
        await recv_frame(executor)
        await recv_frame(executor)
        chunk = encode(data_frame(S1, 0, b"z" * (200 * 1024)))
        for _ in range(300):
            await executor.send(chunk)
            if running.state.relay.stats.slow_harnesses:
                break
        await wait_for(lambda: running.state.relay.stats.slow_harnesses == 1)
        frame = decode(await recv_frame(executor))
        assert body_kind(frame) == "reset" and frame.stream_id == S1
        # The other stream on the same executor socket still flows.
        reply = encode(data_frame(S2, 0, b"unaffected"))
        await executor.send(reply)
        assert await recv_frame(fast) == reply
        slow.transport.abort()
        await fast.close()
        await executor.close()
    finally:
        await svc.http.close()
        await running.stop()
        store.close()


async def test_outbox_bounds_and_drain() -> None:
    from codexexec.bounded_queue import BoundedQueue

    box = BoundedQueue(max_items=2, max_bytes=10)
    assert box.try_put(b"x" * 50)  # one oversized item always fits an empty outbox
    assert not box.try_put(b"y")
    assert await box.get() == b"x" * 50
    assert box.try_put(b"a" * 4) and box.try_put(b"b" * 4)
    assert not box.try_put(b"c")  # frame limit
    waiter = asyncio.ensure_future(box.put(b"c"))
    await asyncio.sleep(0.01)
    assert not waiter.done()  # backpressure: waits for room
    assert await box.get() == b"a" * 4
    assert await asyncio.wait_for(waiter, 1) is True
    box.close(drain=True)
    assert not box.try_put(b"d")
    assert await box.put(b"d") is False
    assert [await box.get(), await box.get(), await box.get()] == [b"b" * 4, b"c", None]


async def test_legacy_cleartext_profile(service: Service) -> None:
    status, registration = await service.post(
        "/cloud/environment/legacy-env/register", EXECUTOR, None
    )
    assert status == 200
    assert set(registration) == {
        "environment_id",
        "url",
        "security_profile",
        "executor_registration_id",
    }
    assert registration["security_profile"] == "legacy"
    executor = await open_ws(registration["url"])
    await wait_for(lambda: "legacy-env" in service.running.state.relay.executors)
    status, body = await service.post(
        "/cloud/environment/legacy-env/connect", HARNESS, {"harness_public_key": noise_key(7)}
    )
    assert (status, body["error"]["code"]) == (409, "security_profile_mismatch")
    status, bundle = await service.post("/cloud/environment/legacy-env/connect", HARNESS, None)
    assert status == 200
    assert set(bundle) == {
        "environment_id",
        "url",
        "security_profile",
        "executor_registration_id",
    }
    harness = await open_ws(bundle["url"])
    request = encode(data_frame(S1, 0, b'{"id":1,"method":"initialize","params":{}}'))
    await harness.send(request)
    assert await recv_frame(executor) == request
    await harness.close()
    await executor.close()


async def test_shutdown_closes_relay_sockets(tmp_path: Path) -> None:
    token_file = tmp_path / "tokens"
    token_file.write_text(TOKEN_FILE)
    store = Store(tmp_path / "db.sqlite3")
    running = await start_rendezvous(
        "http://127.0.0.1:0", TokenTable.load(token_file), store, RendezvousOptions()
    )
    async with (
        aiohttp.ClientSession() as http,
        http.post(
            f"{running.url}/cloud/environment/env-1/register",
            headers={"Authorization": f"Bearer {EXECUTOR}"},
        ) as response,
    ):
        registration = await response.json()
    executor = await open_ws(registration["url"])
    await wait_for(lambda: "env-1" in running.state.relay.executors)
    await asyncio.wait_for(running.stop(), 10)
    with pytest.raises(ConnectionClosed):
        await asyncio.wait_for(executor.recv(), 5)
    assert executor.close_code == 1001
    store.close()


# -- logs ------------------------------------------------------------------------------------


async def test_secrets_never_appear_in_logs(
    service: Service, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    registration, executor = await online_executor(service)
    key = noise_key(7)
    bundle = await service.connect("env-1", key)
    await service.validate(validation(registration, key, bundle))
    harness = await open_ws(bundle["url"])
    await harness.send(encode(data_frame(S1, 0, b"secret payload bytes")))
    await recv_frame(executor)
    for token in ALL_TOKENS:
        await service.post("/cloud/environment/env-1/register", token + "x", None)
    await service.post("/cloud/environment/env-1/register", "sk-proj-secretapikey", None)
    with pytest.raises(InvalidStatus):
        await open_ws(with_query(bundle["url"], sig="forged"))
    await harness.close()
    await executor.close()
    await asyncio.sleep(0.05)

    secrets = [
        *ALL_TOKENS,
        "sk-proj-secretapikey",
        bundle["harness_key_authorization"],
        parse_qs(urlsplit(bundle["url"]).query)["sig"][0],
        parse_qs(urlsplit(registration["url"]).query)["sig"][0],
        key["x25519_public_key"],
        "secret payload bytes",
    ]
    ours = [r for r in caplog.records if r.name.startswith("codexexec")]
    assert any("registry.register" in r.getMessage() for r in ours)
    assert any("relay.connected" in r.getMessage() for r in ours)
    for record in caplog.records:
        if record.name.startswith("websockets"):
            continue  # the test's own client logs its request lines
        text = record.getMessage()
        for secret in secrets:
            assert secret not in text, (record.name, text)


# -- units -----------------------------------------------------------------------------------


def test_token_file_parsing() -> None:
    table = TokenTable.parse(TOKEN_FILE)
    labels = {grant.label: grant for grant in table.grants}
    assert len(table.grants) == 4
    both = labels["token-file:3"]
    assert both.roles == {"executor", "harness"} and both.environments is None
    assert labels["token-file:4"].roles == {"executor"}
    assert labels["token-file:5"].roles == {"harness"}
    assert labels["token-file:6"].environments == frozenset({"env-1"})
    assert table.authenticate(f"Bearer {BOTH}", "executor", "anything").label == "token-file:3"
    assert table.authenticate(f"bearer  {HARNESS} ", "harness", "e").role == "harness"
    with pytest.raises(RequestRefused) as caught:
        table.authenticate(f"Bearer {HARNESS}", "executor", "e")
    assert caught.value.status == 403
    with pytest.raises(RequestRefused) as caught:
        table.authenticate(f"Bearer {ENV1_ONLY}", "harness", "env-2")
    assert caught.value.status == 403
    with pytest.raises(RequestRefused) as caught:
        table.authenticate(f"Bearer {BOTH[:-1]}", "harness", "env-1")
    assert (caught.value.status, caught.value.code) == (401, "unauthorized")


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("", "no tokens"),
        ("# only a comment\n", "no tokens"),
        ("sk-abcdef0123456789\n", "API key"),
        ("tok admin\n", "unknown role"),
        ("tok harness env-1 extra\n", "expected"),
        ("tok\ntok\n", "earlier line"),
        ("tok\u00e9\n", "printable ASCII"),
    ],
)
def test_bad_token_files(text: str, fragment: str) -> None:
    with pytest.raises(TokenFileError) as caught:
        TokenTable.parse(text)
    assert fragment in str(caught.value)
    assert "abcdef0123456789" not in str(caught.value)


def test_dev_token_file_is_private(tmp_path: Path) -> None:
    path, created = create_dev_token_file(tmp_path / "home")
    assert created
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    table = TokenTable.load(path)
    assert table.grants[0].roles == {"executor", "harness"}
    again, created_again = create_dev_token_file(tmp_path / "home")
    assert (again, created_again) == (path, False)


def test_signed_urls() -> None:
    clock = FakeClock()
    signer = RelayUrlSigner(b"s" * 32, clock=clock)
    url = signer.sign("ws://127.0.0.1:9/ignored", "harness", "env-1", "reg-1", 60)
    parts = urlsplit(url)
    assert (parts.scheme, parts.netloc, parts.path) == ("ws", "127.0.0.1:9", "/relay")
    ticket = signer.verify(parse_qsl(parts.query))
    assert (ticket.role, ticket.environment_id, ticket.registration_id) == (
        "harness",
        "env-1",
        "reg-1",
    )
    assert ticket.expires == int(clock.now + 60)
    pairs = parse_qsl(parts.query)
    with pytest.raises(SignatureError) as caught:
        signer.verify([*pairs, ("role", "environment")])
    assert caught.value.status == 400
    # Field boundaries are part of the MAC: moving a character between fields breaks it.
    shifted = [
        (k, {"environment_id": "env-1r", "registration_id": "eg-1"}.get(k, v)) for k, v in pairs
    ]
    with pytest.raises(SignatureError) as caught:
        signer.verify(shifted)
    assert caught.value.status == 403
    clock.now += 61
    with pytest.raises(SignatureError) as caught:
        signer.verify(pairs)
    assert (caught.value.status, caught.value.code) == (401, "relay_url_expired")


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("http://127.0.0.1:0", ("127.0.0.1", 0)),
        ("http://0.0.0.0:8080/", ("0.0.0.0", 8080)),
        ("http://[::1]:9000", ("::1", 9000)),
        ("http://localhost:1", ("127.0.0.1", 1)),
    ],
)
def test_listen_urls(url: str, expected: tuple[str, int]) -> None:
    assert parse_listen_url(url) == expected


@pytest.mark.parametrize(
    "url",
    [
        "ws://127.0.0.1:1",
        "http://127.0.0.1",
        "http://example.com:80",
        "http://1.2.3.4:99999",
        "http://127.0.0.1:1/path",
        "127.0.0.1:80",
    ],
)
def test_bad_listen_urls(url: str) -> None:
    with pytest.raises(ValueError):
        parse_listen_url(url)


# -- run_rendezvous --------------------------------------------------------------------------


RUN_DEFAULT_RENDEZVOUS = (
    "from codexexec.rendezvous import run_rendezvous;"
    "run_rendezvous('http://127.0.0.1:0', None, None)"
)


@contextlib.contextmanager
def running_rendezvous(
    argv: list[str], env: dict[str, str], stop: int = signal.SIGTERM
) -> Iterator[tuple[str, subprocess.Popen[str], list[str]]]:
    """A rendezvous process: (its URL, the process, [its stdout after the URL, its stderr]
    once stopped with ``stop`` at the end of the block)."""
    proc = subprocess.Popen(
        argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, text=True
    )
    ended: list[str] = []
    try:
        assert proc.stdout is not None
        url = proc.stdout.readline().strip()
        yield url, proc, ended
        proc.send_signal(stop)
        ended.extend(proc.communicate(timeout=15))
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()


def test_run_rendezvous_prints_url_and_dev_token_location(tmp_path: Path) -> None:
    home = tmp_path / "state"
    env = dict(os.environ, CODEXEXEC_HOME=str(home))
    with running_rendezvous([sys.executable, "-c", RUN_DEFAULT_RENDEZVOUS], env) as (
        first,
        proc,
        ended,
    ):
        assert first.startswith("http://127.0.0.1:") and int(first.rsplit(":", 1)[1]) > 0
        with urllib.request.urlopen(first + "/healthz", timeout=5) as response:
            assert response.status == 200
            assert json.loads(response.read())["status"] == "ok"
        token_path = home / "rendezvous-tokens"
        assert stat.S_IMODE(token_path.stat().st_mode) == 0o600
        token = next(
            line for line in token_path.read_text().splitlines() if not line.startswith("#")
        )
        request = urllib.request.Request(
            first + "/cloud/environment/env-1/register",
            data=b"",
            method="POST",
            headers={"Authorization": f"Bearer {token}"},
        )
        with urllib.request.urlopen(request, timeout=5) as response:
            assert json.loads(response.read())["security_profile"] == "legacy"
        assert (home / "rendezvous.sqlite3").exists()
    out, err = ended
    assert proc.returncode == 0, err
    assert out.strip() == ""  # nothing after the URL
    assert str(token_path) in err
    assert token not in err


def test_run_rendezvous_reuses_an_existing_dev_token(tmp_path: Path) -> None:
    home = tmp_path / "state"
    create_dev_token_file(home)
    env = dict(os.environ, CODEXEXEC_HOME=str(home))
    argv = [sys.executable, "-c", RUN_DEFAULT_RENDEZVOUS]
    with running_rendezvous(argv, env, signal.SIGINT) as (url, proc, ended):
        assert url.startswith("http://127.0.0.1:")
    assert proc.returncode == 0, ended[1]
    assert "rendezvous-tokens" not in ended[1]


def test_a_missing_token_file_is_created_and_a_readable_one_explained(tmp_path: Path) -> None:
    """`rendezvous --token-file tokens.txt` (the README's first command) works on a fresh
    machine: the file is made 0600 with a new token, whose value is never printed; a file
    other users can read is warned about in words."""
    from tests.servers import codexexec_command

    def start(token_file: Path) -> tuple[str, str]:
        proc = subprocess.Popen(
            codexexec_command("rendezvous", "--token-file", str(token_file)),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=dict(os.environ, CODEXEXEC_HOME=str(tmp_path / "state")),
        )
        assert proc.stdout is not None
        url = proc.stdout.readline().strip()
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=15)
        return url, err

    fresh = tmp_path / "tokens.txt"
    url, err = start(fresh)
    assert url.startswith("http://127.0.0.1:")
    assert stat.S_IMODE(fresh.stat().st_mode) == 0o600
    token = next(line for line in fresh.read_text().splitlines() if not line.startswith("#"))
    assert f"{fresh} did not exist; created it" in err and token not in err
    fresh.chmod(0o644)
    _, err = start(fresh)
    assert f"other users can read {fresh}" in err and f"chmod 600 {fresh}" in err
    assert "token_file_readable" not in err
