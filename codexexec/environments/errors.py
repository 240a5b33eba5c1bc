"""Named environments: their config, their keepers, reaching them."""

from __future__ import annotations


class EnvironmentsError(Exception):
    """The root of every error environments/ raises."""
