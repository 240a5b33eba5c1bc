"""codexexec: a Codex-compatible remote command executor (exec-server, client, CLI)."""

__version__ = "0.1.0"
