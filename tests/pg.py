"""A private PostgreSQL for tests: initdb into a temp dir, on a loopback port, stopped after.

PostgreSQL refuses to run as root, so under root it runs as `nobody`. Debian's `postgresql`
package provides the binaries; `.ci/run` installs it.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager

import pytest

USER = "cx"


def _bindir() -> str | None:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    return os.path.dirname(found[-1]) if found else None


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class PrivatePostgres:
    """A running private server: ``url``, and ``stop``/``start`` for outage tests."""

    def __init__(self, bindir: str, base: str, wrapper: list[str]) -> None:
        self._bindir, self._base, self._wrapper = bindir, base, wrapper
        self._data, self._port = os.path.join(base, "data"), _free_port()
        self.url = f"postgresql://{USER}@127.0.0.1:{self._port}/postgres"

    def _run(self, *argv: str, check: bool = True) -> None:
        subprocess.run(
            [*self._wrapper, *argv], check=check, capture_output=True, timeout=120, cwd=self._base
        )

    def init(self) -> None:
        initdb = f"{self._bindir}/initdb"
        self._run(initdb, "-D", self._data, "-A", "trust", "-U", USER, "--no-locale", "-E", "UTF8")

    def start(self) -> None:
        options = f"-h 127.0.0.1 -p {self._port} -k {self._base} -c fsync=off"
        self._run(
            f"{self._bindir}/pg_ctl",
            "-D",
            self._data,
            "-o",
            options,
            "-l",
            f"{self._base}/log",
            "-w",
            "start",
        )

    def stop(self) -> None:
        self._run(
            f"{self._bindir}/pg_ctl", "-D", self._data, "-m", "immediate", "stop", check=False
        )


@contextmanager
def private_postgres() -> Iterator[PrivatePostgres]:
    """A fresh, empty server (database `postgres`, trust auth), stopped afterwards."""
    bindir = _bindir()
    if bindir is None:
        if os.environ.get("CI"):
            pytest.fail("PostgreSQL is not installed (apt-get install postgresql)")
        pytest.skip("PostgreSQL is not installed")
    base = tempfile.mkdtemp(prefix="cx-pg-", dir="/var/tmp")
    wrapper: list[str] = []
    if os.geteuid() == 0:
        nobody = pwd.getpwnam("nobody")
        os.chown(base, nobody.pw_uid, nobody.pw_gid)
        wrapper = ["setpriv", f"--reuid={nobody.pw_uid}", f"--regid={nobody.pw_gid}"]
        wrapper.append("--clear-groups")
    server = PrivatePostgres(bindir, base, wrapper)
    try:
        server.init()
        server.start()
        yield server
    finally:
        server.stop()
        shutil.rmtree(base, ignore_errors=True)
