"""Confining a command: the intent, its resolution and the OS mechanisms."""

from __future__ import annotations


class SandboxError(Exception):
    """The root of every error sandbox/ raises."""
