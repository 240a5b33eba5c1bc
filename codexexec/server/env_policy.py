"""The child environment: Codex's shell-environment policy, then the request's overlay.

Order (as Codex applies it): inherit all / core / none from the executor's own
environment, drop names matching ``*KEY*``/``*SECRET*``/``*TOKEN*`` unless
``ignoreDefaultExcludes``, drop ``exclude`` patterns, apply ``set``, keep only
``includeOnly`` patterns when given; finally the request's ``env`` wins.
Patterns are case-insensitive globs. The executor's own credentials are never inherited,
whatever the policy says (secrets.py).
"""

from __future__ import annotations

import fnmatch
import os
from collections.abc import Iterable, Mapping

from codexexec.protocol.messages import EnvPolicy
from codexexec.server.secrets import without_secrets

# As measured on Codex 0.169.0 (docs/codex-0.169-observed.md §12).
CORE_VARIABLES = frozenset(
    {
        "HOME",
        "LANG",
        "LC_ALL",
        "LC_CTYPE",
        "LOGNAME",
        "PATH",
        "SHELL",
        "TEMP",
        "TMP",
        "TMPDIR",
        "USER",
    }
)
DEFAULT_EXCLUDES = ("*KEY*", "*SECRET*", "*TOKEN*")


def _matches_any(name: str, patterns: Iterable[str]) -> bool:
    upper = name.upper()
    return any(fnmatch.fnmatchcase(upper, pattern.upper()) for pattern in patterns)


def build_child_env(
    policy: EnvPolicy | None,
    overlay: Mapping[str, str],
    executor_env: Mapping[str, str] | None = None,
) -> dict[str, str]:
    if policy is None:
        return dict(overlay)
    source = without_secrets(os.environ if executor_env is None else executor_env)
    if policy.inherit == "all":
        env = dict(source)
    elif policy.inherit == "core":
        env = {name: value for name, value in source.items() if name in CORE_VARIABLES}
    else:
        env = {}
    if not policy.ignore_default_excludes:
        env = {k: v for k, v in env.items() if not _matches_any(k, DEFAULT_EXCLUDES)}
    if policy.exclude:
        env = {k: v for k, v in env.items() if not _matches_any(k, policy.exclude)}
    env.update(policy.set)
    if policy.include_only:
        env = {k: v for k, v in env.items() if _matches_any(k, policy.include_only)}
    env.update(overlay)
    return env
