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


@contextmanager
def private_postgres() -> Iterator[str]:
    """Yields the URL of a fresh, empty server (database `postgres`, trust auth)."""
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
    data, port = os.path.join(base, "data"), _free_port()

    def run(*argv: str) -> None:
        subprocess.run([*wrapper, *argv], check=True, capture_output=True, timeout=120, cwd=base)

    run(f"{bindir}/initdb", "-D", data, "-A", "trust", "-U", USER, "--no-locale", "-E", "UTF8")
    options = f"-h 127.0.0.1 -p {port} -k {base} -c fsync=off -c full_page_writes=off"
    run(f"{bindir}/pg_ctl", "-D", data, "-o", options, "-l", f"{base}/log", "-w", "start")
    try:
        yield f"postgresql://{USER}@127.0.0.1:{port}/postgres"
    finally:
        subprocess.run(
            [*wrapper, f"{bindir}/pg_ctl", "-D", data, "-m", "immediate", "stop"],
            capture_output=True,
            timeout=60,
            cwd=base,
        )
        shutil.rmtree(base, ignore_errors=True)
