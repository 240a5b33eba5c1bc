"""Process handles: one string that names environment, session and process.

    ws://127.0.0.1:4000#4f0c9c7e-…-2b1d/cx-1a2b3c4d5e6f

so `codexexec read HANDLE` can resume the session and find the process with nothing
else to go on.
"""

from __future__ import annotations

import msgspec

from codexexec.client.errors import ExecServerError


class InvalidHandle(ExecServerError, ValueError):
    pass


class ProcessHandle(msgspec.Struct, frozen=True):
    environment: str
    session_id: str
    process_id: str

    def __str__(self) -> str:
        return f"{self.environment}#{self.session_id}/{self.process_id}"

    @classmethod
    def parse(cls, text: str) -> ProcessHandle:
        environment, sep, rest = text.rpartition("#")
        session_id, slash, process_id = rest.partition("/")
        if not sep or not slash or not environment or not session_id or not process_id:
            raise InvalidHandle(
                f"`{text}` is not a process handle (expected ENVIRONMENT#SESSION/PROCESS, "
                "as printed by `codexexec exec --detach`)"
            )
        return cls(environment, session_id, process_id)
