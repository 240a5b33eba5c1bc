"""The operator's sandbox settings on `codexexec serve`: a floor under every request
(`--sandbox-floor`, `--sandbox-floor-mode`) and Codex's `--linux-sandbox-pid-namespace`.
Every check is made on the host afterwards."""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import uuid
from pathlib import Path
from typing import Any

import pytest

from codexexec.protocol.path_uri import PathUri
from codexexec.sandbox.policy import legacy_profile, sandbox_context_json
from tests.servers import codexexec_command, start_server
from tests.wire import Wire

pytestmark = pytest.mark.skipif(shutil.which("bwrap") is None, reason="bubblewrap not installed")


def uri(path: Path | str) -> str:
    return str(PathUri.from_host_native_path(str(path)))


def outside() -> Path:
    return Path("/var/lib") / f"cx-floor-{uuid.uuid4().hex[:8]}"


async def start(
    url: str, argv: list[str], cwd: Path, sandbox: Any
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """(the process/start reply, the process's events if it started)."""
    wire = await Wire.open(url)
    await wire.initialize()
    params: dict[str, Any] = {
        "processId": "p",
        "argv": argv,
        "cwd": uri(cwd),
        "env": {"PATH": "/usr/bin:/bin"},
        "tty": False,
    }
    if sandbox is not None:
        params["sandbox"] = sandbox
    reply = await wire.request("process/start", params)
    events = [] if "error" in reply else await wire.events_until_closed("p")
    await wire.close()
    return reply, events


def workspace_write(root: Path) -> dict[str, Any]:
    profile = legacy_profile("workspace-write")
    assert profile is not None
    return sandbox_context_json(profile, uri(root), [uri(root)])


async def test_an_unsandboxed_request_is_raised_to_the_floor(tmp_path: Path) -> None:
    target = outside()
    with start_server("codexexec", extra_args=("--sandbox-floor", "workspace-write")) as server:
        reply, events = await start(
            server.url, ["sh", "-c", f"echo ok > inside; touch {target}"], tmp_path, None
        )
        assert reply["result"]["sandboxType"] != "none"
        exited = next(e for e in events if e["method"] == "process/exited")["params"]
        assert exited["sandboxDenied"] is True
        assert not target.exists()
        assert (tmp_path / "inside").read_text() == "ok\n"
        # A request at the floor is left as it is.
        reply, _ = await start(
            server.url, ["sh", "-c", "echo ok > again"], tmp_path, workspace_write(tmp_path)
        )
        assert (tmp_path / "again").read_text() == "ok\n"


async def test_refuse_mode_names_the_floor_and_the_reason(tmp_path: Path) -> None:
    args = ("--sandbox-floor", "workspace-write", "--sandbox-floor-mode", "refuse")
    with start_server("codexexec", extra_args=args) as server:
        reply, _ = await start(server.url, ["true"], tmp_path, None)
        assert reply["error"]["code"] == -32602
        assert reply["error"]["message"] == (
            "this executor's sandbox floor is workspace-write, and this request gets less: "
            "it asks for no sandbox"
        )
        wider = workspace_write(tmp_path)
        wider["permissions"]["file_system"]["entries"].append(
            {"path": {"type": "path", "path": "file:///var/lib"}, "access": "write"}
        )
        reply, _ = await start(server.url, ["true"], tmp_path, wider)
        assert "it asks to write to `/var/lib`" in reply["error"]["message"]


async def test_a_read_only_floor_holds_a_workspace_write_request(tmp_path: Path) -> None:
    with start_server("codexexec", extra_args=("--sandbox-floor", "read-only")) as server:
        await start(
            server.url, ["sh", "-c", "echo x > inside"], tmp_path, workspace_write(tmp_path)
        )
        assert not (tmp_path / "inside").exists()


async def test_fs_writes_are_held_to_the_floor(tmp_path: Path) -> None:
    target = outside()
    with start_server("codexexec", extra_args=("--sandbox-floor", "workspace-write")) as server:
        wire = await Wire.open(server.url)
        await wire.initialize()
        bare = await wire.request(
            "fs/writeFile", {"path": uri(target), "dataBase64": "eA==", "sandbox": None}
        )
        assert (
            bare["error"]["code"] == -32602
            and "file writes need a sandbox context" in bare["error"]["message"]
        )
        unrestricted = {
            **workspace_write(tmp_path),
            "permissions": {
                "type": "managed",
                "file_system": {"type": "unrestricted"},
                "network": "restricted",
            },
        }
        raised = await wire.request(
            "fs/writeFile", {"path": uri(target), "dataBase64": "eA==", "sandbox": unrestricted}
        )
        assert "error" in raised
        inside = await wire.request(
            "fs/writeFile",
            {"path": uri(tmp_path / "f"), "dataBase64": "eA==", "sandbox": unrestricted},
        )
        assert inside["result"] == {}
        read = await wire.request("fs/readFile", {"path": uri("/etc/hostname"), "sandbox": None})
        assert "result" in read  # reads are not what a floor is about
        await wire.close()
    assert not target.exists()
    assert (tmp_path / "f").read_bytes() == b"x"


def test_the_cli_against_a_floored_server(tmp_path: Path) -> None:
    target = outside()
    with start_server("codexexec", extra_args=("--sandbox-floor", "workspace-write")) as server:
        done = subprocess.run(
            codexexec_command(
                "exec",
                "--env",
                server.url,
                "--sandbox",
                "danger-full-access",
                "--approval",
                "never",
                "--",
                "touch",
                str(target),
            ),
            capture_output=True,
            cwd=tmp_path,
            timeout=60,
        )
    assert done.returncode != 0
    assert not target.exists()


@pytest.mark.parametrize("mode", ["isolate", "inherit"])
def test_pid_namespace(tmp_path: Path, mode: str) -> None:
    """`inherit` shares the host's PID namespace (a same-user host process can be signalled);
    `isolate`, the default, does not."""
    victim = subprocess.Popen(["sleep", "60"])
    try:
        with start_server(
            "codexexec", extra_args=("--linux-sandbox-pid-namespace", mode)
        ) as server:
            script = ["sh", "-c", f"kill -0 {victim.pid}"]
            _, events = asyncio.run(start(server.url, script, tmp_path, workspace_write(tmp_path)))
        exited = next(e for e in events if e["method"] == "process/exited")["params"]
        assert (exited["exitCode"] == 0) is (mode == "inherit")
        assert victim.poll() is None
    finally:
        victim.kill()
        victim.wait()


def test_bad_values_are_refused() -> None:
    for flag, value in (
        ("--sandbox-floor", "none"),
        ("--sandbox-floor-mode", "maybe"),
        ("--linux-sandbox-pid-namespace", "host"),
    ):
        done = subprocess.run(
            codexexec_command("serve", flag, value),
            capture_output=True,
            timeout=30,
            stdin=subprocess.DEVNULL,
        )
        assert (
            done.returncode == 2 and f"invalid value '{value}' for '{flag}'" in done.stderr.decode()
        )
