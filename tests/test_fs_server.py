"""codexexec's `fs/*` where it deliberately differs from Codex 0.169.0 or goes past it:
never blocking on a FIFO, never truncating a file copied onto itself, bounded whole-file
reads, watch notifications, the Landlock backend, and handles released with the
connection. (The shared behaviour lives in test_behaviour_fs.py.)
"""

from __future__ import annotations

import asyncio
import base64
import os
import shutil
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from codexexec.protocol.limits import FS_MAX_WHOLE_READ_BYTES
from codexexec.sandbox.linux.landlock import landlock_abi
from tests.servers import RunningServer, start_server
from tests.test_behaviour_fs import read_only, uri, workspace_write
from tests.wire import Wire

pytestmark = pytest.mark.asyncio(loop_scope="function")


@pytest.fixture
def tree() -> Iterator[Path]:
    root = Path("/var/tmp") / f"cx-fss-{uuid.uuid4().hex[:8]}"
    root.mkdir()
    os.mkfifo(root / "fifo")
    (root / "data").write_bytes(b"precious")
    yield root
    shutil.rmtree(root, ignore_errors=True)


async def connected(server: RunningServer) -> Wire:
    wire = await Wire.open(server.url)
    await wire.initialize()
    return wire


async def test_writing_to_a_fifo_is_refused_not_waited_on(
    codexexec_server: RunningServer, tree: Path
) -> None:
    # Codex 0.169.0 blocks the whole connection here until a reader appears.
    wire = await connected(codexexec_server)
    fifo = str(tree / "fifo")
    started = time.monotonic()
    reply = await wire.request("fs/writeFile", {"path": uri(fifo), "dataBase64": "aGk="})
    assert reply["error"] == {"code": -32600, "message": f"path `{fifo}` is not a file"}
    copy = {"sourcePath": uri(tree / "data"), "destinationPath": uri(fifo), "recursive": False}
    reply = await wire.request("fs/copy", copy)
    assert reply["error"] == {"code": -32600, "message": f"path `{fifo}` is not a file"}
    assert time.monotonic() - started < 2
    await wire.close()


async def test_copying_a_file_onto_itself_keeps_it(
    codexexec_server: RunningServer, tree: Path
) -> None:
    # Codex 0.169.0 answers {} too, but leaves the file empty.
    wire = await connected(codexexec_server)
    same = {"sourcePath": uri(tree / "data"), "destinationPath": uri(tree / "data")}
    assert await wire.result("fs/copy", {**same, "recursive": False}) == {}
    assert (tree / "data").read_bytes() == b"precious"
    await wire.close()


async def test_whole_file_reads_are_bounded(codexexec_server: RunningServer, tree: Path) -> None:
    huge = tree / "huge"
    huge.touch()
    os.truncate(huge, FS_MAX_WHOLE_READ_BYTES + 1)  # sparse: no disk used
    wire = await connected(codexexec_server)
    reply = await wire.request("fs/readFile", {"path": uri(huge)})
    assert reply["error"] == {
        "code": -32600,
        "message": f"file is too large to read: limit is {FS_MAX_WHOLE_READ_BYTES} bytes",
    }
    # Streaming is the way to read it.
    await wire.result("fs/open", {"handleId": "h", "path": uri(huge)})
    block = await wire.result(
        "fs/readBlock", {"handleId": "h", "offset": FS_MAX_WHOLE_READ_BYTES, "len": 4}
    )
    assert base64.b64decode(block["chunk"]) == b"\0" and block["eof"] is True
    await wire.close()


async def test_a_watch_fires_once_when_a_missing_path_appears(
    codexexec_server: RunningServer, tree: Path
) -> None:
    wire = await connected(codexexec_server)
    params = {"watchId": 7, "missing": [uri(tree / "AGENTS.md")], "present": uri(tree)}
    assert await wire.result("fs/watchMissing", params) == {"watching": True}
    (tree / "AGENTS.md").write_text("# agents")
    note = await wire.notification(lambda m: m["method"] == "fs/missingChanged", timeout=5)
    assert note == {"method": "fs/missingChanged", "params": {"watchId": 7}}
    # Once: the watch is over after firing.
    with pytest.raises(asyncio.TimeoutError):
        await wire.notification(lambda m: m["method"] == "fs/missingChanged", timeout=2.5)
    await wire.close()


def _open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


async def test_handles_close_with_their_connection(
    codexexec_server: RunningServer, tree: Path
) -> None:
    pid = codexexec_server.process.pid
    before = _open_fds(pid)
    wire = await connected(codexexec_server)
    for index in range(100):
        await wire.result("fs/open", {"handleId": f"h{index}", "path": uri(tree / "data")})
    assert _open_fds(pid) >= before + 100
    await wire.close()
    deadline = time.monotonic() + 5
    while _open_fds(pid) > before + 2 and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    assert _open_fds(pid) <= before + 2


@pytest.mark.skipif(landlock_abi() == 0, reason="no Landlock")
async def test_landlock_backend_confines_fs_operations(tree: Path) -> None:
    workspace, outside = tree / "ws", tree / "outside"
    workspace.mkdir()
    outside.mkdir()
    with start_server("codexexec", env={"CODEXEXEC_LINUX_SANDBOX": "landlock"}) as server:
        wire = await connected(server)
        # A plain writable path (not a project root) leaves Landlock nothing to carve out:
        # writes inside pass, writes outside are denied.
        sandbox = workspace_write(workspace)
        sandbox["permissions"]["file_system"]["entries"][1] = {
            "path": {"type": "path", "path": uri(workspace)},
            "access": "write",
        }
        inside = {"path": uri(workspace / "in"), "dataBase64": "aGk=", "sandbox": sandbox}
        assert await wire.result("fs/writeFile", inside) == {}
        outside_write = {**inside, "path": uri(outside / "no")}
        reply = await wire.request("fs/writeFile", outside_write)
        assert reply["error"] == {"code": -32600, "message": "Permission denied (os error 13)"}
        assert not (outside / "no").exists()
        # Landlock cannot hide files from reads: such a sandbox is refused, never ignored.
        hidden = {"path": uri(outside), "sandbox": read_only(workspace)}
        reply = await wire.request("fs/readDirectory", hidden)
        assert reply["error"]["code"] == -32602
        assert reply["error"]["message"].startswith(
            "sandbox intent cannot be enforced on this executor"
        )
        await wire.close()
