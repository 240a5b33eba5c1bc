"""A private NATS server for tests: `nats-server` on a loopback port, stopped after.

Debian's `nats-server` package provides it; `.ci/run` installs it.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager

import pytest


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class PrivateNats:
    """A running server: ``url``, and ``stop``/``start`` (same port) for outage tests."""

    def __init__(
        self,
        binary: str,
        cores: int | None = None,
        user: str | None = None,
        password: str | None = None,
    ) -> None:
        self._binary = binary
        self._auth = ["--user", user, "--pass", password] if user and password else []
        self._tls: list[str] = []
        self.extra_args: list[str] = []
        # GOMAXPROCS: a Go server sharing a small machine spends much of its CPU spinning
        # for work when it may use every core (docs/cluster.md, "Operating it").
        self._env = {**os.environ, "GOMAXPROCS": str(cores)} if cores else None
        self.port = _free_port()
        self.url = f"nats://127.0.0.1:{self.port}"
        self._process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self._process = subprocess.Popen(
            [
                *(self._binary, "-a", "127.0.0.1", "-p", str(self.port)),
                *self._auth,
                *self._tls,
                *self.extra_args,
            ],
            env=self._env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1) as conn:
                    if conn.recv(4).startswith(b"INFO"):
                        return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError("nats-server did not start")

    def require_tls(self, cert: str, key: str) -> None:
        """Serve TLS only (from the next ``start``), with this certificate and key."""
        self._tls = ["--tls", "--tlscert", cert, "--tlskey", key]
        self.url = self.url.replace("nats://", "tls://")

    @property
    def pid(self) -> int:
        assert self._process is not None, "not started"
        return self._process.pid

    def stop(self) -> None:
        if self._process is not None and self._process.poll() is None:
            self._process.kill()
            self._process.wait()


def _binary() -> str:
    binary = shutil.which("nats-server") or (
        "/usr/sbin/nats-server" if os.path.exists("/usr/sbin/nats-server") else None
    )
    if binary is None:
        if os.environ.get("CI"):
            pytest.fail("nats-server is not installed (apt-get install nats-server)")
        pytest.skip("nats-server is not installed")
    return binary


@contextmanager
def private_nats(
    cores: int | None = None, user: str | None = None, password: str | None = None
) -> Iterator[PrivateNats]:
    server = PrivateNats(_binary(), cores, user, password)
    server.start()
    try:
        yield server
    finally:
        server.stop()


@contextmanager
def private_nats_cluster() -> Iterator[tuple[PrivateNats, PrivateNats]]:
    """Two nats-servers routed into one NATS cluster: each announces the other to its
    clients (INFO connect_urls)."""
    binary = _binary()
    first, second = PrivateNats(binary), PrivateNats(binary)
    routes = (_free_port(), _free_port())
    for server, own, other in ((first, *routes), (second, *reversed(routes))):
        server.extra_args = [
            *("--cluster_name", "cx", "--cluster", f"nats://127.0.0.1:{own}"),
            *("--routes", f"nats://127.0.0.1:{other}"),
        ]
    first.start()
    second.start()
    try:
        yield first, second
    finally:
        first.stop()
        second.stop()
