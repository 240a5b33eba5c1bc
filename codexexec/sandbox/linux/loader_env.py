"""Which of a command's environment variables may reach the sandbox's launchers.

bubblewrap and the Python stages (``confine.py``, ``netns_bridge.py``) run on
the host before anything is confined, as whoever runs the executor. The dynamic loader
and libc of those programs obey variables such as ``LD_PRELOAD`` (code of the caller's
choosing, loaded unconfined), ``LD_DEBUG_OUTPUT`` (a file written wherever the executor
may write) or ``GLIBC_TUNABLES``. So the launchers are started without them, and the
command gets them back once it is inside (docs/sandbox-hardening.md §7). Pure.
"""

from __future__ import annotations

from collections.abc import Mapping

from codexexec.sandbox.policy import SandboxPolicyError

# glibc's own list of what it drops for a setuid program (its "unsecure" variables),
# besides every LD_* and MALLOC_* name.
_UNSECURE = frozenset(
    {
        "GCONV_PATH",
        "GETCONF_DIR",
        "GLIBC_TUNABLES",
        "HOSTALIASES",
        "LOCALDOMAIN",
        "LOCPATH",
        "NIS_PATH",
        "NLSPATH",
        "RESOLV_HOST_CONF",
        "RES_OPTIONS",
        "TMPDIR",
        "TZDIR",
    }
)
_PREFIXES = ("LD_", "MALLOC_")


def steers_loader(name: str) -> bool:
    return name in _UNSECURE or name.startswith(_PREFIXES)


def split(env: Mapping[str, str]) -> tuple[dict[str, str], dict[str, str]]:
    """(what a launcher may be started with, what only the command may have).

    Held variables travel NUL-separated to bwrap's ``--args`` and the stages, so a NUL in
    a name or value (or ``=`` in a name) would become arguments of their own: refused here,
    whatever checked the request before (the value is never quoted: it may be a secret)."""
    launcher: dict[str, str] = {}
    held: dict[str, str] = {}
    for name, value in env.items():
        if not name or "=" in name or "\0" in name or "\0" in value:
            raise SandboxPolicyError(f"environment variable {name!r}: not a name and value")
        (held if steers_loader(name) else launcher)[name] = value
    return launcher, held
