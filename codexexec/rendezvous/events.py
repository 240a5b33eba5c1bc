"""The rendezvous's log lines: ``event key=value`` on the ``codexexec.rendezvous`` logger.

Values are bounded and quoted when they are not simple, so a peer-supplied string cannot
forge a field or flood a line. Callers never pass a token, an authorization, a key, a signed
URL or a payload.
"""

from __future__ import annotations

import json
import logging
import re

log = logging.getLogger("codexexec.rendezvous")

_SIMPLE_VALUE = re.compile(r"[A-Za-z0-9._:/@+-]+")
_MAX_LOGGED_VALUE = 160


def _fmt(value: object) -> str:
    text = str(value)
    if len(text) > _MAX_LOGGED_VALUE:  # peer-supplied strings (stream ids, headers) are bounded
        text = text[:_MAX_LOGGED_VALUE] + "…"
    if _SIMPLE_VALUE.fullmatch(text):
        return text
    return json.dumps(text)


def event(level: int, name: str, **fields: object) -> None:
    if log.isEnabledFor(level):
        text = " ".join(f"{key}={_fmt(value)}" for key, value in fields.items())
        log.log(
            level,
            "%s %s",
            name,
            text,
            extra={"rendezvous_event": name, "rendezvous_fields": fields},
        )
