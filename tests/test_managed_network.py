"""Managed network under the real sandbox: only the prepared proxy ports are reachable."""

from __future__ import annotations

import asyncio
import shutil
import socket
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from tests.origins import http_origin
from tests.servers import RunningServer
from tests.wire import Wire, decoded_output

pytestmark = pytest.mark.skipif(shutil.which("bwrap") is None, reason="bubblewrap not installed")


@pytest.fixture
def origin() -> Iterator[int]:
    with http_origin(b"hello from the origin\n") as port:
        yield port


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


async def run(
    wire: Wire, argv: list[str], env: dict[str, str], managed: Any
) -> tuple[bytes, dict[str, Any]]:
    process_id = f"mn-{uuid.uuid4().hex[:8]}"
    await wire.result(
        "process/start",
        {
            "processId": process_id,
            "argv": argv,
            "cwd": "file:///tmp",
            "env": {"PATH": "/usr/bin:/bin", **env},
            "tty": False,
            "enforceManagedNetwork": True,
            "managedNetwork": managed,
        },
    )
    events = await wire.events_until_closed(process_id)
    return decoded_output(events), next(
        e["params"] for e in events if e["method"] == "process/exited"
    )


async def test_only_prepared_ports_are_reachable(
    codexexec_server: RunningServer, origin: int
) -> None:
    # The "proxy" here is a plain origin on the prepared port: this checks the bridge and
    # the namespace, not proxy semantics (tests/test_network_proxy.py covers those).
    wire = await Wire.open(codexexec_server.url)
    await wire.initialize()
    env = {"HTTP_PROXY": f"http://127.0.0.1:{origin}"}
    managed = {"loopbackPorts": [origin], "allowLocalBinding": False}
    output, exited = await run(
        wire, ["curl", "-sS", "--noproxy", "*", f"http://127.0.0.1:{origin}/"], env, managed
    )
    assert output == b"hello from the origin\n" and exited["exitCode"] == 0
    other = free_port()
    output, exited = await run(
        wire, ["curl", "-sS", "--noproxy", "*", f"http://127.0.0.1:{other}/"], env, managed
    )
    assert exited["exitCode"] != 0 and exited["sandboxDenied"] is True
    assert exited["sandboxDenial"]["reason"] in ("network_blocked", "permission_denied")
    probe = "import socket; socket.socket(socket.AF_INET, socket.SOCK_DGRAM).sendto(b'x', ('1.1.1.1', 53))"
    output, exited = await run(wire, ["python3", "-c", probe], env, managed)
    assert exited["exitCode"] != 0 and b"Network is unreachable" in output  # UDP cannot leave
    await wire.close()


async def test_env_and_context_from_different_snapshots_fail_closed(
    codexexec_server: RunningServer,
) -> None:
    wire = await Wire.open(codexexec_server.url)
    await wire.initialize()
    reply = await wire.request(
        "process/start",
        {
            "processId": "drift",
            "argv": ["true"],
            "cwd": "file:///tmp",
            "tty": False,
            "env": {"HTTPS_PROXY": "http://127.0.0.1:43123"},
            "enforceManagedNetwork": True,
            "managedNetwork": {"loopbackPorts": [43117], "allowLocalBinding": False},
        },
    )
    assert reply["error"]["code"] == -32602
    assert "prepared from different snapshots" in reply["error"]["message"]
    missing = await wire.request(
        "process/start",
        {
            "processId": "nocontext",
            "argv": ["true"],
            "cwd": "file:///tmp",
            "tty": False,
            "env": {},
            "enforceManagedNetwork": True,
        },
    )
    assert missing["error"]["code"] == -32602
    assert "sandbox intent cannot be enforced on this executor" in missing["error"]["message"]
    await wire.close()


async def test_bridge_carries_bulk_data(codexexec_server: RunningServer) -> None:
    payload_size = 8 * 1024 * 1024

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"x" * payload_size)
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    wire = await Wire.open(codexexec_server.url)
    await wire.initialize()
    reader = (
        f"import socket; s=socket.create_connection(('127.0.0.1', {port})); n=0\n"
        "while (d := s.recv(1 << 16)): n += len(d)\nprint(n)"
    )
    output, exited = await run(
        wire,
        ["python3", "-c", reader],
        {"ALL_PROXY": f"socks5h://127.0.0.1:{port}"},
        {"loopbackPorts": [port]},
    )
    assert exited["exitCode"] == 0 and output.strip() == str(payload_size).encode()
    server.close()
    await wire.close()


async def test_two_starts_of_one_id_at_once_start_one_process() -> None:
    """With requests served concurrently, a second start of the same id that arrives while
    the first prepares its network is refused, never registered over the first."""
    from tests.servers import start_server

    params = {
        "processId": "same-id",
        "argv": ["sleep", "2"],
        "cwd": "file:///tmp",
        "env": {"PATH": "/usr/bin:/bin"},
        "tty": False,
        "enforceManagedNetwork": True,
        "managedNetwork": {"loopbackPorts": [free_port()], "allowLocalBinding": False},
    }
    with start_server("codexexec", extra_args=("--concurrent-requests", "4")) as server:
        wire = await Wire.open(server.url)
        await wire.initialize()
        await wire.send({"id": 101, "method": "process/start", "params": params})
        await wire.send({"id": 102, "method": "process/start", "params": params})
        replies = [await wire.response(101), await wire.response(102)]
        await wire.result("process/terminate", {"processId": "same-id"})
        await wire.close()
    assert sum("result" in reply for reply in replies) == 1, replies
    (refused,) = [reply["error"] for reply in replies if "error" in reply]
    assert refused["message"] == "process same-id already exists"
