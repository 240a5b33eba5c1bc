"""Over a hundred kinds of malformed input, each sent on a connection of its own while a
well-behaved client streams output on another: every one is answered with an error (or
ends only its own connection), the well-behaved client loses nothing, and no traceback
reaches the server's stderr."""

from __future__ import annotations

import asyncio
import json
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from websockets.exceptions import ConnectionClosed

from tests.servers import RunningServer, start_server
from tests.wire import Wire, decoded_output

ENVELOPES: list[tuple[str, str | bytes]] = [
    ("truncated-object", "{"),
    ("truncated-array", "[1,2"),
    ("stray-bracket", "]"),
    ("truncated-id", '{"id":'),
    ("nul", "\u0000"),
    ("null", "null"),
    ("true", "true"),
    ("number", "1"),
    ("string", '"str"'),
    ("empty-batch", "[]"),
    ("batch-of-numbers", "[1, 2, 3]"),
    ("batch-of-garbage", '[{"id":1}, 5, "x", null]'),
    ("method-number", '{"method":5}'),
    ("method-null", '{"id":1,"method":null}'),
    ("method-empty", '{"id":1,"method":""}'),
    ("method-huge", '{"id":1,"method":"' + "m" * 100_000 + '"}'),
    ("id-object", '{"id":{},"method":"environment/status"}'),
    ("id-array", '{"id":[1],"method":"environment/status"}'),
    ("id-float", '{"id":1.5,"method":"environment/status"}'),
    ("id-huge", '{"id":123456789012345678901234567890,"method":"environment/status"}'),
    ("id-overflow-float", '{"id":1e400,"method":"environment/status"}'),
    ("params-array", '{"id":1,"method":"environment/status","params":[1,2]}'),
    ("jsonrpc-1.0", '{"id":1,"jsonrpc":"1.0","method":"environment/status"}'),
    ("duplicate-keys", '{"id":1,"id":2,"method":"environment/status","method":"x"}'),
    ("lone-surrogate", '{"id":1,"method":"\\ud800"}'),
    ("deep-nesting", '{"id":1,"method":"x","params":' + "[" * 5000 + "]" * 5000 + "}"),
    ("many-values", '{"id":1,"method":"x","params":[' + ",".join(["0"] * 300_000) + "]}"),
    ("invalid-utf8-binary", b"\xff\xfe\xfd"),
    ("binary-json", b'{"id":1,"method":"environment/status"}'),
    ("bom", "\ufeff" + '{"id":1,"method":"environment/status"}'),
    ("control-chars", '{"id":1,"method":"environment/status\u0001"}'),
    ("unknown-method", '{"id":1,"method":"no/such/method"}'),
    ("second-initialize", '{"id":1,"method":"initialize","params":{"clientName":"x"}}'),
]

