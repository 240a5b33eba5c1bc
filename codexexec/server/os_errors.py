"""OS errors in Codex's words: the text and the JSON-RPC code a Codex executor would send.

Codex's Linux binary is a Rust program linked against musl, so an OS error reads
"<musl strerror> (os error N)"; where musl's wording differs from glibc's (which
Python's ``os.strerror`` gives) the musl text is used, so messages match byte for byte.
"""

from __future__ import annotations

import errno
import os

from codexexec.protocol.jsonrpc import INTERNAL_ERROR, INVALID_REQUEST, NOT_FOUND, RpcError

# musl's strerror texts that differ from glibc's, for the errors file and process
# operations can produce.
_MUSL_TEXTS = {
    errno.EIO: "I/O error",
    errno.ENOMEM: "Out of memory",
    errno.EBUSY: "Resource busy",
    errno.ESPIPE: "Invalid seek",
    errno.EXDEV: "Cross-device link",
    errno.ELOOP: "Symbolic link loop",
    errno.ENAMETOOLONG: "Filename too long",
    errno.EMFILE: "No file descriptors available",
    errno.ENOTTY: "Not a tty",
    errno.EOVERFLOW: "Value too large for data type",
    errno.EDQUOT: "Quota exceeded",
    errno.EOPNOTSUPP: "Not supported",
    errno.EILSEQ: "Illegal byte sequence",
    errno.ECHILD: "No child process",
    errno.ETIMEDOUT: "Operation timed out",
}

# Rust's io::ErrorKind::InvalidInput and PermissionDenied, which Codex answers with -32600.
_INVALID_OR_DENIED = frozenset({errno.EINVAL, errno.EACCES, errno.EPERM})


def os_error_text(exc: OSError) -> str:
    """'<reason> (os error N)', as Rust renders an OS error."""
    if not exc.errno:
        return exc.strerror or str(exc)
    reason = _MUSL_TEXTS.get(exc.errno) or os.strerror(exc.errno)
    return f"{reason} (os error {exc.errno})"


def rpc_error(exc: OSError) -> RpcError:
    """Codex's mapping: not found -32004, invalid input or permission -32600, else -32603."""
    if exc.errno == errno.ENOENT:
        code = NOT_FOUND
    elif exc.errno in _INVALID_OR_DENIED:
        code = INVALID_REQUEST
    else:
        code = INTERNAL_ERROR
    return RpcError(code, os_error_text(exc))
