"""Relay frames and the streams they carry."""

from __future__ import annotations


class RelayError(Exception):
    """The root of every error relay/ raises."""
