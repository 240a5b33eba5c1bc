"""The registry client's HTTP/1.1 (remote/http.py) against a real loopback server that
answers as scripted: what it sends, every framing it must read, connection reuse, and a
clear reason for each way an answer can fail."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

import pytest

from codexexec.remote.errors import RemoteError
from codexexec.remote.http import MAX_RESPONSE_BYTES, HttpClient, Unreachable, post_json

Answer = Callable[[int], bytes | None]  # request number -> bytes to send (None: hang up)


@dataclass
class Server:
    answer: Answer
    port: int = 0
    connections: int = 0
    requests: list[bytes] = field(default_factory=list)
    # Close each connection after its first answer, without saying so.
    one_per_connection: bool = False


async def _read_request(reader: asyncio.StreamReader) -> bytes | None:
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except asyncio.IncompleteReadError:
        return None
    length = next(
        int(line.split(b":", 1)[1])
        for line in head.split(b"\r\n")
        if line.lower().startswith(b"content-length:")
    )
    return head + await reader.readexactly(length)


@pytest.fixture
async def server() -> AsyncIterator[Server]:
    state = Server(answer=lambda n: b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}")

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        state.connections += 1
        try:
            while (request := await _read_request(reader)) is not None:
                state.requests.append(request)
                reply = state.answer(len(state.requests))
                if reply is None:
                    break
                writer.write(reply)
                await writer.drain()
                if state.one_per_connection:
                    break
        finally:
            writer.close()

    listener = await asyncio.start_server(handle, "127.0.0.1", 0)
    state.port = listener.sockets[0].getsockname()[1]
    async with listener:
        yield state


def url(server: Server) -> str:
    return f"http://127.0.0.1:{server.port}/cloud/environment/env-1/connect?x=1"


async def test_it_sends_what_codex_sends_and_reads_a_sized_answer(server: Server) -> None:
    server.answer = lambda n: (
        b"HTTP/1.1 201 Created\r\nContent-Type: application/json\r\nContent-Length: 11\r\n\r\n"
        b'{"ok":true}'
    )
    reply = await post_json(url(server), {"a": "é", "b": [1]}, {"Authorization": "Bearer t"}, 5)
    assert (reply.status, reply.status_line, reply.text) == (201, "201 Created", '{"ok":true}')
    assert reply.content_type == "application/json"
    head, body = server.requests[0].split(b"\r\n\r\n", 1)
    lines = head.decode().split("\r\n")
    assert lines[0] == "POST /cloud/environment/env-1/connect?x=1 HTTP/1.1"
    fields = dict(line.split(": ", 1) for line in lines[1:])
    assert fields == {
        "Host": f"127.0.0.1:{server.port}",
        "Content-Type": "application/json",
        "Authorization": "Bearer t",
        "Accept": "*/*",
        "Content-Length": str(len(body)),
    }
    assert (
        body == json.dumps({"a": "é", "b": [1]}, separators=(",", ":"), ensure_ascii=False).encode()
    )


@pytest.mark.parametrize(
    "answer",
    [
        b'HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n4\r\n{"v"\r\n3;x=y\r\n:1}\r\n0\r\n\r\n',
        b'HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 7\r\n\r\n{"v":1}',
        b'HTTP/1.0 200 OK\r\n\r\n{"v":1}',  # as long as the connection lasts
    ],
    ids=["chunked", "interim-100", "close-delimited"],
)
async def test_every_framing_is_read(server: Server, answer: bytes) -> None:
    server.answer = lambda n: answer
    server.one_per_connection = True
    reply = await post_json(url(server), {}, {}, 5)
    assert (reply.status, json.loads(reply.text)) == (200, {"v": 1})


async def test_a_kept_client_reuses_its_connection_and_replaces_a_stale_one(
    server: Server,
) -> None:
    async with HttpClient() as client:
        for _ in range(3):
            assert (await client.post(url(server), b"{}", {}, 5)).status == 200
        assert server.connections == 1
        # The server hangs up on the next request on that connection, unanswered: the
        # client sends it again, once, on a new connection.
        ok = server.answer
        server.answer = lambda n: None if n == 4 else ok(n)
        assert (await client.post(url(server), b"{}", {}, 5)).status == 200
        assert (server.connections, len(server.requests)) == (2, 5)


async def test_redirects_are_not_followed(server: Server) -> None:
    server.answer = lambda n: (
        b"HTTP/1.1 307 Temporary Redirect\r\nLocation: http://elsewhere/\r\nContent-Length: 0\r\n\r\n"
    )
    reply = await post_json(url(server), {}, {"Authorization": "Bearer secret"}, 5)
    assert (reply.status, reply.location) == (307, "http://elsewhere/")
    assert len(server.requests) == 1


async def test_an_oversized_answer_is_bounded(server: Server) -> None:
    size = MAX_RESPONSE_BYTES * 3
    server.answer = lambda n: b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % size + b"x" * size
    async with HttpClient() as client:
        reply = await client.post(url(server), b"{}", {}, 10)
        assert len(reply.text) == MAX_RESPONSE_BYTES
        server.answer = lambda n: b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
        assert (await client.post(url(server), b"{}", {}, 5)).text == "ok"
    assert server.connections == 2  # the half-read connection was not kept


@pytest.mark.parametrize(
    ("answer", "reason"),
    [
        (lambda n: None, "the server closed the connection without answering"),
        (
            lambda n: b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nshort",
            "the answer was cut short",
        ),
        (lambda n: b"HTTP/1.1 200 OK\r\nContent-", "the answer was cut short"),
        (lambda n: b"SSH-2.0-OpenSSH\r\n\r\n", "the answer was not valid HTTP/1.1"),
        (
            lambda n: b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
            "the answer was not valid HTTP/1.1",
        ),
    ],
    ids=["hang-up", "short-body", "short-head", "not-http", "bad-chunk"],
)
async def test_a_broken_answer_says_what_broke(server: Server, answer: Answer, reason: str) -> None:
    server.answer = answer
    server.one_per_connection = True
    with pytest.raises(Unreachable) as failed:
        await post_json(url(server), {}, {}, 5)
    assert str(failed.value) == reason


async def test_no_answer_in_time_and_nobody_listening(server: Server) -> None:
    never = asyncio.Event()

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await never.wait()

    quiet = await asyncio.start_server(silent, "127.0.0.1", 0)
    port = quiet.sockets[0].getsockname()[1]
    async with quiet:
        with pytest.raises(Unreachable, match=r"^no answer in time$"):
            await post_json(f"http://127.0.0.1:{port}/", {}, {}, 0.3)
        never.set()
    with pytest.raises(Unreachable, match=r"^connection refused$"):
        await post_json(f"http://127.0.0.1:{port}/", {}, {}, 5)


async def test_a_header_value_cannot_smuggle_a_line(server: Server) -> None:
    with pytest.raises(RemoteError, match="control character") as refused:
        await post_json(url(server), {}, {"Authorization": "Bearer t\r\nX-Evil: 1"}, 5)
    assert server.requests == [] and "Bearer" not in str(refused.value)


async def test_a_post_whose_answer_began_is_never_sent_again(server: Server) -> None:
    """Resending is only for a kept connection that ended before any of its answer: once
    a byte came, the server may have acted on the request."""
    async with HttpClient() as client:
        assert (await client.post(url(server), b"{}", {}, 5)).status == 200
        server.answer = lambda n: b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\npartial"
        server.one_per_connection = True  # then the connection ends, mid-body
        with pytest.raises(Unreachable, match="cut short"):
            await client.post(url(server), b"{}", {}, 5)
    assert len(server.requests) == 2


async def test_bytes_left_on_a_kept_connection_are_never_read_as_the_next_answer(
    server: Server,
) -> None:
    ok = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
    stray = b"HTTP/1.1 408 Request Timeout\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    server.answer = lambda n: ok + stray if n == 1 else ok
    async with HttpClient() as client:
        assert (await client.post(url(server), b"{}", {}, 5)).status == 200
        await asyncio.sleep(0.1)  # the stray answer arrives while the connection is idle
        assert (await client.post(url(server), b"{}", {}, 5)).status == 200
    assert server.connections == 2 and len(server.requests) == 2


async def test_an_http_1_0_answer_does_not_keep_its_connection(server: Server) -> None:
    server.answer = lambda n: b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nok"
    async with HttpClient() as client:
        for _ in range(2):
            assert (await client.post(url(server), b"{}", {}, 5)).text == "ok"
    assert server.connections == 2


async def test_what_cannot_be_sent_or_shown_is_a_clear_failure(server: Server) -> None:
    with pytest.raises(Unreachable, match="cannot carry"):
        await post_json(url(server), {}, {"Authorization": "Bearer \u2603"}, 5)
    with pytest.raises(Unreachable, match=r"^the host name is not valid$"):
        await post_json("http://a..b/x", {}, {}, 5)
    # A reason phrase with a terminal escape in it is refused, not printed to a terminal.
    server.answer = lambda n: b"HTTP/1.1 401 \x1b]0;pwned\x07\r\nContent-Length: 0\r\n\r\n"
    with pytest.raises(Unreachable, match=r"not valid HTTP/1\.1"):
        await post_json(url(server), {}, {}, 5)
    # A UTF-8 reason is valid HTTP and keeps its status; a C1 control in it (0x9b starts an
    # escape on some terminals) is dropped from what is shown.
    for reason, shown in (("Не найдено", "404 Не найдено"), ("A\u009b2J", "404 A2J")):
        server.answer = lambda n, r=reason: (
            b"HTTP/1.1 404 " + r.encode() + b"\r\nContent-Length: 0\r\n\r\n"
        )
        assert (await post_json(url(server), {}, {}, 5)).status_line == shown
    requests = len(server.requests)
    for bad, why in (
        ("http://[::1/x", "not an http"),
        ("http://[zz]/x", "not an http"),
        (f"http://user:pw@127.0.0.1:{server.port}/x", "user name or password"),
        (f"http://127.0.0.1:{server.port}/a b", "path holds a character"),
        (f"http://127.0.0.1:{server.port}/caf\u00e9", "path holds a character"),
    ):
        with pytest.raises(Unreachable, match=why) as refused:
            await post_json(bad, {}, {}, 5)
        assert "pw" not in str(refused.value)
    assert len(server.requests) == requests  # nothing was sent
