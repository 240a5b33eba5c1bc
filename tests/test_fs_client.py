"""The client's typed filesystem API (`client.files`), against both servers and in-process."""

from __future__ import annotations

import asyncio
import os
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from codexexec.client import ExecServerClient, ExecServerError
from tests.servers import RunningServer

pytestmark = pytest.mark.asyncio(loop_scope="function")

MiB = 1024 * 1024


@pytest.fixture
def tree() -> Iterator[Path]:
    root = Path("/var/tmp") / f"cx-fsc-{uuid.uuid4().hex[:8]}"
    (root / "d").mkdir(parents=True)
    (root / "d" / "a.txt").write_bytes(b"hello\n")
    yield root
    shutil.rmtree(root, ignore_errors=True)


async def test_whole_file_and_directory_calls(server: RunningServer, tree: Path) -> None:
    async with await ExecServerClient.connect(server.url) as client:
        files = client.files
        await files.write(f"{tree}/new.txt", b"data")
        assert await files.read(f"{tree}/new.txt") == b"data"
        meta = await files.metadata(f"{tree}/new.txt")
        assert (meta.is_file, meta.is_directory, meta.size) == (True, False, 4)
        await files.create_directory(f"{tree}/x/y")
        names = {e.name: e.is_directory for e in await files.list_directory(str(tree))}
        assert names == {"d": True, "new.txt": False, "x": True}
        await files.copy(f"{tree}/d", f"{tree}/d2", recursive=True)
        assert await files.canonicalize(f"{tree}/d2/../d2/a.txt") == f"{tree}/d2/a.txt"
        walked = await files.walk(str(tree), max_depth=1)
        assert [(e.path, e.kind) for e in walked.entries][:3] == [
            (f"{tree}/d", "directory"),
            (f"{tree}/d2", "directory"),
            (f"{tree}/new.txt", "file"),
        ]
        assert walked.truncated is False and walked.errors == []
        await files.remove(f"{tree}/d2")
        assert not (tree / "d2").exists()
        with pytest.raises(ExecServerError) as missing:
            await files.read(f"{tree}/nope")
        assert missing.value.code == -32004
        assert str(missing.value) == "No such file or directory (os error 2)"
        with pytest.raises(ExecServerError, match="must be an absolute path"):
            await files.read("relative/path")


async def test_streamed_read_and_write(server: RunningServer, tree: Path) -> None:
    data = os.urandom(3 * MiB + 12345)
    (tree / "big").write_bytes(data)
    async with await ExecServerClient.connect(server.url) as client:
        async with await client.files.open(f"{tree}/big") as reader:
            received = b"".join([chunk async for chunk in reader.chunks()])
            assert received == data
            assert await reader.read_block(5, 3) == (data[5:8], False)
        blocks = [data[i : i + MiB] for i in range(0, len(data), MiB)]
        async with await client.files.open(f"{tree}/copy", mode="replace") as writer:
            assert await writer.write_all(blocks) == len(data)
        assert (tree / "copy").read_bytes() == data
        # An early exit from the stream leaves nothing behind: the handle closes.
        async with await client.files.open(f"{tree}/big") as reader:
            async for _ in reader.chunks():
                break
        for _ in range(130):  # more than 128: every handle was released
            async with await client.files.open(f"{tree}/big") as reader:
                await reader.read_block(0, 1)


async def test_watch_missing_event_in_process(tree: Path) -> None:
    async with await ExecServerClient.connect("local") as client:
        present = await client.files.watch_missing([str(tree / "d")])
        assert present.is_set()  # already there: nothing to wait for
        appears = await client.files.watch_missing([str(tree / "later")], str(tree))
        assert not appears.is_set()
        (tree / "later").touch()
        await asyncio.wait_for(appears.wait(), 5)
