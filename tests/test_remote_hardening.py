"""Hardening of the registry client found in review: whole responses however they arrive,
and no signed relay URL in any error."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from codexexec.remote.auth.bearer import StaticBearer
from codexexec.remote.registry import RegistryError, register_executor

TOKEN = "tok-hardening-0123456789"
SIGNED_QUERY = "sig=SIGNED-QUERY-SECRET-0123456789"


async def serve_in_pieces(body: bytes, pieces: int) -> AsyncIterator[str]:
    """A registry that sends its JSON answer as ``pieces`` chunks, a pause between each."""

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(
            b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
            b"Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
        )
        step = -(-len(body) // pieces)
        for start in range(0, len(body), step):
            part = body[start : start + step]
            writer.write(f"{len(part):x}\r\n".encode() + part + b"\r\n")
            await writer.drain()
            await asyncio.sleep(0.05)
        writer.write(b"0\r\n\r\n")
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(answer, "127.0.0.1", 0)
    try:
        yield f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"
    finally:
        server.close()


async def test_a_registry_answer_that_arrives_in_pieces_is_read_whole() -> None:
    bundle = {
        "environment_id": "devbox",
        "url": "ws://127.0.0.1:9/relay",
        "security_profile": "legacy",
        "executor_registration_id": "reg-" + "x" * 2000,
    }
    async for url in serve_in_pieces(json.dumps(bundle).encode(), pieces=4):
        answer = await register_executor(url, "devbox", StaticBearer(TOKEN, "test"))
        assert answer.executor_registration_id == bundle["executor_registration_id"]


@pytest.mark.parametrize("scheme", ["https", "http"])
async def test_a_relay_url_of_the_wrong_scheme_is_refused_without_quoting_it(scheme: str) -> None:
    from codexexec.transport.relay import open_relay_socket

    with pytest.raises(RegistryError) as caught:
        await open_relay_socket(f"{scheme}://127.0.0.1:9/relay?{SIGNED_QUERY}", "devbox")
    assert "SIGNED-QUERY-SECRET" not in str(caught.value)
    assert caught.value.__cause__ is None and caught.value.__suppress_context__
    assert str(caught.value) == "cannot open the relay for `devbox`: InvalidURI"


async def test_an_executor_given_an_unusable_relay_url_fails_in_one_line_without_it() -> None:
    from aiohttp import web

    from codexexec.transport.relay_executor import ExecutorRelay
    from tests.auth_helpers import Stub

    bundle = {
        "environment_id": "devbox",
        "url": f"https://127.0.0.1:9/relay?{SIGNED_QUERY}",
        "security_profile": "legacy",
        "executor_registration_id": "reg-1",
    }

    async def never_served(_: object) -> None:
        raise AssertionError("no stream can open")

    async with Stub(lambda _: web.json_response(bundle)) as stub:
        relay = ExecutorRelay(stub.url, "devbox", StaticBearer(TOKEN, "test"), never_served)
        with pytest.raises(RegistryError) as caught:
            await asyncio.wait_for(relay.run(), 10)
    assert str(caught.value) == (
        "environment registry returned a relay URL that is not a ws:// or wss:// URL"
    )
    assert caught.value.__cause__ is None and caught.value.__suppress_context__


async def test_a_long_credential_echoed_past_the_message_cap_is_not_quoted_in_part() -> None:
    from tests.auth_helpers import Stub, error

    long_token = "tok-" + "S" * 3000  # ChatGPT access tokens are JWTs of this length
    echo = error(401, "unauthorized", "x" * 3000 + f" you sent {long_token}")
    async with Stub(lambda _: echo) as stub:
        with pytest.raises(RegistryError) as caught:
            await register_executor(stub.url, "devbox", StaticBearer(long_token, "test"))
    assert "SSSSSSSS" not in str(caught.value)
    assert str(caught.value).endswith("(401 Unauthorized): response body omitted")


async def test_a_refresh_granting_a_token_unfit_for_a_header_is_refused_and_not_saved(
    tmp_path: Path,
) -> None:
    import time

    from aiohttp import web

    from codexexec.remote.auth.base import AuthError
    from codexexec.remote.auth.chatgpt import ChatGPTAuth
    from codexexec.remote.auth.storage import FileStore
    from tests.auth_helpers import Stub, access_token, chatgpt_login, codex_home

    login = chatgpt_login(access_token(time.time() - 60, "old"), refresh="rt-OLD-secret")
    home = codex_home(tmp_path, login)
    before = (home / "auth.json").read_text()
    granted = {"access_token": "broken\r\nInjected: yes", "refresh_token": "rt-NEW-secret"}
    async with Stub(lambda _: web.json_response(granted)) as stub:
        auth = ChatGPTAuth(
            login,
            FileStore(home, lambda _: None),
            home,
            {"CODEX_REFRESH_TOKEN_URL_OVERRIDE": f"{stub.url}/oauth/token"},
        )
        with pytest.raises(AuthError) as caught:
            await auth.headers()
    assert str(caught.value) == "the token endpoint's refresh answer holds a malformed access token"
    assert (home / "auth.json").read_text() == before
