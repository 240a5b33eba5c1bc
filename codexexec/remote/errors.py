"""Remote environments: the registry client and its credentials."""

from __future__ import annotations


class RemoteError(Exception):
    """The root of every error remote/ raises."""
