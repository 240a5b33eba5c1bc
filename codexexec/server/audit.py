"""The executor's audit log (`serve --audit-log FILE`): one JSON line per process start and
end, `fs/*` write and `http/request`, appended and fsync'ed before the operation's answer,
rotated by size (FILE.1 … FILE.N).

What a line holds is chosen so the log can be shared: who (connection, session, peer or
relay stream), what (argv, cwd, path, method and URL without its query), under which
confinement (the sandbox as enforced, the network mode), and how it ended (exit code,
denial reason, duration, error). Never environment values, request bodies, output,
tokens or a URL's query string.
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

DEFAULT_MAX_BYTES = 64 * 1024 * 1024
DEFAULT_KEEP = 5
# A line is cut to this; argv of megabytes must not make the log unusable.
MAX_FIELD_CHARS = 4096


class AuditLog:
    def __init__(
        self, path: Path, *, max_bytes: int = DEFAULT_MAX_BYTES, keep: int = DEFAULT_KEEP
    ) -> None:
        self.path = path
        self.max_bytes = max_bytes
        self.keep = keep
        self._lock = threading.Lock()
        self._fd = self._open()

    def _open(self) -> int:
        return os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)

    def write(self, event: str, fields: Mapping[str, Any]) -> None:
        record = {"time": _now(), "event": event, **{k: _bounded(v) for k, v in fields.items()}}
        line = (json.dumps(record, separators=(",", ":"), ensure_ascii=False) + "\n").encode()
        with self._lock:
            if os.fstat(self._fd).st_size + len(line) > self.max_bytes:
                self._rotate()
            os.write(self._fd, line)
            os.fsync(self._fd)

    def _rotate(self) -> None:
        os.close(self._fd)
        for index in range(self.keep - 1, 0, -1):
            older = Path(f"{self.path}.{index}")
            if older.exists():
                older.replace(f"{self.path}.{index + 1}")
        if self.path.exists():
            self.path.replace(f"{self.path}.1")
        self._fd = self._open()

    def close(self) -> None:
        with self._lock:
            os.close(self._fd)


class Auditor:
    """One connection's view of the log: every line carries who asked. A no-op without a
    log, so callers need not ask whether there is one."""

    def __init__(self, log: AuditLog | None, connection: str, peer: str) -> None:
        self._log = log
        self.connection = connection
        self.peer = peer
        self.session = ""

    @property
    def enabled(self) -> bool:
        return self._log is not None

    def write(self, event: str, **fields: Any) -> None:
        if self._log is not None:
            who = {"connection": self.connection, "session": self.session, "peer": self.peer}
            self._log.write(event, {**who, **fields})


NO_AUDIT = Auditor(None, "", "")


def elapsed_ms(started: float) -> float:
    return round((time.monotonic() - started) * 1000, 1)


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _bounded(value: Any) -> Any:
    if isinstance(value, str) and len(value) > MAX_FIELD_CHARS:
        return value[:MAX_FIELD_CHARS] + "…"
    if isinstance(value, list):
        return [_bounded(item) for item in value[:256]]
    return value
