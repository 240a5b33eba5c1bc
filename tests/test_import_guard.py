"""What a command loads is what it uses (#17): a local `exec` must not import the relay,
Noise, the rendezvous, the HTTP/websocket stacks, the managed proxy, metrics or rich — each
would add to every command's start-up. Run in a fresh interpreter, as a user runs it."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

FORBIDDEN = (
    "aiohttp",
    "websockets",
    "nats",
    "psycopg",
    "prometheus_client",
    "cryptography",
    "noise",
    "rich",
    "codexexec.rendezvous",
    "codexexec.relay",
    "codexexec.noise",
    "codexexec.remote",
    "codexexec.network.proxy",
    "codexexec.server.metrics",
)

# The CLI ends with os._exit after its atexit functions: report from one of those.
PROBE = """
import atexit, json, runpy, sys
atexit.register(lambda: print(json.dumps(sorted(sys.modules)), file=sys.__stderr__))
sys.argv = ["codexexec", *sys.argv[1:]]
runpy.run_module("codexexec", run_name="__main__")
"""


def loaded_by(*args: str) -> set[str]:
    done = subprocess.run(
        [sys.executable, "-c", PROBE, *args],
        capture_output=True,
        timeout=60,
        cwd="/tmp",
        stdin=subprocess.DEVNULL,
    )
    # A command that failed early would load less and pass any guard: it must succeed.
    assert done.returncode == 0, (args, done.stderr.decode()[-2000:])
    return set(json.loads(done.stderr.decode().strip().splitlines()[-1]))


def forbidden_in(modules: set[str]) -> list[str]:
    return sorted(m for m in modules if any(m == f or m.startswith(f + ".") for f in FORBIDDEN))


def test_a_local_exec_loads_nothing_it_does_not_use() -> None:
    for args in (("exec", "--sandbox", "danger-full-access", "--", "true"), ("exec", "--", "true")):
        loaded = loaded_by(*args)
        assert forbidden_in(loaded) == [], args
        assert "tomllib" not in loaded, args  # no config file here: nothing to parse


def test_exec_on_a_websocket_server_loads_no_server_side() -> None:
    from tests.servers import start_server

    with start_server("codexexec") as server:
        loaded = loaded_by("exec", "--env", server.url, "--", "true")
    server_side = ("codexexec.server", "codexexec.transport.ws_listen", "websockets.asyncio.server")
    assert sorted(m for m in loaded if m.startswith(server_side)) == []
    assert "codexexec.transport.websocket" in loaded


def test_exec_through_a_registry_loads_neither_aiohttp_nor_the_classic_noise_library(
    tmp_path: Path,
) -> None:
    """A harness's one `exec` through a registry: its registry calls are plain HTTP/1.1
    (remote/http.py) and the default Noise profile needs no `noise` library."""
    from tests.test_relay_e2e import Rendezvous, env, start_executor, stop

    rendezvous = Rendezvous(tmp_path)
    executor = start_executor("serve", "--remote", rendezvous.url, "--environment-id", "devbox")
    try:
        done = subprocess.run(
            [
                sys.executable,
                "-c",
                PROBE,
                "exec",
                "--env",
                f"devbox@{rendezvous.url}",
                "--",
                "true",
            ],
            capture_output=True,
            timeout=60,
            cwd="/tmp",
            stdin=subprocess.DEVNULL,
            env=env(),
        )
    finally:
        stop(executor)
        rendezvous.kill()
    assert done.returncode == 0, done.stderr
    loaded = set(json.loads(done.stderr.decode().strip().splitlines()[-1]))
    assert "codexexec.transport.noise_harness" in loaded  # it did go through Noise
    heavy = ("aiohttp", "noise", "codexexec.noise.classic_ik", "codexexec.server")
    assert (
        sorted(m for m in loaded if m in heavy or m.startswith(tuple(f"{h}." for h in heavy))) == []
    )


def test_help_loads_no_command_machinery() -> None:
    """`--help` and `-h` print plain help, as git and docker do: no rich, no server, no
    client, no asyncio (#17: help within 100 ms)."""
    for args in (("--help",), ("-h",), ("exec", "-h"), ("fs", "get", "--help")):
        loaded = loaded_by(*args)
        heavy = {"rich", "asyncio", "codexexec.server", "codexexec.client", "codexexec.sandbox"}
        assert sorted(m for m in loaded if m.split(".")[0] in heavy or m in heavy) == [], args
        assert forbidden_in(loaded) == [], args


def test_top_level_help_lists_every_command_whatever_follows_it() -> None:
    """Only the invoked command is built; help asked for before a command is the top
    level's, and lists them all."""
    from codexexec.cli import _COMMANDS, _GROUPS

    every = set(_COMMANDS) | set(_GROUPS)
    assert len(every) == 11
    for args in (("--help",), ("--help", "exec"), ("-h", "ps")):
        done = subprocess.run(
            [sys.executable, "-m", "codexexec", *args], capture_output=True, text=True, timeout=60
        )
        section = done.stdout.split("Commands:", 1)[1].split("Examples:", 1)[0]
        rows = [line for line in section.splitlines() if line[:2] == "  " and line[2:3].strip()]
        listed = {row.split()[0] for row in rows}
        assert done.returncode == 0 and listed == every, (args, done.stdout)


def test_version_and_short_help() -> None:
    from codexexec import __version__

    done = subprocess.run(
        [sys.executable, "-m", "codexexec", "--version"], capture_output=True, text=True, timeout=60
    )
    assert (done.returncode, done.stdout) == (0, f"codexexec {__version__}\n")
    done = subprocess.run(
        [sys.executable, "-m", "codexexec", "-h"], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0
    assert "Examples:" in done.stdout and "codexexec exec -- make test" in done.stdout
    assert "125 (codexexec failed)" in done.stdout
    for command, example in ((("exec",), "--detach -- ./long-job"), (("fs",), "fs get -r")):
        shown = subprocess.run(
            [sys.executable, "-m", "codexexec", *command, "-h"],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert shown.returncode == 0 and "Examples:" in shown.stdout and example in shown.stdout
