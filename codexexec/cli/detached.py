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
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

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
    temporary = path.with_suffix(".tmp")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.writelines(json.dumps(record.to_json()) + "\n" for record in kept)
    os.replace(temporary, path)


def remember(record: Detached, environ: Mapping[str, str] | None = None) -> None:
    save([*load(environ), record], environ)


def forget(handles: set[str], environ: Mapping[str, str] | None = None) -> None:
    save([r for r in load(environ) if r.handle not in handles], environ)
