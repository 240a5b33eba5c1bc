"""`fs get -r` and `fs put -r`: a directory tree, file by file, with one progress bar.

Like `cp -r SRC DEST`: a DEST that is an existing directory receives SRC by its name,
any other DEST becomes the copy. Symbolic links are not followed (they are skipped with a
note): a copy never reaches outside the tree it was asked for. A remote tree is trusted no
more than a remote file: an entry whose path would land outside the local destination is
refused.
"""

from __future__ import annotations

import asyncio
import os
import stat
import sys

from codexexec.cli.errors import CliError, fail
from codexexec.cli.fs_session import (
    METADATA_IN_FLIGHT,
    FsTarget,
    destination_for,
    download,
    fs_client,
    progress,
    upload,
)
from codexexec.client.client import ExecServerClient
from codexexec.client.errors import ExecServerError

# fs/walk's limits for one copy; a larger tree is refused rather than copied in part.
MAX_ENTRIES = 50_000


def _note(text: str) -> None:
    sys.stderr.write(f"codexexec: {text}\n")


async def run_get_tree(target: FsTarget, local: str | None, *, quiet: bool) -> int:
    async with fs_client(target) as client:
        meta = await client.files.metadata(target.path)
        root = destination_for(local, target.path)
        if not meta.is_directory:
            with progress(os.path.basename(target.path), meta.size, not quiet) as advance:
                await download(client, target.path, root, advance)
            return 0
        walk = await client.files.walk(target.path, max_entries=MAX_ENTRIES)
        if walk.truncated:
            fail(f"{target.path}: more than {MAX_ENTRIES} entries; copy part of it at a time")
        for error in walk.errors:
            _note(f"skipped {error.path}: {error.message}")
        base = await asyncio.to_thread(_made, root)
        try:
            directories, files = plan_get(
                [(e.path, e.kind) for e in walk.entries], target.path, base
            )
        except OutsideTree as exc:
            fail(str(exc))
        await asyncio.to_thread(_make_all, directories)
        sizes = await _sizes(client, [remote for remote, _ in files])
        with progress(os.path.basename(target.path), sum(sizes), not quiet) as advance:
            for remote, local_path in files:
                await download(client, remote, local_path, advance)
    return 0


class OutsideTree(CliError, ValueError):
    """A remote entry that would land outside the local destination."""


def plan_get(
    entries: list[tuple[str, str]], remote_root: str, local_root: str
) -> tuple[list[str], list[tuple[str, str]]]:
    """Local directories to make and (remote, local) files to copy, for a walk's
    (path, kind) entries; anything that is neither is skipped with a note."""
    directories: list[str] = []
    files: list[tuple[str, str]] = []
    for path, kind in entries:
        relative = os.path.relpath(path, remote_root)
        local_path = os.path.normpath(os.path.join(local_root, relative))
        if not local_path.startswith(local_root + os.sep):
            raise OutsideTree(f"{path}: outside {remote_root}; refusing to copy it")
        if kind == "directory":
            directories.append(local_path)
        elif kind == "file":
            files.append((path, local_path))
        else:
            _note(f"skipped {path} ({kind})")
    return directories, files


def _made(path: str) -> str:
    os.makedirs(path, exist_ok=True)
    return os.path.realpath(path)


def _make_all(directories: list[str]) -> None:
    for directory in directories:
        os.makedirs(directory, exist_ok=True)


async def _sizes(client: ExecServerClient, paths: list[str]) -> list[int]:
    slots = asyncio.Semaphore(METADATA_IN_FLIGHT)

    async def size(path: str) -> int:
        async with slots:
            try:
                return (await client.files.metadata(path)).size
            except ExecServerError:
                return 0  # the copy itself will say what is wrong with it

    return list(await asyncio.gather(*(size(path) for path in paths)))


async def run_put_tree(local: str, target: FsTarget, *, quiet: bool) -> int:
    try:
        mode = (await asyncio.to_thread(os.lstat, local)).st_mode
    except OSError as exc:
        fail(f"{local}: {exc.strerror}")
    name = os.path.basename(local.rstrip("/"))
    async with fs_client(target) as client:
        try:
            into = (await client.files.metadata(target.path)).is_directory
        except ExecServerError:
            into = False  # it does not exist yet: it becomes the copy
        root = f"{target.path.rstrip('/')}/{name}" if into else target.path
        if not stat.S_ISDIR(mode):
            await _put_files(client, local, [("", None)], root, name, quiet)
            return 0
        directories, files = await asyncio.to_thread(_local_tree, local)
        await client.files.create_directory(root, recursive=True)
        for relative in directories:
            await client.files.create_directory(f"{root}/{relative}", recursive=True)
        await _put_files(client, local, files, root, name, quiet)
    return 0


async def _put_files(
    client: ExecServerClient,
    local: str,
    files: list[tuple[str, int | None]],
    root: str,
    label: str,
    quiet: bool,
) -> None:
    """Each (relative path, size) under ``local`` to the same under ``root`` (""/None: the
    file ``local`` itself, to ``root``)."""
    sized = [
        (relative, size if size is not None else (await asyncio.to_thread(os.stat, local)).st_size)
        for relative, size in files
    ]
    with progress(label, sum(size for _, size in sized), not quiet) as advance:
        for relative, size in sized:
            path = f"{local.rstrip('/')}/{relative}" if relative else local
            source = await asyncio.to_thread(open, path, "rb")
            with source:
                remote = f"{root}/{relative}" if relative else root
                await upload(client, source, size, remote, advance)


def _local_tree(local: str) -> tuple[list[str], list[tuple[str, int | None]]]:
    """(directories, (file, size)) under ``local``, relative, parents first; links skipped."""
    directories: list[str] = []
    files: list[tuple[str, int | None]] = []
    for here, subdirs, names in os.walk(local, followlinks=False):
        relative_here = os.path.relpath(here, local)
        for name in sorted(subdirs):
            path = os.path.join(here, name)
            if os.path.islink(path):
                _note(f"skipped {path} (a symbolic link)")
                continue
            directories.append(os.path.normpath(os.path.join(relative_here, name)))
        subdirs[:] = sorted(d for d in subdirs if not os.path.islink(os.path.join(here, d)))
        for name in sorted(names):
            path = os.path.join(here, name)
            info = os.lstat(path)
            if not stat.S_ISREG(info.st_mode):
                _note(f"skipped {path} (not a regular file)")
                continue
            files.append((os.path.normpath(os.path.join(relative_here, name)), info.st_size))
    return directories, files
