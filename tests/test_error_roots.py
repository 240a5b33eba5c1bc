"""One error tree per layer: every exception class codexexec defines descends from its
package's root, so a caller can catch one layer's failures with one clause, and no two
classes share a name."""

from __future__ import annotations

import importlib
import inspect
import pkgutil
from collections import defaultdict

import codexexec

# The root of each package (rpc/ speaks protocol/'s messages and shares its root).
ROOTS = {
    "cli": "codexexec.cli.errors:CliError",
    "client": "codexexec.client.errors:ExecServerError",
    "environments": "codexexec.environments.errors:EnvironmentsError",
    "http1": "codexexec.http1.errors:Http1Error",
    "network": "codexexec.network.errors:NetworkError",
    "noise": "codexexec.noise.errors:NoiseError",
    "protocol": "codexexec.protocol.errors:ProtocolError",
    "rpc": "codexexec.protocol.errors:ProtocolError",
    "relay": "codexexec.relay.errors:RelayError",
    "remote": "codexexec.remote.errors:RemoteError",
    "rendezvous": "codexexec.rendezvous.errors:RendezvousError",
    "sandbox": "codexexec.sandbox.errors:SandboxError",
    "server": "codexexec.server.errors:ServerError",
    "transport": "codexexec.transport.errors:TransportError",
}


def _root(spec: str) -> type[BaseException]:
    module, name = spec.split(":")
    root: type[BaseException] = getattr(importlib.import_module(module), name)
    return root


def _defined_exceptions() -> list[tuple[str, type[BaseException]]]:
    found = []
    for info in pkgutil.walk_packages(codexexec.__path__, "codexexec."):
        if info.name.endswith("__main__"):
            continue
        module = importlib.import_module(info.name)
        for _, cls in inspect.getmembers(module, inspect.isclass):
            if cls.__module__ == info.name and issubclass(cls, BaseException):
                found.append((info.name, cls))
    return found


def test_every_exception_descends_from_its_layers_root() -> None:
    strays = []
    for module, cls in _defined_exceptions():
        package = module.split(".")[1]
        if package not in ROOTS:
            strays.append(f"{module}.{cls.__name__} (no layer)")
        elif not issubclass(cls, _root(ROOTS[package])):
            strays.append(f"{module}.{cls.__name__} (not under {ROOTS[package]})")
    assert strays == []


def test_no_two_exceptions_share_a_name() -> None:
    by_name = defaultdict(set)
    for module, cls in _defined_exceptions():
        by_name[cls.__name__].add(module)
    assert {name: places for name, places in by_name.items() if len(places) > 1} == {}
