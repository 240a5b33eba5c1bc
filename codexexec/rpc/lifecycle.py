"""The exec-server connection's lifecycle gate, one for every endpoint that speaks for an
executor (the server's handler, the stdio keeper): `initialize` once, then the
`initialized` notification, then the other methods — refused before, in Codex's words,
which name the method's family. Pure: the callers apply the answers.
"""

from __future__ import annotations

from codexexec.protocol.jsonrpc import INVALID_REQUEST, RpcError

# The family word Codex puts in its lifecycle errors, by method prefix.
FAMILIES = {
    "process/": "exec",
    "fs/": "filesystem",
    "http/": "http",
    "environment/info": "environment info",
    "environment/status": "environment status",
    "environmentConfig/": "environment config",
}
INITIALIZE_TWICE = "initialize may only be sent once per connection"
INITIALIZED_TOO_EARLY = "received `initialized` notification before `initialize`"


class Lifecycle:
    def __init__(self) -> None:
        self.initialize_received = False
        self.initialized = False

    def check_initialize(self) -> None:
        """Before answering `initialize`: RpcError when it came already."""
        if self.initialize_received:
            raise RpcError(INVALID_REQUEST, INITIALIZE_TWICE)

    def initialize_answered(self) -> None:
        self.initialize_received = True

    def on_initialized(self) -> bool:
        """The `initialized` notification: False when it came before `initialize` (the
        connection is then closed)."""
        if not self.initialize_received:
            return False
        self.initialized = True
        return True

    def check(self, method: str) -> None:
        """Before any other method: RpcError unless both steps are done."""
        family = next((f for p, f in FAMILIES.items() if method.startswith(p)), method)
        if not self.initialize_received:
            raise RpcError(
                INVALID_REQUEST, f"client must call initialize before using {family} methods"
            )
        if not self.initialized:
            raise RpcError(
                INVALID_REQUEST, f"client must send initialized before using {family} methods"
            )
