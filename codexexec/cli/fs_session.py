"""What `codexexec fs` does once its arguments are parsed: connect, call, render.

Errors a user can act on leave as one line on stderr naming the path.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import stat
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from typing import Any, BinaryIO

from codexexec.cli.errors import fail
from codexexec.client.client import ExecServerClient
from codexexec.client.errors import ExecServerError
from codexexec.client.files import FileMetadata
from codexexec.protocol.limits import FS_MAX_BLOCK_BYTES

# Transfers larger than this get a progress bar (on stderr).
PROGRESS_ABOVE_BYTES = 1024 * 1024
# Metadata requests `ls` keeps in flight for a directory's entries.
METADATA_IN_FLIGHT = 32


@dataclass(frozen=True, slots=True)
class FsTarget:
    env: str | None  # None: the configured default environment
    path: str


def parse_target(text: str, registry: str | None) -> FsTarget:
    """``ENV:PATH``: the path is everything from the first ``:/`` after ENV's own ``://``."""
    env: str | None = None
    path = text
    if not text.startswith("/"):
        scheme = text.find("://")
        cut = text.find(":/", scheme + 3 if scheme >= 0 else 0)
        if cut <= 0:
            fail(f"`{text}` is not ENV:PATH with an absolute PATH (e.g. devbox:/tmp)", 2)
        env, path = text[:cut], text[cut + 1 :]
    if registry is not None:
        if env is None:
            fail("--registry needs ENV:PATH (the environment's id at that registry)", 2)
        env = f"{env}@{registry}"
    return FsTarget(env, path)


@contextlib.asynccontextmanager
async def fs_client(target: FsTarget) -> AsyncIterator[ExecServerClient]:
    from codexexec.cli.targets import chosen_environment, connect

    async with chosen_environment(target.env) as environment:
        client = await connect(environment)
        try:
            yield client
        except ExecServerError as exc:
            fail(f"{target.path}: {exc}")


@contextlib.contextmanager
def progress(label: str, total: int | None, show: bool) -> Iterator[Callable[[int], None]]:
    """A transfer progress bar on stderr; ``show`` False, or stderr not a terminal (a log, a
    pipe), gives a no-op."""
    if not show or not sys.stderr.isatty():
        yield lambda _: None
        return
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        DownloadColumn,
        Progress,
        TextColumn,
        TimeRemainingColumn,
        TransferSpeedColumn,
    )

    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        DownloadColumn(binary_units=True),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
    )
    with Progress(*columns, console=Console(stderr=True)) as progress:
        task = progress.add_task(label, total=total)
        yield lambda size: progress.advance(task, size)


async def run_cat(target: FsTarget) -> int:
    async with fs_client(target) as client:
        out = sys.stdout.buffer
        async with await client.files.open(target.path) as reader:
            async for chunk in reader.chunks():
                out.write(chunk)
        out.flush()
    return 0


# -- ls ---------------------------------------------------------------------------------


def _kind(meta: FileMetadata) -> str:
    kind = "dir" if meta.is_directory else "file" if meta.is_file else "other"
    return f"{kind} (link)" if meta.is_symlink else kind


def _size(size: int) -> str:
    value = float(size)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{size} B" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


async def _describe(client: ExecServerClient, path: str) -> FileMetadata | None:
    try:
        return await client.files.metadata(path)
    except ExecServerError:
        return None  # gone (or unreadable) since the listing


async def run_ls(target: FsTarget, *, json_mode: bool) -> int:
    async with fs_client(target) as client:
        files = client.files
        meta = await files.metadata(target.path)
        if meta.is_directory:
            names = sorted(entry.name for entry in await files.list_directory(target.path))
            gate = asyncio.Semaphore(METADATA_IN_FLIGHT)

            async def describe(name: str) -> FileMetadata | None:
                async with gate:
                    return await _describe(client, f"{target.path.rstrip('/')}/{name}")

            rows = list(zip(names, await asyncio.gather(*map(describe, names)), strict=True))
        else:
            rows = [(os.path.basename(target.path.rstrip("/")) or "/", meta)]
    if json_mode:
        _print_json(rows)
    else:
        _print_table(target, rows)
    return 0


def _print_json(rows: list[tuple[str, FileMetadata | None]]) -> None:
    from codexexec.cli.render import emit_json

    for name, meta in rows:
        entry: dict[str, Any] = {"name": name}
        if meta is not None:
            entry.update(
                type=_kind(meta).split()[0],
                isSymlink=meta.is_symlink,
                size=meta.size,
                modifiedAtMs=meta.modified_at_ms,
            )
        emit_json(entry)


def _print_table(target: FsTarget, rows: list[tuple[str, FileMetadata | None]]) -> None:
    if not sys.stdout.isatty():  # into a pipe or file: plain columns, one entry a line, like ls
        for name, meta in rows:
            if meta is None:
                sys.stdout.write(f"{name}\t?\t\t\n")
                continue
            modified = time.strftime("%Y-%m-%d %H:%M", time.localtime(meta.modified_at_ms / 1000))
            size = "" if meta.is_directory else str(meta.size)
            entry = name + ("/" if meta.is_directory else "")
            sys.stdout.write(f"{entry}\t{_kind(meta)}\t{size}\t{modified}\n")
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"{target.env or 'default'}:{target.path}", title_justify="left")
    table.add_column("Name")
    table.add_column("Type")
    table.add_column("Size", justify="right")
    table.add_column("Modified")
    for name, meta in rows:
        if meta is None:
            table.add_row(name, "?", "", "")
            continue
        modified = time.strftime("%Y-%m-%d %H:%M", time.localtime(meta.modified_at_ms / 1000))
        size = "" if meta.is_directory else _size(meta.size)
        table.add_row(name + ("/" if meta.is_directory else ""), _kind(meta), size, modified)
    Console().print(table)


