"""Starting real servers for tests: codexexec's and the real Codex exec-server."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
_codex_binary: str | None = None
_lock = threading.Lock()


def codex_binary() -> str:
    """The real Codex binary, installed on first use by the project's own script."""
    global _codex_binary
    with _lock:
        if _codex_binary is None:
            result = subprocess.run(
                [str(ROOT / "scripts" / "install-codex-peer.sh")],
                check=True,
                capture_output=True,
                text=True,
                timeout=600,
            )
            _codex_binary = result.stdout.strip().splitlines()[-1]
    return _codex_binary


def start_codex_executor(registry: str, environment_id: str, token: str) -> subprocess.Popen[bytes]:
    """The real Codex executor (`codex exec-server --remote`) registering with ``registry``
    under ``environment_id``, its bearer given on stdin. ``CODEX_HOME`` is a fresh directory
    outside /tmp (Codex refuses one under it), left to the caller's clean-up of /var/tmp."""
    home = tempfile.mkdtemp(prefix="codex-home-", dir="/var/tmp")
    process = subprocess.Popen(
        [
            *(codex_binary(), "exec-server", "--remote", registry),
            *("--environment-id", environment_id, "--registration-bearer-stdin"),
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env={**os.environ, "CODEX_HOME": home},
    )
    assert process.stdin is not None
    process.stdin.write(token.encode() + b"\n")
    process.stdin.close()
    return process


@dataclass
class RunningServer:
    kind: str
    url: str
    process: subprocess.Popen[bytes]

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def codexexec_command(*args: str, python: str = sys.executable) -> list[str]:
    return [python, "-m", "codexexec", *args]


@contextmanager
def start_server(
    kind: str,
    *,
    env: dict[str, str] | None = None,
    extra_args: tuple[str, ...] = (),
    wrapper: tuple[str, ...] = (),
    python: str = sys.executable,
    stderr: Any = None,
) -> Iterator[RunningServer]:
    full_env = {**os.environ, **(env or {})}
    if kind == "codexexec":
        argv = codexexec_command(
            "serve", "--listen", "ws://127.0.0.1:0", *extra_args, python=python
        )
        home = None
    else:
        # Outside /tmp: under /tmp Codex refuses to create its sandbox helpers. A caller's
        # own CODEX_HOME (a config to test) is used as given and left in place.
        home = (
            None
            if "CODEX_HOME" in (env or {})
            else tempfile.mkdtemp(prefix="codex-home-", dir="/var/tmp")
        )
        if home:
            full_env["CODEX_HOME"] = home
        argv = [codex_binary(), "exec-server", "--listen", "ws://127.0.0.1:0", *extra_args]
    process = subprocess.Popen(
        [*wrapper, *argv],
        stdout=subprocess.PIPE,
        stderr=stderr,
        env=full_env,
        cwd=tempfile.gettempdir(),
    )
    assert process.stdout is not None
    line = process.stdout.readline().decode().strip()
    if not line.startswith("ws://"):
        process.kill()
        raise RuntimeError(f"{kind} server did not print its URL (got {line!r})")
    server = RunningServer(kind, line, process)
    try:
        yield server
    finally:
        server.stop()
        if home:
            subprocess.run(["rm", "-rf", home], check=False)
