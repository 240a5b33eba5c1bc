"""`exec --profile FILE`: Codex's `[permissions]` TOML turned into a permission profile, and
enforced alike by codexexec's executor and the real Codex 0.169.0's (checked on the host)."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from codexexec.sandbox.policy import SandboxPolicyError, under_home
from codexexec.sandbox.profile_file import choose, profile_json
from tests.servers import RunningServer, codexexec_command

PROFILE = """
default_permissions = "dev"
[permissions.dev]
extends = ":workspace"
[permissions.dev.filesystem]
glob_scan_max_depth = 3
"~/.ssh" = "deny"
[permissions.dev.filesystem.":workspace_roots"]
"." = "write"
"**/*.env" = "deny"
"keep.txt" = "read"
[permissions.other]
extends = ":read-only"
"""


def test_the_toml_becomes_codexs_profile() -> None:
    import tomllib

    name, table = choose(tomllib.loads(PROFILE), "p.toml")
    profile = profile_json(table, lambda p: "file://" + p, f"permissions.{name}")
    assert profile["network"] == "restricted"
    file_system = profile["file_system"]
    assert file_system["glob_scan_max_depth"] == 3
    kinds = [
        (e["path"].get("value", {}).get("kind") or e["path"].get("pattern"), e["access"])
        for e in file_system["entries"]
    ]
    assert kinds == [
        ("root", "read"),
        ("project_roots", "write"),
        ("slash_tmp", "write"),
        ("tmpdir", "write"),
        (None, "deny"),  # ~/.ssh: the client puts it under the executor's home
        ("project_roots", "write"),
        ("**/*.env", "deny"),
        ("project_roots", "read"),
    ]
    assert file_system["entries"][-1]["path"]["value"]["subpath"] == "keep.txt"
    assert file_system["entries"][4]["path"] == {"type": "path", "path": "~/.ssh"}
    resolved = under_home(profile, lambda rest: f"file:///home/executor/{rest}")
    assert resolved["file_system"]["entries"][4]["path"] == {
        "type": "path",
        "path": "file:///home/executor/.ssh",
    }


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[permissions.a]\n[permissions.b]\n", "defines several permission profiles (a, b)"),
        ('[permissions.a]\nextends = ":everything"\n', "unknown base `:everything`"),
        ('[permissions.a.filesystem]\n"/x" = "rw"\n', "expected read, write or deny"),
        ('[permissions.a.filesystem]\n"/x" = ["read"]\n', "expected read, write or deny"),
        ('[permissions.a]\nextends = ["x"]\n', "unknown base"),
        ('[permissions.a.filesystem.":workspace_roots"]\n"../up" = "write"\n', "must stay inside"),
        ('[permissions.a.filesystem]\n"rel/x" = "read"\n', "must be an absolute path"),
    ],
)
def test_profiles_that_mean_nothing_are_refused(text: str, message: str) -> None:
    import tomllib

    with pytest.raises(SandboxPolicyError, match=message.replace("(", r"\(").replace(")", r"\)")):
        name, table = choose(tomllib.loads(text), "p.toml")
        profile_json(table, str, f"permissions.{name}")


def test_a_profile_file_runs_alike_on_both_executors(server: RunningServer, tmp_path: Path) -> None:
    (tmp_path / "profile.toml").write_text(PROFILE)
    work = tmp_path / "w"
    work.mkdir()
    (work / "a.env").write_text("SECRET\n")
    (work / "keep.txt").write_text("keep\n")
    done = subprocess.run(
        codexexec_command(
            *("exec", "--env", server.url, "--cd", str(work), "--approval", "never"),
            *("--profile", str(tmp_path / "profile.toml")),
            *("--", "sh", "-c", "cat a.env; echo z >> keep.txt; echo w > new.txt"),
        ),
        capture_output=True,
        timeout=60,
    )
    assert b"SECRET" not in done.stdout
    assert b"a.env: Permission denied" in done.stderr
    assert (work / "keep.txt").read_text() == "keep\n"
    assert (work / "new.txt").read_text() == "w\n"


def test_a_bad_profile_file_is_one_line(tmp_path: Path) -> None:
    (tmp_path / "p.toml").write_text("[permissions\n")
    done = subprocess.run(
        codexexec_command("exec", "--profile", str(tmp_path / "p.toml"), "--", "true"),
        capture_output=True,
        timeout=30,
    )
    assert done.returncode == 2 and done.stderr.decode().count("\n") == 1
    assert "is not valid TOML" in done.stderr.decode()


@pytest.mark.parametrize("kind", ["codexexec", "codex"])
def test_a_home_path_in_a_profile_is_the_executors_home(kind: str, tmp_path: Path) -> None:
    """`~/` in a profile means the executor's home, not the caller's (they differ on any
    remote executor)."""
    from tests.servers import start_server

    executor_home, caller_home = tmp_path / "executor-home", tmp_path / "caller-home"
    executor_home.mkdir()
    caller_home.mkdir()
    (executor_home / "secret.txt").write_text("SECRET\n")
    (tmp_path / "p.toml").write_text(
        '[permissions.p]\nextends = ":read-only"\n[permissions.p.filesystem]\n'
        '"~/secret.txt" = "deny"\n'
    )
    with start_server(kind, env={"HOME": str(executor_home)}) as server:
        done = subprocess.run(
            codexexec_command(
                *("exec", "--env", server.url, "--cd", str(tmp_path), "--approval", "never"),
                *("--profile", str(tmp_path / "p.toml")),
                *("--", "cat", str(executor_home / "secret.txt")),
            ),
            capture_output=True,
            timeout=60,
            env={**os.environ, "HOME": str(caller_home)},
        )
    assert b"SECRET" not in done.stdout, done.stderr
    assert b"Permission denied" in done.stderr


def test_network_on_or_off_overrides_the_profiles_network(tmp_path: Path) -> None:
    import socket

    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    (tmp_path / "p.toml").write_text(
        '[permissions.p]\nextends = ":read-only"\n[permissions.p.network]\nenabled = true\n'
    )
    connect = f"import socket; socket.create_connection(('127.0.0.1', {port}), 5)"

    def run(*flags: str) -> int:
        return subprocess.run(
            codexexec_command(
                *("exec", "--approval", "never", "--profile", str(tmp_path / "p.toml"), *flags),
                *("--", "python3", "-c", connect),
            ),
            capture_output=True,
            timeout=60,
            cwd=tmp_path,
        ).returncode

    try:
        assert run() == 0  # the profile's own setting: network enabled
        assert run("--network", "off") != 0
        assert run("--network", "on") == 0
    finally:
        listener.close()
