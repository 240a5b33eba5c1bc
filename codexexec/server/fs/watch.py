"""fs/watchMissing: tell the client once when a path it found missing appears.

A harness caches "this path is absent" (no AGENTS.md, no .git) and asks to hear when
that stops being true. The answer says whether the watch holds: ``watching: false``
when a "missing" path already exists or the ``present`` path is gone, so the client
re-checks at once. A held watch is polled, and fires ``fs/missingChanged {watchId}``
once, then ends. Codex 0.169.0 answers the same way (it was not seen to notify).
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

POLL_SECONDS = 1.0
# A connection watches at most this many paths; past it a watch is refused (watching: false).
MAX_WATCHED_PATHS = 4096

Notify = Callable[[str, Any], Awaitable[None]]


@dataclass(frozen=True, slots=True)
class _Watch:
    missing: tuple[str, ...]
    present: str | None

    def changed(self) -> bool:
        if any(os.path.lexists(path) for path in self.missing):
            return True
        return self.present is not None and not os.path.lexists(self.present)


class MissingWatches:
    def __init__(self, notify: Notify) -> None:
        self._notify = notify
        self._watches: dict[int, _Watch] = {}
        self._poller: asyncio.Task[None] | None = None

    def watch(self, watch_id: int, missing: list[str], present: str | None) -> dict[str, Any]:
        self._watches.pop(watch_id, None)
        watch = _Watch(tuple(missing), present)
        in_use = sum(len(w.missing) for w in self._watches.values())
        if not missing or in_use + len(missing) > MAX_WATCHED_PATHS or watch.changed():
            return {"watching": False}
        self._watches[watch_id] = watch
        if self._poller is None or self._poller.done():
            self._poller = asyncio.create_task(self._poll())
        return {"watching": True}

    async def _poll(self) -> None:
        while self._watches:
            await asyncio.sleep(POLL_SECONDS)
            fired = await asyncio.to_thread(self._fired)
            for watch_id in fired:
                self._watches.pop(watch_id, None)
                try:
                    await self._notify("fs/missingChanged", {"watchId": watch_id})
                except ConnectionError:
                    return

    def _fired(self) -> list[int]:
        return [watch_id for watch_id, watch in list(self._watches.items()) if watch.changed()]

    def close(self) -> None:
        self._watches.clear()
        if self._poller is not None:
            self._poller.cancel()
