"""Logging set-up for codexexec processes: never a secret, never a payload.

Library loggers that dump raw frames or headers at DEBUG (websockets does: both
``Authorization`` headers and message payloads) are held at INFO, and every record is
scrubbed of the secrets this process knows about before any handler sees it.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterable

_CHATTY_LIBRARIES = ("websockets",)
REDACTED = "[redacted]"


class RedactingFilter(logging.Filter):
    def __init__(self, secrets: Iterable[str]) -> None:
        super().__init__()
        self._secrets = [s for s in secrets if s]

    def filter(self, record: logging.LogRecord) -> bool:
        if not self._secrets:
            return True
        message = record.getMessage()
        scrubbed = message
        for secret in self._secrets:
            scrubbed = scrubbed.replace(secret, REDACTED)
        if scrubbed != message or record.exc_info:
            record.msg, record.args = scrubbed, None
            # A traceback may quote locals or arguments; keep only its type and message.
            if record.exc_info and record.exc_info[1] is not None:
                error = record.exc_info[1]
                text = f"{type(error).__name__}: {error}"
                for secret in self._secrets:
                    text = text.replace(secret, REDACTED)
                record.msg = f"{record.msg} ({text})"
                record.exc_info = None
                record.exc_text = None
        return True


def configure_logging(level: str, *, secrets: Iterable[str] = ()) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    handler.addFilter(RedactingFilter(secrets))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    numeric = logging.getLevelName(level.upper())
    root.setLevel(numeric if isinstance(numeric, int) else logging.WARNING)
    for name in _CHATTY_LIBRARIES:
        logging.getLogger(name).setLevel(max(root.level, logging.INFO))


def configure_client_logging() -> None:
    """For `exec` and `read`: silent unless CODEXEXEC_LOG names a level.

    The local environment runs a server inside the CLI; its diagnostics are for
    operators, and must not mix with the command's own output.
    """
    import os

    level = os.environ.get("CODEXEXEC_LOG")
    if level:
        configure_logging(level)
    else:
        logging.disable(logging.CRITICAL)
