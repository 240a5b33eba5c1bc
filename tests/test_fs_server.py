"""codexexec's `fs/*` where it deliberately differs from Codex 0.169.0 or goes past it:
never blocking on a FIFO, never truncating a file copied onto itself, bounded whole-file
reads, watch notifications, the Landlock backend, and handles released with the
connection. (The shared behaviour lives in test_behaviour_fs.py.)
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import os
import shutil
import signal
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from codexexec.protocol.jsonrpc import RpcError
from codexexec.protocol.limits import FS_MAX_WHOLE_READ_BYTES
from codexexec.sandbox.linux.landlock import landlock_abi
from codexexec.server.fs import helpers as helpers_module
from codexexec.server.fs import sandboxed
from codexexec.server.fs.helpers import MAX_HELPERS_PER_CONNECTION
from tests.servers import RunningServer, start_server
from tests.test_behaviour_fs import needs_bwrap, read_only, uri, workspace_write
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
        # Under read-only Landlock denies every write, inside the workspace too.
        whole_read = read_only(workspace)
        whole_read["permissions"]["file_system"]["entries"] = [
            {"path": {"type": "special", "value": {"kind": "root"}}, "access": "read"}
        ]
        inside = {"path": uri(workspace / "in"), "dataBase64": "aGk=", "sandbox": whole_read}
        reply = await wire.request("fs/writeFile", inside)
        assert reply["error"] == {"code": -32600, "message": "Permission denied (os error 13)"}
        assert not (workspace / "in").exists()
        # A writable root needs its missing .git (and the other protected names) masked,
        # which Landlock cannot do: refused with the reason, never run with the hole.
        sandbox = workspace_write(workspace)
        sandbox["permissions"]["file_system"]["entries"][1] = {
            "path": {"type": "path", "path": uri(workspace)},
            "access": "write",
        }
        reply = await wire.request("fs/writeFile", {**inside, "sandbox": sandbox})
        assert reply["error"]["code"] == -32602
        assert "need bubblewrap" in reply["error"]["message"]
        assert not (workspace / "in").exists()
        # Landlock cannot hide files from reads: such a sandbox is refused, never ignored.
        hidden = {"path": uri(outside), "sandbox": read_only(workspace)}
        reply = await wire.request("fs/readDirectory", hidden)
        assert reply["error"]["code"] == -32602
        assert reply["error"]["message"].startswith(
            "sandbox intent cannot be enforced on this executor"
        )
        await wire.close()


# -- sandboxed helpers kept across operations ------------------------------------------------


def _children(pid: int) -> set[int]:
    found: set[int] = set()
    for task in os.listdir(f"/proc/{pid}/task"):
        # A worker thread may end between the listing and the read.
        with (
            contextlib.suppress(FileNotFoundError),
            open(f"/proc/{pid}/task/{task}/children") as children,
        ):
            found |= {int(child) for child in children.read().split()}
    return found


async def _write(
    wire: Wire, path: Path, data: bytes, sandbox: dict[str, object]
) -> dict[str, object]:
    params = {"path": uri(path), "dataBase64": base64.b64encode(data).decode(), "sandbox": sandbox}
    return await wire.request("fs/writeFile", params)


@needs_bwrap
async def test_a_sandboxed_helper_serves_the_next_operation_but_never_a_wider_one(
    tree: Path,
) -> None:
    workspace = tree / "ws"
    workspace.mkdir()
    sandbox = workspace_write(workspace)
    with start_server("codexexec") as server:
        wire = await connected(server)
        assert "result" in await _write(wire, workspace / "a", b"1", sandbox)
        helpers = _children(server.process.pid)
        assert len(helpers) == 1
        for name in "bcd":
            assert "result" in await _write(wire, workspace / name, b"2", sandbox)
        assert _children(server.process.pid) == helpers  # the same helper, no new process
        # A missing `.git` is masked; its mount point is an empty directory on the host.
        git = workspace / ".git"
        assert git.is_dir() and not any(git.iterdir())
        # A real `.git` that appears there later is protected too: the plan changed, so a
        # new helper runs the next operation.
        git.rmdir()
        git.mkdir()
        (git / "HEAD").write_text("ref: refs/heads/main\n")
        reply = await _write(wire, workspace / ".git" / "config", b"evil", sandbox)
        assert reply["error"]["message"] == "Read-only file system (os error 30)"
        assert not (workspace / ".git" / "config").exists()
        await wire.close()
        deadline = time.monotonic() + 10
        while _children(server.process.pid) and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        assert _children(server.process.pid) == set()  # the helpers end with the connection


@needs_bwrap
async def test_sandboxed_helpers_are_bounded_and_survive_a_killed_one(tree: Path) -> None:
    workspace = tree / "ws"
    workspace.mkdir()
    sandbox = workspace_write(workspace)
    with start_server("codexexec") as server:
        wire = await connected(server)
        for i in range(12):  # all in flight at once
            data = base64.b64encode(bytes([i]) * 1000).decode()
            params = {"path": uri(workspace / f"f{i}"), "dataBase64": data, "sandbox": sandbox}
            await wire.send({"id": f"w{i}", "method": "fs/writeFile", "params": params})
        replies = [await wire.response(f"w{i}", timeout=30) for i in range(12)]
        assert all("result" in reply for reply in replies), replies
        assert all((workspace / f"f{i}").read_bytes() == bytes([i]) * 1000 for i in range(12))
        helpers = _children(server.process.pid)
        assert 1 <= len(helpers) <= MAX_HELPERS_PER_CONNECTION
        for helper in helpers:
            os.killpg(helper, signal.SIGKILL)  # idle helpers die behind the server's back
        assert "result" in await _write(wire, workspace / "after", b"ok", sandbox)
        assert (workspace / "after").read_bytes() == b"ok"
        await wire.close()


@needs_bwrap
async def test_an_idle_sandboxed_helper_retires(
    tree: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(helpers_module, "HELPER_IDLE_SECONDS", 0.3)
    workspace = tree / "ws"
    workspace.mkdir()
    confined = sandboxed.confinement(workspace_write(workspace), reads_only=False)
    assert confined is not None
    others = _children(os.getpid())  # e.g. servers other tests share
    pool = helpers_module.SandboxedHelpers()
    args = {"path": str(workspace / "f"), "data": b"x", "follow_symlinks": True}
    assert await pool.run(confined, "write_file", args) == {}
    helpers = _children(os.getpid()) - others
    assert len(helpers) == 1 and (workspace / ".codex").exists()  # a helper, its mount point
    await asyncio.sleep(1.0)
    assert _children(os.getpid()) & helpers == set()
    assert not (workspace / ".codex").exists()
    assert await pool.run(confined, "write_file", args) == {}  # a new one when needed
    pool.close()
    deadline = time.monotonic() + 5
    while _children(os.getpid()) - others and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    assert _children(os.getpid()) - others == set()  # closing stops it


def _pool_pids(pool: helpers_module.SandboxedHelpers) -> list[int]:
    return [helper.process.pid for idle in pool._idle.values() for helper in idle]


async def _close(*pools: helpers_module.SandboxedHelpers) -> None:
    """Close the pools and wait until their idle helpers are reaped."""
    pids = [pid for pool in pools for pid in _pool_pids(pool)]
    for pool in pools:
        pool.close()
    deadline = time.monotonic() + 5
    while any(os.path.exists(f"/proc/{pid}") for pid in pids) and time.monotonic() < deadline:
        await asyncio.sleep(0.05)


@needs_bwrap
async def test_a_failed_replacement_releases_the_dead_helpers_mount_point_once(
    tree: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An idle helper that died is replaced; if the replacement cannot start, the dead one
    must still give its `.codex` mount point back only once, or the directory goes while
    another sandbox relies on it (and the name could be created from inside)."""
    workspace = tree / "ws"
    workspace.mkdir()
    confined = sandboxed.confinement(workspace_write(workspace), reads_only=False)
    assert confined is not None
    first, second = helpers_module.SandboxedHelpers(), helpers_module.SandboxedHelpers()
    args = {"path": str(workspace / "f"), "data": b"x", "follow_symlinks": True}
    try:
        assert await first.run(confined, "write_file", args) == {}
        assert await second.run(confined, "write_file", args) == {}  # binds the same .codex
        (dead,) = _pool_pids(first)
        monkeypatch.setenv("CODEXEXEC_LINUX_SANDBOX", "landlock")  # no replacement can start
        os.killpg(dead, signal.SIGKILL)
        with pytest.raises(RpcError):
            await first.run(confined, "write_file", args)
        await asyncio.sleep(0.5)  # the dead helper is reaped
        assert (workspace / ".codex").is_dir()  # the second helper still relies on it
    finally:
        await _close(first, second)


