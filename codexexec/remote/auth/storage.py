"""Codex's persisted login: ``auth.json`` or the OS keyring, as ``config.toml`` chooses.

* ``file``: ``$CODEX_HOME/auth.json``. Written back atomically (a 0600 temporary file in the
  same directory, fsync, rename), so a crash never leaves half a login.
* ``keyring``: service ``Codex Auth``, account ``cli|`` + the first 16 hex digits of the
  SHA-256 of the canonical ``CODEX_HOME`` path; the value is the same JSON, compact. Only a
  real OS keyring is used (a backend of priority >= 1): plaintext or "fail" backends are
  refused with the fix.
* ``auto``: the keyring when a real one works and holds the login, otherwise the file, and
  the user is told when a missing or failing keyring sent us to the file.
* ``ephemeral``: Codex keeps such logins in its own process memory; nothing to read here.
"""

from __future__ import annotations

import hashlib
import json
import os
import stat
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

from codexexec.remote.auth.base import AuthError
from codexexec.remote.auth.codex_home import CONFIG_FILE, STORE_SETTING, StoreMode

AUTH_FILE = "auth.json"
KEYRING_SERVICE = "Codex Auth"
MAX_AUTH_BYTES = 1 << 20
Notice = Callable[[str], None]


class Store(Protocol):
    @property
    def where(self) -> str: ...

    def load(self) -> dict[str, Any] | None: ...

    def save(self, data: dict[str, Any]) -> None: ...


def _parse(text: str, where: str) -> dict[str, Any]:
    try:
        data = json.loads(text)
    except ValueError as exc:
        line = getattr(exc, "lineno", "?")
        raise AuthError(
            f"{where} is not valid JSON (corrupt or partial near line {line}); "
            "run `codex login` again"
        ) from None
    if not isinstance(data, dict):
        raise AuthError(f"{where} does not hold a JSON object; run `codex login` again")
    return data


class FileStore:
    def __init__(self, home: Path, notice: Notice) -> None:
        self.path = home / AUTH_FILE
        self._notice = notice

    @property
    def where(self) -> str:
        return str(self.path)

    def load(self) -> dict[str, Any] | None:
        try:
            with self.path.open("rb") as handle:
                mode = os.fstat(handle.fileno()).st_mode
                raw = handle.read(MAX_AUTH_BYTES + 1)
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise AuthError(f"cannot read {self.path}: {exc.strerror}") from None
        if mode & (stat.S_IRWXG | stat.S_IRWXO):
            self._notice(
                f"warning: {self.path} is accessible to other users (mode "
                f"{stat.S_IMODE(mode):04o}); run `chmod 600 {self.path}`"
            )
        if len(raw) > MAX_AUTH_BYTES:
            raise AuthError(f"{self.path} is larger than 1 MiB; run `codex login` again")
        return _parse(raw.decode("utf-8", "replace"), str(self.path))

    def save(self, data: dict[str, Any]) -> None:
        target = Path(os.path.realpath(self.path))  # through a symlink, keep the link
        try:
            if target.exists() and target.stat().st_nlink > 1:
                raise AuthError(
                    f"{target} has other hard links; a safe rewrite would split them, so the "
                    "refreshed login was not saved"
                )
            target.parent.mkdir(parents=True, exist_ok=True)
            temporary = target.with_name(f".{target.name}.{os.getpid()}.tmp")
            fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            try:
                with os.fdopen(fd, "w", encoding="utf-8") as handle:
                    handle.write(json.dumps(data, indent=2, ensure_ascii=False))
                    handle.flush()
                    os.fsync(handle.fileno())
                os.replace(temporary, target)
            except BaseException:
                temporary.unlink(missing_ok=True)
                raise
            directory = os.open(target.parent, os.O_RDONLY)
            try:
                os.fsync(directory)
            finally:
                os.close(directory)
        except OSError as exc:
            raise AuthError(f"cannot write {target}: {exc.strerror}") from None


def keyring_account(home: Path) -> str:
    try:
        canonical = home.resolve(strict=True)
    except OSError:
        canonical = home
    return "cli|" + hashlib.sha256(str(canonical).encode()).hexdigest()[:16]


def keyring_backend_name() -> tuple[Any, str, bool]:
    """The backend `keyring` resolved, its dotted name, and whether it is a real keyring."""
    import keyring

    try:
        backend = keyring.get_keyring()
    except Exception as exc:  # e.g. PYTHON_KEYRING_BACKEND names a class that cannot load
        return None, f"no backend ({type(exc).__name__} while loading one)", False
    name = f"{type(backend).__module__}.{type(backend).__qualname__}"
    try:
        priority = float(backend.priority)
    except Exception:  # a backend that cannot even say its priority is not usable
        priority = 0.0
    return backend, name, priority >= 1


class KeyringStore:
    def __init__(self, home: Path, backend: Any, backend_name: str) -> None:
        self._account = keyring_account(home)
        self._backend = backend
        self._name = backend_name

    @property
    def where(self) -> str:
        return f"keyring ({self._name}, service {KEYRING_SERVICE!r}, account {self._account!r})"

    def load(self) -> dict[str, Any] | None:
        try:
            value = self._backend.get_password(KEYRING_SERVICE, self._account)
        except Exception as exc:  # keyring backends raise anything from D-Bus to parsers
            raise AuthError(
                f"failed to load CLI auth from keyring {self._name}: {type(exc).__name__}"
            ) from None
        return None if value is None else _parse(value, self.where)

    def save(self, data: dict[str, Any]) -> None:
        text = json.dumps(data, separators=(",", ":"), ensure_ascii=False)
        try:
            self._backend.set_password(KEYRING_SERVICE, self._account, text)
        except Exception as exc:
            raise AuthError(
                f"failed to write OAuth tokens to keyring {self._name}: {type(exc).__name__}"
            ) from None


def load_login(home: Path, mode: StoreMode, notice: Notice) -> tuple[dict[str, Any], Store] | None:
    """The stored login and the store it came from (refreshes go back there), or None."""
    file_store = FileStore(home, notice)
    if mode == "file":
        return _found(file_store)
    if mode == "ephemeral":
        return None
    backend, name, real = keyring_backend_name()
    config = home / CONFIG_FILE
    if mode == "keyring":
        if not real:
            raise AuthError(
                f'{config} sets {STORE_SETTING} = "keyring" but no OS keyring is available '
                f"(the keyring library chose {name}, which is not a real keyring); unlock or "
                f'install one, or set {STORE_SETTING} = "file"'
            )
        return _found(KeyringStore(home, backend, name))
    if not real:
        notice(
            f'no usable OS keyring ({name}); {STORE_SETTING} = "auto" falls back to '
            f"{file_store.path}"
        )
        return _found(file_store)
    try:
        found = _found(KeyringStore(home, backend, name))
    except AuthError as exc:
        notice(f'{exc}; {STORE_SETTING} = "auto" falls back to {file_store.path}')
        return _found(file_store)
    return found if found is not None else _found(file_store)


def _found(store: Store) -> tuple[dict[str, Any], Store] | None:
    data = store.load()
    return None if data is None else (data, store)
