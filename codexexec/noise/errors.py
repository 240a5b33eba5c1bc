"""The root of noise/'s errors."""

from __future__ import annotations


class NoiseError(Exception):
    """The root of every Noise failure. Any such error during a stream is fatal for it."""