@needs_bwrap
async def test_a_helper_start_cancelled_gives_its_mount_point_back(tree: Path) -> None:
    workspace = tree / "ws"
    workspace.mkdir()
    confined = sandboxed.confinement(workspace_write(workspace), reads_only=False)
    assert confined is not None
    pool = helpers_module.SandboxedHelpers()
    args = {"path": str(workspace / "f"), "data": b"x", "follow_symlinks": True}
    starting = asyncio.create_task(pool.run(confined, "write_file", args))
    await asyncio.sleep(0)  # the helper is being started: its mount point is held
    starting.cancel()
    await asyncio.wait([starting], timeout=10)
    assert starting.cancelled()
    assert await pool.run(confined, "write_file", args) == {}
    pool.close()
    deadline = time.monotonic() + 5
    while (workspace / ".codex").exists() and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    assert not (workspace / ".codex").exists()  # nobody relies on it any more


def _descendants(pid: int) -> list[int]:
    found = [pid]
    for parent in found:
        found += _children(parent)
    return found


@needs_bwrap
async def test_a_waiter_cancelled_as_a_helper_frees_does_not_strand_the_next(tree: Path) -> None:
    """All helpers busy, two operations waiting: the first is woken by a freed helper and
    cancelled before it runs. The wake-up must pass on to the second, not be lost."""
    workspace = tree / "ws"
    workspace.mkdir()
    confined = sandboxed.confinement(workspace_write(workspace), reads_only=False)
    assert confined is not None
    pool = helpers_module.SandboxedHelpers()
    frozen: list[list[int]] = []

    def write(name: str) -> Any:
        args = {"path": str(workspace / name), "data": b"x", "follow_symlinks": True}
        return pool.run(confined, "write_file", args)

    try:
        await asyncio.gather(*(write(f"w{i}") for i in range(MAX_HELPERS_PER_CONNECTION)))
        frozen = [_descendants(pid) for pid in _pool_pids(pool)]
        assert len(frozen) == MAX_HELPERS_PER_CONNECTION
        for tree_pids in frozen:
            for pid in tree_pids:
                os.kill(pid, signal.SIGSTOP)
        busy = [asyncio.create_task(write(f"b{i}")) for i in range(MAX_HELPERS_PER_CONNECTION)]
        while any(pool._idle.values()):
            await asyncio.sleep(0.01)
        cancelled, waiting = asyncio.create_task(write("c")), asyncio.create_task(write("d"))
        await asyncio.sleep(0.1)
        for pid in frozen[0]:
            os.kill(pid, signal.SIGCONT)
        while not any(pool._idle.values()):  # given back: the first waiter was just woken
            await asyncio.sleep(0)
        cancelled.cancel()
        assert await asyncio.wait_for(waiting, 10) == {}
        for tree_pids in frozen[1:]:
            for pid in tree_pids:
                os.kill(pid, signal.SIGCONT)
        assert await asyncio.gather(*busy) == [{}] * MAX_HELPERS_PER_CONNECTION
    finally:
        for tree_pids in frozen:
            for pid in tree_pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGCONT)
        await _close(pool)


@needs_bwrap
async def test_a_protected_directory_replaced_behind_an_idle_helper_stays_protected(
    tree: Path,
) -> None:
    """A `.git` removed and made again on the host (say by an approved unsandboxed
    `git init`) is a different directory: the idle helper's read-only mount went with the
    old one, so the next operation must run in a helper that protects the new one."""
    workspace = tree / "ws"
    (workspace / ".git").mkdir(parents=True)
    sandbox = workspace_write(workspace)
    with start_server("codexexec") as server:
        wire = await connected(server)
        assert "result" in await _write(wire, workspace / "a", b"1", sandbox)
        reply = await _write(wire, workspace / ".git" / "config", b"x", sandbox)
        assert reply["error"]["message"] == "Read-only file system (os error 30)"
        shutil.rmtree(workspace / ".git")
        (workspace / ".git").mkdir()
        reply = await _write(wire, workspace / ".git" / "hooks-pre-commit", b"evil", sandbox)
        assert reply.get("error", {}).get("message") == "Read-only file system (os error 30)"
        assert not (workspace / ".git" / "hooks-pre-commit").exists()
        await wire.close()
