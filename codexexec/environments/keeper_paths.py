"""Where a stdio environment's keeper lives: a private runtime directory and its files.

One keeper per environment id and configuration (program, args, env, cwd): a changed
entry gets a keeper of its own. The directory is ``$CODEXEXEC_HOME/run``, else
``$XDG_RUNTIME_DIR/codexexec``, else ``/tmp/codexexec-UID``, and only its owner may
enter it (0700): the socket inside gives whoever reaches it the environment's shell.
"""

from __future__ import annotations

import hashlib
import json
import os
import stat
import tempfile
from collections.abc import Mapping
from pathlib import Path

import msgspec

from codexexec.environments.config import HOME_ENV, StdioSpec
from codexexec.environments.errors import EnvironmentsError

# sun_path holds 108 bytes on Linux and 104 on macOS; stay clear of both.
MAX_SOCKET_PATH = 100
LAST_WORDS_BYTES = 1024


class RuntimeDirError(EnvironmentsError, OSError):
    pass


def runtime_dir(environ: Mapping[str, str] | None = None) -> Path:
    env = os.environ if environ is None else environ
    if env.get(HOME_ENV):
        return Path(env[HOME_ENV]) / "run"
    if env.get("XDG_RUNTIME_DIR"):
        return Path(env["XDG_RUNTIME_DIR"]) / "codexexec"
    return _fallback_dir()


def _fallback_dir() -> Path:
    return Path(tempfile.gettempdir()) / f"codexexec-{os.getuid()}"


def private_dir(path: Path) -> Path:
    """``path``, created 0700; refused when someone else owns it or may enter it."""
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    info = path.lstat()
    if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.getuid():
        raise RuntimeDirError(f"{path} is not a directory of this user")
    if stat.S_IMODE(info.st_mode) & 0o077:
        os.chmod(path, 0o700)
    return path


def fingerprint(spec: StdioSpec) -> str:
    """A short digest of what makes the exec-server: id, program, args, env and cwd."""
    material = json.dumps(
        [spec.id, spec.program, list(spec.args), sorted(spec.env.items()), spec.cwd]
    )
    return hashlib.sha256(material.encode()).hexdigest()[:20]


class KeeperPaths(msgspec.Struct, frozen=True):
    directory: Path
    socket: Path
    lock: Path
    log: Path
    # One line on why the keeper ended, for a later `read` to explain a vanished session.
    last_words: Path

    @classmethod
    def for_spec(cls, spec: StdioSpec, environ: Mapping[str, str] | None = None) -> KeeperPaths:
        directory = runtime_dir(environ)
        name = f"k-{fingerprint(spec)}"
        socket = directory / f"{name}.sock"
        if len(str(socket)) > MAX_SOCKET_PATH:
            # A deep home: the socket goes to the short fallback directory, named after
            # the runtime directory too so two homes never share one keeper.
            digest = hashlib.sha256(f"{directory}\0{name}".encode()).hexdigest()[:20]
            socket = _fallback_dir() / f"k-{digest}.sock"
        return cls(
            directory=directory,
            socket=socket,
            lock=directory / f"{name}.lock",
            log=directory / f"{name}.log",
            last_words=directory / f"{name}.exit",
        )

    def prepare(self) -> None:
        private_dir(self.directory)
        private_dir(self.socket.parent)

    def read_last_words(self) -> str | None:
        try:
            with open(self.last_words, "rb") as file:
                text = file.read(LAST_WORDS_BYTES).decode("utf-8", "replace").strip()
        except OSError:
            return None
        return text or None