METHODS = [
    "process/start",
    "process/read",
    "process/write",
    "process/signal",
    "process/terminate",
    "fs/readFile",
    "fs/writeFile",
    "fs/readDirectory",
    "fs/getMetadata",
    "fs/createDirectory",
    "fs/remove",
    "fs/copy",
    "http/request",
]
HUGE = "a" * 200_000
PARAMS: list[tuple[str, Any]] = [
    ("null", None),
    ("number", 7),
    ("string", "x"),
    ("array", []),
    ("empty", {}),
    ("nulls", {"processId": None, "path": None, "argv": None, "url": None}),
    (
        "nul-bytes",
        {
            "processId": "p\u0000",
            "path": "file:///tmp/\u0000",
            "argv": ["sh\u0000"],
            "cwd": "file:///tmp",
            "env": {"A": "\u0000"},
            "tty": False,
            "url": "http://127.0.0.1:\u0000/",
            "method": "GET",
        },
    ),
    (
        "huge-strings",
        {
            "processId": HUGE,
            "path": "file:///" + HUGE,
            "argv": [HUGE],
            "cwd": "file:///tmp",
            "env": {},
            "tty": False,
            "chunk": HUGE,
            "writeId": HUGE,
        },
    ),
    (
        "wrong-types",
        {
            "processId": 5,
            "path": ["file:///tmp"],
            "argv": "true",
            "cwd": 1,
            "env": [],
            "tty": "yes",
            "afterSeq": -1,
            "maxBytes": 1.5,
            "chunk": 3,
            "url": {},
        },
    ),
]
NETWORK_PROXIES: list[tuple[str, Any]] = [
    ("nul-domain", {"allowedDomains": ["a\u0000b.example"]}),
    ("number-domain", {"allowedDomains": [5]}),
    ("string-not-list", {"allowedDomains": "a.example"}),
    ("huge-domain", {"deniedDomains": [HUGE]}),
    ("unknown-mode", {"mode": "weird"}),
    ("not-an-object", "everything"),
]
START = {"processId": "n", "argv": ["true"], "cwd": "file:///tmp", "env": {}, "tty": False}
KINDS: list[tuple[str, str | bytes]] = (
    ENVELOPES
    + [
        (
            f"networkProxy-{name}",
            json.dumps(
                {"id": 1, "method": "process/start", "params": {**START, "networkProxy": np}}
            ),
        )
        for name, np in NETWORK_PROXIES
    ]
    + [
        (f"{method}-{name}", json.dumps({"id": 1, "method": method, "params": params}))
        for method in METHODS
        for name, params in PARAMS
    ]
)


@pytest.fixture(scope="module")
def server_and_log() -> Iterator[tuple[RunningServer, Path]]:
    log = Path(tempfile.mkstemp(prefix="cx-malformed-", suffix=".log")[1])
    with log.open("wb") as stderr, start_server("codexexec", stderr=stderr) as server:
        yield server, log
    log.unlink()


def test_there_are_over_a_hundred_kinds() -> None:
    assert len(KINDS) >= 100
    assert len({name for name, _ in KINDS}) == len(KINDS)


async def _answered(url: str, raw: str | bytes) -> str:
    """What the server did with ``raw`` on a fresh, initialized connection."""
    wire = await Wire.open(url)
    await wire.initialize()
    await wire.ws.send(raw)
    try:
        reply = await wire.recv(timeout=3)
    except ConnectionClosed:
        return "closed"
    except TimeoutError:
        return "no answer"
    finally:
        await wire.close()
    if isinstance(reply, dict) and "error" in reply:
        return f"error {reply['error']['code']}"
    return "answered"


async def test_malformed_input_harms_nobody_else(
    server_and_log: tuple[RunningServer, Path],
) -> None:
    server, log = server_and_log
    bystander = await Wire.open(server.url)
    await bystander.initialize()
    process_id = f"steady-{uuid.uuid4().hex[:6]}"
    count = len(KINDS) * 4
    await bystander.start(
        process_id, ["sh", "-c", f"i=0; while [ $i -lt {count} ]; do i=$((i+1)); echo $i; done"]
    )
    outcomes = {}
    for name, raw in KINDS:
        outcomes[name] = await _answered(server.url, raw)
        # The well-behaved client is answered between every two attacks.
        assert await bystander.result("environment/status", {}) == {"status": "ready"}
    events = await bystander.events_until_closed(process_id, timeout=60)
    lines = decoded_output(events).decode().split()
    assert lines == [str(i) for i in range(1, count + 1)]
    await bystander.close()
    assert server.process.poll() is None
    # Every kind was answered (an error, or a result where Codex accepts it too: a batch's
    # errors, an id beyond 64 bits, `"jsonrpc":"1.0"`, a binary frame) or ended its own
    # connection; none was left hanging.
    assert not [n for n, o in outcomes.items() if o == "no answer"], outcomes
    assert sum(o.startswith("error") for o in outcomes.values()) >= 100, outcomes
    await asyncio.sleep(0.2)
    assert b"Traceback" not in log.read_bytes()
