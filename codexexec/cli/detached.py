"""The CLI's record of the processes `exec --detach` started, for `ps` (and `kill`).

One JSON line per process in ``detached.jsonl`` under the state directory (0600): the
handle, the command and when it started — never its environment or output. The servers
hold the truth (state, exit code); this only remembers where to ask. Bounded: the newest
``MAX_RECORDS`` are kept.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

from codexexec.file_lock import lock_attempts
from codexexec.state_dir import ensure_private_dir, state_dir

RECORD_FILE = "detached.jsonl"
MAX_RECORDS = 200


@dataclass(frozen=True, slots=True)
class Detached:
    handle: str
    argv: list[str]
    started: float  # Unix seconds

    def to_json(self) -> dict[str, object]:
        return {"handle": self.handle, "argv": self.argv, "started": self.started}


def _path(environ: Mapping[str, str] | None = None) -> Path:
    return state_dir(environ) / RECORD_FILE


def load(environ: Mapping[str, str] | None = None) -> list[Detached]:
    """The records, oldest first; lines that are not records are skipped."""
    try:
        text = _path(environ).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return []
    records = []
    for line in text.splitlines():
        with contextlib.suppress(ValueError, TypeError, KeyError):
            data = json.loads(line)
            argv = [str(arg) for arg in data["argv"]]
            records.append(Detached(str(data["handle"]), argv, float(data["started"])))
    return records


def save(records: list[Detached], environ: Mapping[str, str] | None = None) -> None:
    path = _path(environ)
    ensure_private_dir(path.parent)
    kept = records[-MAX_RECORDS:]
    # A name of its own per writer (mkstemp: 0600), so two at once never share one.
    fd, temporary = tempfile.mkstemp(prefix=".detached-", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.writelines(json.dumps(record.to_json()) + "\n" for record in kept)
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise


def remember(record: Detached, environ: Mapping[str, str] | None = None) -> None:
    with _locked(environ):
        save([*load(environ), record], environ)


def forget(handles: set[str], environ: Mapping[str, str] | None = None) -> None:
    with _locked(environ):
        save([r for r in load(environ) if r.handle not in handles], environ)


@contextlib.contextmanager
def _locked(environ: Mapping[str, str] | None) -> Iterator[None]:
    """One reader-and-writer of the record at a time (two `exec --detach` at once lose
    nothing); TimeoutError, an OSError, after 5 s."""
    path = _path(environ)
    ensure_private_dir(path.parent)
    fd = os.open(path.with_suffix(".lock"), os.O_RDWR | os.O_CREAT, 0o600)
    try:
        for _ in lock_attempts(fd, 5.0):
            time.sleep(0.02)
        yield
    finally:
        os.close(fd)  # closing releases the lock
