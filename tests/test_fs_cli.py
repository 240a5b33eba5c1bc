"""`codexexec fs cat|ls|put|get`, run as a person would: real CLI processes against real
servers (codexexec's and Codex's), directly and through the relay."""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.servers import RunningServer, codexexec_command
from tests.test_relay_e2e import Rendezvous, cx, start_executor, start_forwarder, stop

MiB = 1024 * 1024


@pytest.fixture
def tree() -> Iterator[Path]:
    root = Path("/var/tmp") / f"cx-fscli-{uuid.uuid4().hex[:8]}"
    (root / "sub").mkdir(parents=True)
    (root / "small.bin").write_bytes(bytes(range(256)))
    (root / "link").symlink_to("small.bin")
    yield root
    shutil.rmtree(root, ignore_errors=True)


def fs(*args: str, stdin: bytes | None = None) -> subprocess.CompletedProcess[bytes]:
    env = {**os.environ, "COLUMNS": "120"}
    return subprocess.run(
        codexexec_command("fs", *args), input=stdin, capture_output=True, env=env, timeout=60
    )


def fs_on_a_terminal(*args: str) -> str:
    """What a person at a terminal sees (`script` gives the command a pseudo-terminal)."""
    command = " ".join(shlex.quote(a) for a in codexexec_command("fs", *args))
    env = {**os.environ, "COLUMNS": "120"}
    done = subprocess.run(
        ["script", "-qec", command, "/dev/null"], capture_output=True, env=env, timeout=60
    )
    assert done.returncode == 0, done.stdout
    text = done.stdout.decode(errors="replace").replace("\r", "")
    return re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", text)  # styles and cursor moves


def test_ls_renders_a_table_and_json(server: RunningServer, tree: Path) -> None:
    # On a terminal: a table under the listing's name.
    lines = fs_on_a_terminal("ls", f"{server.url}:{tree}").splitlines()
    assert lines[0].strip() == f"{server.url}:{tree}"
    rows = {line.split("│")[1].strip(): line.split("│")[2:4] for line in lines if "│" in line}
    assert [cell.strip() for cell in rows["small.bin"]] == ["file", "256 B"]
    assert [cell.strip() for cell in rows["link"]] == ["file (link)", "256 B"]
    assert rows["sub/"][0].strip() == "dir"
    # Into a pipe: plain tab-separated columns, one entry a line, like ls (no box drawing).
    piped = fs("ls", f"{server.url}:{tree}")
    assert piped.returncode == 0, piped.stderr
    plain = [line.split("\t") for line in piped.stdout.decode().splitlines()]
    assert [row[:3] for row in plain] == [
        ["link", "file (link)", "256"],
        ["small.bin", "file", "256"],
        ["sub/", "dir", ""],
    ]
    listed = fs("ls", "--json", f"{server.url}:{tree}")
    entries = [json.loads(line) for line in listed.stdout.decode().splitlines()]
    assert [e["name"] for e in entries] == ["link", "small.bin", "sub"]
    assert entries[1] == {
        "name": "small.bin",
        "type": "file",
        "isSymlink": False,
        "size": 256,
        "modifiedAtMs": entries[1]["modifiedAtMs"],
    }
    one = fs("ls", "--json", f"{server.url}:{tree}/small.bin")
    assert json.loads(one.stdout)["name"] == "small.bin"


def test_cat_writes_the_exact_bytes(server: RunningServer, tree: Path) -> None:
    result = fs("cat", f"{server.url}:{tree}/small.bin")
    assert result.returncode == 0 and result.stdout == bytes(range(256))


def test_put_and_get_round_trip_with_progress(codexexec_server: RunningServer, tree: Path) -> None:
    data = os.urandom(3 * MiB + 7)
    local = tree / "local.bin"
    local.write_bytes(data)
    remote = f"{codexexec_server.url}:{tree}/sub/remote.bin"
    put = fs("put", str(local), remote)
    assert put.returncode == 0, put.stderr
    assert (tree / "sub" / "remote.bin").read_bytes() == data
    assert put.stderr == b""  # stderr is not a terminal: no bar in a log
    get = fs("get", remote, str(tree))  # into a directory: keeps the name
    assert get.returncode == 0, get.stderr
    assert (tree / "remote.bin").read_bytes() == data
    assert "MiB" in fs_on_a_terminal("get", remote, str(tree / "again.bin"))  # the bar
    quiet = fs("get", "-q", remote, "-")
    assert quiet.stdout == data and quiet.stderr == b""
    small = fs("put", "-", f"{codexexec_server.url}:{tree}/from-stdin", stdin=b"piped")
    assert small.returncode == 0 and (tree / "from-stdin").read_bytes() == b"piped"
    assert small.stderr == b""  # no bar for a small transfer


def test_put_and_get_against_the_real_codex(codex_server: RunningServer, tree: Path) -> None:
    data = os.urandom(2 * MiB + 1)
    (tree / "up.bin").write_bytes(data)
    remote = f"{codex_server.url}:{tree}/codex.bin"
    assert fs("put", "-q", str(tree / "up.bin"), remote).returncode == 0
    assert fs("get", "-q", remote, "-").stdout == data


def test_errors_are_one_line(codexexec_server: RunningServer, tree: Path) -> None:
    missing = fs("cat", f"{codexexec_server.url}:{tree}/nope")
    assert missing.returncode == 125
    assert missing.stderr.decode() == (
        f"codexexec: error: {tree}/nope: No such file or directory (os error 2)\n"
    )
    directory = fs("get", f"{codexexec_server.url}:{tree}", str(tree / "x"))
    assert directory.returncode == 125 and b"is a directory" in directory.stderr
    assert not (tree / "x").exists()
    bad = fs("ls", "relative/path")
    assert bad.returncode == 2 and b"is not ENV:PATH" in bad.stderr
    no_env = fs("ls", "--registry", "http://127.0.0.1:1", "/tmp")
    assert no_env.returncode == 2 and b"--registry needs ENV:PATH" in no_env.stderr