# -- get / put --------------------------------------------------------------------------


def destination_for(local: str | None, remote: str) -> str:
    name = os.path.basename(remote.rstrip("/")) or "download"
    if local is None:
        return name
    return os.path.join(local, name) if os.path.isdir(local) else local


async def run_get(target: FsTarget, local: str | None, *, quiet: bool) -> int:
    async with fs_client(target) as client:
        meta = await client.files.metadata(target.path)
        if meta.is_directory:
            fail(f"{target.path}: is a directory (fs get -r copies a directory)")
        show = not quiet and meta.size > PROGRESS_ABOVE_BYTES
        with progress(os.path.basename(target.path), meta.size, show) as advance:
            if local != "-":
                await download(client, target.path, destination_for(local, target.path), advance)
                return 0
            async with await client.files.open(target.path) as reader:
                async for chunk in reader.chunks():
                    sys.stdout.buffer.write(chunk)
                    advance(len(chunk))
            sys.stdout.buffer.flush()
    return 0


async def download(
    client: ExecServerClient, remote: str, destination: str, advance: Callable[[int], None]
) -> None:
    """Stream one remote file into ``destination``; nothing half-copied is left behind.

    A regular file (or a new name) is written beside it and renamed over it once complete,
    so a failed copy leaves what was there untouched. Anything else — a symlink, a device,
    a FIFO — is written through in place and never removed: deleting it on failure took a
    link, or as root a device node such as /dev/full, with it."""
    path = destination
    try:
        if await asyncio.to_thread(_replaceable, destination):
            path = await asyncio.to_thread(_beside, destination)
        sink = await asyncio.to_thread(open, path, "wb")
        try:
            async with await client.files.open(remote) as reader:
                async for chunk in reader.chunks():
                    sink.write(chunk)
                    advance(len(chunk))
        finally:
            sink.close()
        if path != destination:
            await asyncio.to_thread(_put_in_place, path, destination)
    except BaseException as exc:
        if path != destination:
            with contextlib.suppress(OSError):
                os.unlink(path)
        if isinstance(exc, OSError) and exc.filename in (None, path):
            # Named as the user named it: not "output", not the name of the copy beside it.
            raise OSError(exc.errno, exc.strerror, destination) from None
        raise


def _replaceable(destination: str) -> bool:
    """Whether ``destination`` is a regular file or nothing (not a link, device or FIFO)."""
    try:
        return stat.S_ISREG(os.lstat(destination).st_mode)
    except FileNotFoundError:
        return True
    except OSError:
        return False  # opening it will say what is wrong


def _beside(destination: str) -> str:
    """A new, empty file in ``destination``'s directory, readable by its owner only; or
    ``destination`` itself when that directory takes no new file but the file exists (it
    may still be writable, as it was before copies went beside it)."""
    try:
        fd, path = tempfile.mkstemp(
            prefix=f".{os.path.basename(destination)}.", dir=os.path.dirname(destination) or "."
        )
    except PermissionError:
        if os.path.lexists(destination):
            return destination
        raise
    os.close(fd)
    return path


def _put_in_place(path: str, destination: str) -> None:
    """Rename the finished copy over ``destination``, with the mode it had (or the one a
    new file gets under the umask)."""
    try:
        mode = stat.S_IMODE(os.stat(destination).st_mode)
    except FileNotFoundError:
        umask = os.umask(0)
        os.umask(umask)
        mode = 0o666 & ~umask
    os.chmod(path, mode)
    os.replace(path, destination)


def _blocks(source: BinaryIO) -> Iterator[bytes]:
    while block := source.read(FS_MAX_BLOCK_BYTES):
        yield block


async def run_put(local: str, target: FsTarget, *, quiet: bool) -> int:
    try:
        source = sys.stdin.buffer if local == "-" else await asyncio.to_thread(open, local, "rb")
    except IsADirectoryError:
        fail(f"{local}: is a directory (fs put -r copies a directory)")
    except OSError as exc:
        fail(f"{local}: {exc.strerror}")
    with source:
        size = os.fstat(source.fileno()).st_size if local != "-" else None
        async with fs_client(target) as client:
            show = not quiet and size is not None and size > PROGRESS_ABOVE_BYTES
            with progress(os.path.basename(local), size, show) as advance:
                await upload(client, source, size, target.path, advance)
    return 0


async def upload(
    client: ExecServerClient,
    source: BinaryIO,
    size: int | None,
    remote: str,
    advance: Callable[[int], None],
) -> None:
    """One local file (``size`` None: a stream) to ``remote``, replacing what is there."""
    if size is not None and size <= PROGRESS_ABOVE_BYTES:
        await client.files.write(remote, source.read())
        advance(size)
        return
    async with await client.files.open(remote, mode="replace") as writer:
        await writer.write_all(_blocks(source), on_written=advance)


# -- rm / mkdir ---------------------------------------------------------------------------


async def run_rm(target: FsTarget, *, recursive: bool, force: bool) -> int:
    async with fs_client(target) as client:
        try:
            meta = await client.files.metadata(target.path, follow_symlinks=False)
        except ExecServerError:
            if force:
                return 0
            raise
        if meta.is_directory and not recursive:
            fail(f"{target.path}: is a directory (fs rm -r removes one)")
        await client.files.remove(target.path, recursive=recursive, force=force)
    return 0


async def run_mkdir(target: FsTarget, *, parents: bool) -> int:
    async with fs_client(target) as client:
        await client.files.create_directory(target.path, recursive=parents)
    return 0
