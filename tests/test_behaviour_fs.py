"""The shared behaviour suite, `fs/*` part: every test runs against codexexec AND the real
Codex exec-server (the `server` fixture), with the same assertions.

Shapes, codes and texts are what Codex 0.169.0 answered (docs/codex-0.169-observed.md §20).
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
from typing import Any

import pytest

from codexexec.protocol.path_uri import PathUri
from tests.servers import RunningServer
from tests.wire import Wire

pytestmark = pytest.mark.asyncio(loop_scope="function")

MiB = 1024 * 1024


def uri(path: Path | str) -> str:
    return PathUri.from_host_native_path(str(path)).uri


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


@pytest.fixture
def tree() -> Iterator[Path]:
    """A fresh tree with every kind of entry; not under /tmp, which sandboxes may open up."""
    root = Path("/var/tmp") / f"cx-fs-{uuid.uuid4().hex[:8]}"
    (root / "d" / "sub").mkdir(parents=True)
    (root / "d" / "a.txt").write_bytes(b"hello\n")
    (root / "ten").write_bytes(b"0123456789")
    (root / "link").symlink_to("ten")
    (root / "dlink").symlink_to("d")
    (root / "broken").symlink_to("nowhere")
    os.mkfifo(root / "fifo")
    yield root
    shutil.rmtree(root, ignore_errors=True)


async def connected(server: RunningServer) -> Wire:
    wire = await Wire.open(server.url)
    await wire.initialize()
    return wire


async def error(wire: Wire, method: str, params: Any) -> dict[str, Any]:
    reply = await wire.request(method, params)
    assert "error" in reply, reply
    return dict(reply["error"])


# -- whole files and directories ----------------------------------------------------------


async def test_write_read_and_metadata_round_trip(server: RunningServer, tree: Path) -> None:
    wire = await connected(server)
    path = uri(tree / "new.bin")
    data = bytes(range(256)) * 3
    assert await wire.result("fs/writeFile", {"path": path, "dataBase64": b64(data)}) == {}
    assert await wire.result("fs/readFile", {"path": path}) == {"dataBase64": b64(data)}
    meta = await wire.result("fs/getMetadata", {"path": path, "sandbox": None})
    assert set(meta) == {
        "isDirectory",
        "isFile",
        "isSymlink",
        "size",
        "createdAtMs",
        "modifiedAtMs",
    }
    assert (meta["isFile"], meta["isDirectory"], meta["isSymlink"], meta["size"]) == (
        True,
        False,
        False,
        768,
    )
    assert abs(meta["modifiedAtMs"] - time.time() * 1000) < 60_000
    # A symlink reports isSymlink, the rest from its target.
    link = await wire.result("fs/getMetadata", {"path": uri(tree / "link")})
    assert (link["isSymlink"], link["isFile"], link["size"]) == (True, True, 10)
    await wire.close()


async def test_read_directory_follows_links_and_skips_dangling_ones(
    server: RunningServer, tree: Path
) -> None:
    wire = await connected(server)
    result = await wire.result("fs/readDirectory", {"path": uri(tree)})
    entries = {e["fileName"]: (e["isDirectory"], e["isFile"]) for e in result["entries"]}
    assert entries == {
        "d": (True, False),
        "dlink": (True, False),
        "ten": (False, True),
        "link": (False, True),
        "fifo": (False, False),
    }
    assert (await error(wire, "fs/readDirectory", {"path": uri(tree / "ten")})) == {
        "code": -32603,
        "message": "Not a directory (os error 20)",
    }
    await wire.close()


async def test_missing_paths_are_not_found(server: RunningServer, tree: Path) -> None:
    wire = await connected(server)
    not_found = {"code": -32004, "message": "No such file or directory (os error 2)"}
    for method, params in [
        ("fs/readFile", {"path": uri(tree / "nope")}),
        ("fs/getMetadata", {"path": uri(tree / "broken")}),
        ("fs/canonicalize", {"path": uri(tree / "nope")}),
        ("fs/readDirectory", {"path": uri(tree / "nope")}),
        ("fs/writeFile", {"path": uri(tree / "no" / "f"), "dataBase64": ""}),
        ("fs/createDirectory", {"path": uri(tree / "no" / "d"), "recursive": False}),
        ("fs/remove", {"path": uri(tree / "nope"), "force": False}),
        ("fs/open", {"handleId": "h", "path": uri(tree / "nope")}),
    ]:
        assert await error(wire, method, params) == not_found, method
    assert not (tree / "no").exists()
    await wire.close()


async def test_create_directory_and_remove_defaults(server: RunningServer, tree: Path) -> None:
    wire = await connected(server)
    nested = tree / "x" / "y" / "z"
    # recursive defaults to true, and an existing directory is fine.
    assert await wire.result("fs/createDirectory", {"path": uri(nested)}) == {}
    assert await wire.result("fs/createDirectory", {"path": uri(nested)}) == {}
    assert nested.is_dir()
    exists = await error(wire, "fs/createDirectory", {"path": uri(nested), "recursive": False})
    assert exists == {"code": -32603, "message": "File exists (os error 17)"}
    not_empty = await error(wire, "fs/remove", {"path": uri(tree / "x"), "recursive": False})
    assert not_empty == {"code": -32603, "message": "Directory not empty (os error 39)"}
    # recursive and force default to true: a tree goes, a missing path is fine.
    assert await wire.result("fs/remove", {"path": uri(tree / "x")}) == {}
    assert await wire.result("fs/remove", {"path": uri(tree / "x")}) == {}
    assert not (tree / "x").exists()
    # Removing a link removes the link, never its target.
    assert await wire.result("fs/remove", {"path": uri(tree / "dlink")}) == {}
    assert (tree / "d" / "a.txt").exists() and not (tree / "dlink").exists()
    await wire.close()


async def test_copy_files_trees_and_links(server: RunningServer, tree: Path) -> None:
    wire = await connected(server)
    src, dst = tree / "d", tree / "copy"
    (src / "alink").symlink_to("a.txt")
    os.mkfifo(src / "pipe")
    no_recursive = await error(
        wire, "fs/copy", {"sourcePath": uri(src), "destinationPath": uri(dst), "recursive": False}
    )
    assert no_recursive == {
        "code": -32600,
        "message": "fs/copy requires recursive: true when sourcePath is a directory",
    }
    missing = await error(wire, "fs/copy", {"sourcePath": uri(src), "destinationPath": uri(dst)})
    assert missing == {"code": -32602, "message": "missing field `recursive`"}
    params = {"sourcePath": uri(src), "destinationPath": uri(dst), "recursive": True}
    assert await wire.result("fs/copy", params) == {}
    assert (dst / "a.txt").read_bytes() == b"hello\n" and (dst / "sub").is_dir()
    assert os.readlink(dst / "alink") == "a.txt"
    assert not (dst / "pipe").exists()  # FIFOs inside a tree are skipped
    into_itself = await error(
        wire,
        "fs/copy",
        {"sourcePath": uri(src), "destinationPath": uri(src / "sub" / "x"), "recursive": True},
    )
    assert into_itself == {
        "code": -32600,
        "message": "fs/copy cannot copy a directory to itself or one of its descendants",
    }
    fifo = await error(
        wire,
        "fs/copy",
        {"sourcePath": uri(tree / "fifo"), "destinationPath": uri(tree / "f2"), "recursive": False},
    )
    assert fifo == {
        "code": -32600,
        "message": "fs/copy only supports regular files, directories, and symlinks",
    }
    await wire.close()


async def test_canonicalize_resolves_links(server: RunningServer, tree: Path) -> None:
    wire = await connected(server)
    result = await wire.result("fs/canonicalize", {"path": uri(tree / "dlink" / "a.txt")})
    assert result == {"path": uri(tree / "d" / "a.txt")}
    await wire.close()


# -- bad input ----------------------------------------------------------------------------


async def test_path_params_must_be_absolute_file_uris(server: RunningServer, tree: Path) -> None:
    wire = await connected(server)
    relative = {"code": -32602, "message": "invalid URI: relative URL without a base"}
    assert await error(wire, "fs/readFile", {"path": str(tree / "ten")}) == relative
    assert await error(wire, "fs/readFile", {"path": "ten"}) == relative
    assert await error(wire, "fs/getMetadata", {"path": "http://x/tmp"}) == {
        "code": -32602,
        "message": "unsupported path URI scheme `http`",
    }
    assert await error(wire, "fs/readFile", {"path": "file:///tmp/x\u0000y"}) == {
        "code": -32602,
        "message": "'file:///tmp/x%00y' is invalid on 'linux'",
    }
    assert await error(wire, "fs/readFile", {"path": "file://relative"}) == {
        "code": -32600,
        "message": "'file://relative/' is invalid on 'linux'",
    }
    assert await error(wire, "fs/readFile", {}) == {
        "code": -32602,
        "message": "missing field `path`",
    }
    await wire.close()


async def test_params_are_checked_before_the_lifecycle_gate(server: RunningServer) -> None:
    wire = await Wire.open(server.url)
    assert await error(wire, "fs/readFile", {"path": "/etc/hostname"}) == {
        "code": -32602,
        "message": "invalid URI: relative URL without a base",
    }
    assert await error(wire, "fs/readFile", {"path": "file:///etc/hostname"}) == {
        "code": -32600,
        "message": "client must call initialize before using filesystem methods",
    }
    await wire.close()


async def test_invalid_base64_is_refused(server: RunningServer, tree: Path) -> None:
    wire = await connected(server)
    path = uri(tree / "b64")
    assert await error(wire, "fs/writeFile", {"path": path, "dataBase64": "!!!"}) == {
        "code": -32600,
        "message": "fs/writeFile requires valid base64 dataBase64: Invalid symbol 33, offset 0.",
    }
    assert await error(wire, "fs/writeFile", {"path": path, "dataBase64": "aGk"}) == {
        "code": -32600,
        "message": "fs/writeFile requires valid base64 dataBase64: Invalid padding",
    }
    assert not (tree / "b64").exists()
    block = {"handleId": "w", "offset": 0, "chunk": "a b="}
    assert await error(wire, "fs/writeBlock", block) == {
        "code": -32602,
        "message": "Invalid symbol 32, offset 1.",
    }
    await wire.close()


async def test_fifos_and_devices_are_refused_at_once(server: RunningServer, tree: Path) -> None:
    wire = await connected(server)
    fifo = str(tree / "fifo")
    started = time.monotonic()
    for method, params, message in [
        ("fs/readFile", {"path": uri(fifo)}, f"path `{fifo}` is not a file"),
        ("fs/open", {"handleId": "f", "path": uri(fifo)}, f"path `{fifo}` is not a file"),
        ("fs/readFile", {"path": "file:///dev/zero"}, "path `/dev/zero` is not a file"),
        (
            "fs/open",
            {"handleId": "z", "path": "file:///dev/zero"},
            "path `/dev/zero` is not a file",
        ),
        ("fs/readFile", {"path": uri(tree / "d")}, f"path `{tree / 'd'}` is not a file"),
        ("fs/readFile", {"path": uri(fifo), "followSymlinks": False}, "path is not a regular file"),
    ]:
        assert await error(wire, method, params) == {"code": -32600, "message": message}
    # Opening a FIFO for writing with no reader fails instead of waiting for one.
    replace = await error(wire, "fs/open", {"handleId": "w", "path": uri(fifo), "mode": "replace"})
    assert replace["code"] in (-32600, -32603)
    assert time.monotonic() - started < 5
    await wire.close()


async def test_no_follow_refuses_symlinks(server: RunningServer, tree: Path) -> None:
    wire = await connected(server)
    link = uri(tree / "link")
    assert await error(wire, "fs/getMetadata", {"path": link, "followSymlinks": False}) == {
        "code": -32600,
        "message": "path contains a symbolic link",
    }
    loop = {"code": -32603, "message": "Symbolic link loop (os error 40)"}
    assert await error(wire, "fs/readFile", {"path": link, "followSymlinks": False}) == loop
    params = {"path": link, "dataBase64": b64(b"x"), "followSymlinks": False}
    assert await error(wire, "fs/writeFile", params) == loop
    through = {"path": uri(tree / "dlink" / "a.txt"), "followSymlinks": False}
    assert await error(wire, "fs/readFile", through) == {
        "code": -32603,
        "message": "Not a directory (os error 20)",
    }
    assert (tree / "ten").read_bytes() == b"0123456789"
    direct = await wire.result("fs/readFile", {"path": uri(tree / "ten"), "followSymlinks": False})
    assert direct == {"dataBase64": b64(b"0123456789")}
    recursive = {"path": uri(tree / "d"), "followSymlinks": False}
    assert await error(wire, "fs/remove", recursive) == {
        "code": -32603,
        "message": "recursive no-follow removal is unsupported",
    }
    await wire.close()


# -- streamed reads and writes ------------------------------------------------------------


async def test_read_block_random_access_and_eof(server: RunningServer, tree: Path) -> None:
    wire = await connected(server)
    opened = await wire.result("fs/open", {"handleId": "h1", "path": uri(tree / "ten")})
    assert opened == {"handleId": "h1"}

    async def block(offset: int, length: int) -> tuple[bytes, bool]:
        result = await wire.result(
            "fs/readBlock", {"handleId": "h1", "offset": offset, "len": length}
        )
        return base64.b64decode(result["chunk"]), result["eof"]

    assert await block(6, 3) == (b"678", False)
    assert await block(1, 2) == (b"12", False)
    assert await block(8, 4) == (b"89", True)
    assert await block(0, 2) == (b"01", False)
    assert await block(100, 4) == (b"", True)
    assert await wire.result("fs/close", {"handleId": "h1"}) == {}
    assert await wire.result("fs/close", {"handleId": "h1"}) == {}  # closing twice is fine
    assert await error(wire, "fs/readBlock", {"handleId": "h1", "offset": 0, "len": 1}) == {
        "code": -32004,
        "message": "unknown file handle `h1`",
    }
    await wire.close()


async def test_two_mebibytes_stream_as_two_full_blocks(server: RunningServer, tree: Path) -> None:
    wire = await connected(server)
    data = os.urandom(2 * MiB)
    (tree / "two").write_bytes(data)
    await wire.result("fs/open", {"handleId": "big", "path": uri(tree / "two")})
    received = b""
    for offset in (0, MiB):
        result = await wire.result(
            "fs/readBlock", {"handleId": "big", "offset": offset, "len": MiB}
        )
        chunk = base64.b64decode(result["chunk"])
        assert len(chunk) == MiB and result["eof"] is False
        received += chunk
    tail = await wire.result("fs/readBlock", {"handleId": "big", "offset": 2 * MiB, "len": MiB})
    assert tail == {"chunk": "", "eof": True}
    assert received == data
    await wire.close()


async def test_read_block_bad_input(server: RunningServer, tree: Path) -> None:
    wire = await connected(server)
    await wire.result("fs/open", {"handleId": "h", "path": uri(tree / "ten")})
    length = {"code": -32600, "message": "file read block length must be between 1 and 1048576"}
    for size in (0, MiB + 1, 10**12):
        assert (
            await error(wire, "fs/readBlock", {"handleId": "h", "offset": 0, "len": size}) == length
        )
    # The length is checked before the handle.
    assert await error(wire, "fs/readBlock", {"handleId": "x", "offset": 0, "len": 0}) == length
    negative = {"code": -32602, "message": "invalid number"}
    assert await error(wire, "fs/readBlock", {"handleId": "h", "offset": -1, "len": 1}) == negative
    assert await error(wire, "fs/readBlock", {"handleId": "h", "offset": 0, "len": -2}) == negative
    assert await error(wire, "fs/readBlock", {"handleId": "h", "offset": 0}) == {
        "code": -32602,
        "message": "missing field `len`",
    }
    # An offset past the largest file offset fails the read, and a failed read closes it.
    huge = {"handleId": "h", "offset": 2**64 - 1, "len": 1}
    assert await error(wire, "fs/readBlock", huge) == {
        "code": -32600,
        "message": "Invalid argument (os error 22)",
    }
    assert (await error(wire, "fs/readBlock", {"handleId": "h", "offset": 0, "len": 1}))[
        "code"
    ] == -32004
    await wire.close()


async def test_handle_ids_and_the_per_connection_limit(server: RunningServer, tree: Path) -> None:
    wire = await connected(server)
    ten = uri(tree / "ten")
    assert await error(wire, "fs/open", {"handleId": "x" * 33, "path": ten}) == {
        "code": -32600,
        "message": "file handle ID must not exceed 32 bytes",
    }
    assert await wire.result("fs/open", {"handleId": "é" * 16, "path": ten}) == {
        "handleId": "é" * 16
    }
    for index in range(127):
        await wire.result("fs/open", {"handleId": f"h{index}", "path": ten})
    full = {"code": -32600, "message": "at most 128 file handles may be open per connection"}
    assert await error(wire, "fs/open", {"handleId": "one-more", "path": ten}) == full
    assert await error(wire, "fs/open", {"handleId": "w", "path": ten, "mode": "replace"}) == full
    assert await error(wire, "fs/open", {"handleId": "h5", "path": ten}) == {
        "code": -32600,
        "message": "file handle `h5` already exists",
    }
    await wire.result("fs/close", {"handleId": "h5"})
    assert await wire.result("fs/open", {"handleId": "again", "path": ten}) == {"handleId": "again"}
    assert await error(wire, "fs/open", {"handleId": "w", "path": ten, "mode": "write"}) == {
        "code": -32602,
        "message": "unknown variant `write`, expected `read` or `replace`",
    }
    await wire.close()
    # Handles belong to the connection: a new one starts empty.
    wire = await connected(server)
    assert await wire.result("fs/open", {"handleId": "h0", "path": ten}) == {"handleId": "h0"}
    await wire.close()


async def test_replace_mode_writes_blocks(server: RunningServer, tree: Path) -> None:
    wire = await connected(server)
    path = uri(tree / "ten")  # replace truncates an existing file when it opens
    await wire.result("fs/open", {"handleId": "w", "path": path, "mode": "replace"})
    assert (tree / "ten").read_bytes() == b""
    assert (
        await wire.result("fs/writeBlock", {"handleId": "w", "offset": 0, "chunk": b64(b"hi")})
        == {}
    )
    await wire.result("fs/writeBlock", {"handleId": "w", "offset": 4, "chunk": b64(b"yo")})
    assert await error(wire, "fs/writeBlock", {"handleId": "w", "offset": 0, "chunk": ""}) == {
        "code": -32600,
        "message": "file write block length must be between 1 and 1048576",
    }
    assert await error(wire, "fs/writeBlock", {"handleId": "q", "offset": 0, "chunk": "aGk="}) == {
        "code": -32004,
        "message": "unknown file handle `q`",
    }
    await wire.result("fs/close", {"handleId": "w"})
    assert (tree / "ten").read_bytes() == b"hi\x00\x00yo"
    await wire.close()


# -- walk ---------------------------------------------------------------------------------


def walk_options(**overrides: Any) -> dict[str, Any]:
    options = {
        "maxDepth": 10,
        "maxDirectories": 100,
        "maxEntries": 100,
        "followDirectorySymlinks": False,
    }
    return {**options, **overrides}


@pytest.fixture
def walk_tree(tree: Path) -> Path:
    root = tree / "wk"
    for directory in ("a/b/c", ".hid/x", "e"):
        (root / directory).mkdir(parents=True)
    (root / "f").write_text("1")
    (root / "a" / "g").write_text("2")
    (root / ".hid" / "x" / "h").write_text("3")
    (root / "alink").symlink_to(root / "a")
    (root / "flink").symlink_to("f")
    (root / "a" / "b" / "loop").symlink_to("../..")
    os.mkfifo(root / "pipe")
    return root


async def walk(wire: Wire, root: Path, **options: Any) -> tuple[list[str], bool]:
    result = await wire.result("fs/walk", {"path": uri(root), "options": walk_options(**options)})
    assert result["errors"] == []
    prefix = uri(root) + "/"
    listed = [f"{e['path'].removeprefix(prefix)}:{e['kind'][0]}" for e in result["entries"]]
    return listed, result["truncated"]


async def test_walk_is_breadth_first_and_sorted(server: RunningServer, walk_tree: Path) -> None:
    wire = await connected(server)
    everything = [
        ".hid:d",
        "a:d",
        "e:d",
        "f:f",
        ".hid/x:d",
        "a/b:d",
        "a/g:f",
        ".hid/x/h:f",
        "a/b/c:d",
    ]
    assert await walk(wire, walk_tree) == (everything, False)
    # Following directory links lists them, but a directory already seen is not read again.
    followed, _ = await walk(wire, walk_tree, followDirectorySymlinks=True)
    assert followed == [*everything[:2], "alink:d", *everything[2:], "a/b/loop:d"]
    pruned, _ = await walk(wire, walk_tree, pruneHiddenDirectories=True)
    assert pruned == [".hid:d", "a:d", "e:d", "f:f", "a/b:d", "a/g:f", "a/b/c:d"]
    assert await walk(wire, walk_tree, maxDepth=0) == (everything[:4], False)
    assert await walk(wire, walk_tree / "f") == ([], False)
    await wire.close()


async def test_walk_limits(server: RunningServer, walk_tree: Path) -> None:
    wire = await connected(server)
    # Links and FIFOs count toward maxEntries though they are not listed.
    assert await walk(wire, walk_tree, maxEntries=3) == ([".hid:d", "a:d"], True)
    assert await walk(wire, walk_tree, maxDirectories=2) == (
        [".hid:d", "a:d", "e:d", "f:f", ".hid/x:d"],
        True,
    )
    zero = {"code": -32600, "message": "filesystem walk limits must be greater than zero"}
    params = {"path": uri(walk_tree), "options": walk_options(maxEntries=0, maxDepth=99)}
    assert await error(wire, "fs/walk", params) == zero
    too_big = {
        "code": -32600,
        "message": "filesystem walk limits exceed maximums: "
        "depth=64, directories=10000, entries=50000",
    }
    for option, value in (("maxDepth", 65), ("maxDirectories", 10001), ("maxEntries", 50001)):
        params = {"path": uri(walk_tree), "options": walk_options(**{option: value})}
        assert await error(wire, "fs/walk", params) == too_big
    missing = {"path": uri(walk_tree / "nope"), "options": walk_options()}
    assert (await error(wire, "fs/walk", missing))["code"] == -32004
    await wire.close()


async def test_walk_response_stops_near_four_mebibytes(server: RunningServer, tree: Path) -> None:
    root = tree / "many"
    root.mkdir()
    for index in range(17_000):
        (root / f"{index:05d}_{'x' * 152}").touch()
    wire = await connected(server)
    params = {"path": uri(root), "options": walk_options(maxEntries=50_000)}
    result = await wire.result("fs/walk", params, timeout=60)
    cost = len(result["entries"][0]["path"]) + 64
    assert result["truncated"] is True
    assert len(result["entries"]) == 4 * MiB // cost
    await wire.close()


# -- watches ------------------------------------------------------------------------------


async def test_watch_missing_says_whether_it_holds(server: RunningServer, tree: Path) -> None:
    wire = await connected(server)
    gone, here = uri(tree / "not-yet"), uri(tree / "ten")

    async def watch(watch_id: int, missing: list[str], present: str | None) -> Any:
        params = {"watchId": watch_id, "missing": missing, "present": present}
        return await wire.result("fs/watchMissing", params)

    assert await watch(1, [gone], None) == {"watching": True}
    assert await watch(2, [gone], here) == {"watching": True}
    assert await watch(3, [here], None) == {"watching": False}  # already there
    assert await watch(4, [gone], uri(tree / "zz")) == {"watching": False}  # present is gone
    assert await watch(5, [], None) == {"watching": False}
    bad = {"watchId": 6, "missing": [str(tree)], "present": None}
    assert await error(wire, "fs/watchMissing", bad) == {
        "code": -32602,
        "message": "invalid URI: relative URL without a base",
    }
    await wire.close()


# -- sandboxed operations -----------------------------------------------------------------


def workspace_write(workspace: Path) -> dict[str, Any]:
    entries = [
        {"path": {"type": "special", "value": {"kind": "root"}}, "access": "read"},
        {"path": {"type": "special", "value": {"kind": "project_roots"}}, "access": "write"},
    ]
    return {
        "permissions": {
            "type": "managed",
            "file_system": {"type": "restricted", "entries": entries},
            "network": "restricted",
        },
        "cwd": uri(workspace),
        "workspaceRoots": [uri(workspace)],
        "windowsSandboxLevel": "disabled",
    }


def read_only(root: Path) -> dict[str, Any]:
    entries = [{"path": {"type": "path", "path": uri(root)}, "access": "read"}]
    return {
        "permissions": {
            "type": "managed",
            "file_system": {"type": "restricted", "entries": entries},
            "network": "restricted",
        },
        "cwd": uri(root),
        "windowsSandboxLevel": "disabled",
    }


needs_bwrap = pytest.mark.skipif(shutil.which("bwrap") is None, reason="bubblewrap not installed")


@needs_bwrap
async def test_sandboxed_writes_stay_inside_writable_roots(
    server: RunningServer, tree: Path
) -> None:
    workspace, outside = tree / "ws", tree / "outside"
    workspace.mkdir()
    outside.mkdir()
    (outside / "keep").write_text("keep")
    sandbox = workspace_write(workspace)
    wire = await connected(server)
    inside = {"path": uri(workspace / "new"), "dataBase64": b64(b"ok"), "sandbox": sandbox}
    assert await wire.result("fs/writeFile", inside) == {}
    assert (workspace / "new").read_bytes() == b"ok"
    read_only_fs = {"code": -32603, "message": "Read-only file system (os error 30)"}
    for method, params in [
        ("fs/writeFile", {"path": uri(outside / "new"), "dataBase64": b64(b"no")}),
        ("fs/createDirectory", {"path": uri(outside / "dir")}),
        ("fs/remove", {"path": uri(outside / "keep")}),
        (
            "fs/copy",
            {
                "sourcePath": uri(workspace / "new"),
                "destinationPath": uri(outside / "c"),
                "recursive": False,
            },
        ),
        ("fs/open", {"handleId": "w", "path": uri(outside / "w"), "mode": "replace"}),
    ]:
        assert await error(wire, method, {**params, "sandbox": sandbox}) == read_only_fs, method
    assert sorted(os.listdir(outside)) == ["keep"]
    # A symlink inside the workspace does not lead a write out of it.
    (workspace / "escape").symlink_to(outside / "keep")
    escape = {"path": uri(workspace / "escape"), "dataBase64": b64(b"x"), "sandbox": sandbox}
    assert await error(wire, "fs/writeFile", escape) == read_only_fs
    assert (outside / "keep").read_text() == "keep"
    # Reads are not confined by a sandbox that lets everything be read.
    readable = {"path": uri(outside / "keep"), "sandbox": sandbox}
    assert await wire.result("fs/readFile", readable) == {"dataBase64": b64(b"keep")}
    # Streamed writes inside the workspace go through a descriptor the sandbox granted.
    opened = {"handleId": "s", "path": uri(workspace / "s"), "mode": "replace", "sandbox": sandbox}
    await wire.result("fs/open", opened)
    await wire.result("fs/writeBlock", {"handleId": "s", "offset": 0, "chunk": b64(b"streamed")})
    await wire.result("fs/close", {"handleId": "s"})
    assert (workspace / "s").read_bytes() == b"streamed"
    await wire.close()


@needs_bwrap
async def test_sandboxed_reads_see_only_readable_roots(server: RunningServer, tree: Path) -> None:
    visible, hidden = tree / "visible", tree / "hidden"
    visible.mkdir()
    hidden.mkdir()
    (visible / "in").write_text("in")
    (hidden / "secret").write_text("secret")
    sandbox = read_only(visible)
    wire = await connected(server)
    assert await wire.result("fs/readFile", {"path": uri(visible / "in"), "sandbox": sandbox}) == {
        "dataBase64": b64(b"in")
    }
    not_found = {"code": -32004, "message": "No such file or directory (os error 2)"}
    for method, params in [
        ("fs/readFile", {"path": uri(hidden / "secret")}),
        ("fs/getMetadata", {"path": uri(hidden / "secret")}),
        ("fs/readDirectory", {"path": uri(hidden)}),
        ("fs/canonicalize", {"path": uri(hidden / "secret")}),
        ("fs/open", {"handleId": "x", "path": uri(hidden / "secret")}),
    ]:
        assert await error(wire, method, {**params, "sandbox": sandbox}) == not_found, method
    walked = await wire.result(
        "fs/walk", {"path": uri(tree), "options": walk_options(), "sandbox": sandbox}
    )
    assert [e["path"] for e in walked["entries"]] == [uri(visible), uri(visible / "in")]
    opened = {"handleId": "v", "path": uri(visible / "in"), "sandbox": sandbox}
    await wire.result("fs/open", opened)
    block = await wire.result("fs/readBlock", {"handleId": "v", "offset": 0, "len": 10})
    assert block == {"chunk": b64(b"in"), "eof": True}
    await wire.close()


async def test_sandbox_context_errors(server: RunningServer, tree: Path) -> None:
    wire = await connected(server)
    path = uri(tree / "ten")
    assert await error(wire, "fs/getMetadata", {"path": path, "sandbox": {}}) == {
        "code": -32602,
        "message": "missing field `permissions`",
    }
    dynamic = workspace_write(tree)
    del dynamic["cwd"], dynamic["workspaceRoots"]
    params = {"path": uri(tree / "x"), "dataBase64": "", "sandbox": dynamic}
    assert await error(wire, "fs/writeFile", params) == {
        "code": -32602,
        "message": "file system sandbox context with dynamic permissions requires cwd",
    }
    # An unrestricted or disabled profile runs the operation as it is.
    for permissions in (
        {"type": "disabled"},
        {"type": "managed", "file_system": {"type": "unrestricted"}, "network": "restricted"},
    ):
        sandbox = {"permissions": permissions, "windowsSandboxLevel": "disabled"}
        params = {"path": uri(tree / "free"), "dataBase64": b64(b"ok"), "sandbox": sandbox}
        assert await wire.result("fs/writeFile", params) == {}
    await wire.close()


async def test_many_streams_in_a_row_release_their_handles(
    server: RunningServer, tree: Path
) -> None:
    wire = await connected(server)
    path = uri(tree / "ten")
    for index in range(130):
        await wire.result("fs/open", {"handleId": f"s{index}", "path": path})
        await wire.result("fs/readBlock", {"handleId": f"s{index}", "offset": 0, "len": 16})
        await wire.result("fs/close", {"handleId": f"s{index}"})
    await asyncio.sleep(0)
    await wire.close()