def test_local_environment(tree: Path) -> None:
    result = fs("cat", f"local:{tree}/link")
    assert result.returncode == 0 and result.stdout == bytes(range(256))


@pytest.fixture
def rendezvous(tmp_path: Path) -> Iterator[Rendezvous]:
    rv = Rendezvous(tmp_path)
    yield rv
    rv.kill()


def test_fs_ls_and_get_through_the_relay(rendezvous: Rendezvous, tree: Path) -> None:
    executor = start_executor("serve", "--remote", rendezvous.url, "--environment-id", "devbox")
    try:
        listed = cx("fs", "ls", "--json", "--registry", rendezvous.url, f"devbox:{tree}")
        assert listed.returncode == 0, listed.stderr
        names = [json.loads(line)["name"] for line in listed.stdout.decode().splitlines()]
        assert names == ["link", "small.bin", "sub"]
        table = cx("fs", "ls", "--registry", rendezvous.url, "devbox:/tmp")
        assert table.returncode == 0 and b"\tdir\t" in table.stdout
        data = os.urandom(3 * MiB)
        (tree / "big").write_bytes(data)
        fetched = cx("fs", "get", "-q", f"devbox@{rendezvous.url}:{tree}/big", "-")
        assert fetched.returncode == 0 and fetched.stdout == data
    finally:
        stop(executor)


def test_fs_ls_through_the_relay_in_front_of_the_real_codex(
    rendezvous: Rendezvous, codex_server: RunningServer, tree: Path
) -> None:
    forwarder = start_forwarder(rendezvous, "codexbox", codex_server.url)
    try:
        listed = cx("fs", "ls", "--json", "--registry", rendezvous.url, f"codexbox:{tree}")
        assert listed.returncode == 0, listed.stderr
        names = [json.loads(line)["name"] for line in listed.stdout.decode().splitlines()]
        assert names == ["link", "small.bin", "sub"]
    finally:
        stop(forwarder)


def test_directories_copy_both_ways_and_rm_mkdir_act_like_their_namesakes(
    server: RunningServer, tmp_path: Path
) -> None:
    """`fs put -r` / `fs get -r` (cp -r semantics, links not followed), `fs rm [-r] [-f]`,
    `fs mkdir [-p]`, on codexexec's and Codex's server (#18)."""
    local = tmp_path / "project"
    (local / "src" / "deep").mkdir(parents=True)
    (local / "README").write_text("read me\n")
    (local / "src" / "deep" / "data.bin").write_bytes(os.urandom(2_500_000))
    (local / "src" / "empty").mkdir()
    (local / "outside").symlink_to("/etc/hostname")
    remote = Path("/var/tmp") / f"cx-fstree-{uuid.uuid4().hex[:8]}"
    try:
        put = fs("put", "-r", str(local), f"{server.url}:{remote}")
        assert put.returncode == 0, put.stderr
        assert b"skipped" in put.stderr and b"outside" in put.stderr
        assert (remote / "README").read_text() == "read me\n"
        assert (remote / "src" / "empty").is_dir() and not (remote / "outside").exists()
        assert (remote / "src/deep/data.bin").read_bytes() == (
            local / "src/deep/data.bin"
        ).read_bytes()
        # Into an existing directory: the copy goes in under its own name.
        again = fs("put", "-r", str(local / "src"), f"{server.url}:{remote / 'src'}")
        assert again.returncode == 0 and (remote / "src" / "src" / "deep" / "data.bin").exists()

        back = tmp_path / "back"
        got = fs("get", "-r", f"{server.url}:{remote}", str(back))
        assert got.returncode == 0, got.stderr
        assert (back / "src/deep/data.bin").read_bytes() == (
            remote / "src/deep/data.bin"
        ).read_bytes()
        assert (back / "src" / "empty").is_dir()
        plain = fs("get", f"{server.url}:{remote}", str(tmp_path / "x"))
        assert plain.returncode != 0 and b"fs get -r copies a directory" in plain.stderr

        no_r = fs("rm", f"{server.url}:{remote}")
        assert no_r.returncode != 0 and b"fs rm -r removes one" in no_r.stderr
        assert remote.exists()
        assert fs("rm", "-r", f"{server.url}:{remote}").returncode == 0
        assert not remote.exists()
        assert fs("rm", f"{server.url}:{remote}").returncode != 0
        assert fs("rm", "-f", f"{server.url}:{remote}").returncode == 0

        nested = remote / "a" / "b"
        assert fs("mkdir", f"{server.url}:{nested}").returncode != 0 and not nested.exists()
        assert fs("mkdir", "-p", f"{server.url}:{nested}").returncode == 0 and nested.is_dir()
    finally:
        shutil.rmtree(remote, ignore_errors=True)


def test_a_remote_tree_cannot_write_outside_the_local_destination() -> None:
    from codexexec.cli.fs_tree import OutsideTree, plan_get

    directories, files = plan_get(
        [("/r/a", "directory"), ("/r/a/f", "file")], "/r", "/home/me/copy"
    )
    assert directories == ["/home/me/copy/a"] and files == [("/r/a/f", "/home/me/copy/a/f")]
    for escaping in ("/r/../etc/passwd", "/etc/passwd", "/r/a/../../x"):
        with pytest.raises(OutsideTree):
            plan_get([(escaping, "file")], "/r", "/home/me/copy")
