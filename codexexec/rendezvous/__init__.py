"""`codexexec rendezvous`: environment registry and relay for remote executors.

See :mod:`codexexec.rendezvous.service` for the endpoints and routing rules.
"""

from codexexec.rendezvous.auth import RequestRefused, TokenFileError, TokenTable
from codexexec.rendezvous.service import (
    SECURITY_PROFILE_LEGACY,
    SECURITY_PROFILE_NOISE,
    RendezvousOptions,
    RunningRendezvous,
    build_app,
    parse_listen_url,
    run_rendezvous,
    serve_rendezvous,
    start_rendezvous,
)
from codexexec.rendezvous.signing import RelayUrlSigner, SignatureError
from codexexec.rendezvous.store import Store

__all__ = [
    "SECURITY_PROFILE_LEGACY",
    "SECURITY_PROFILE_NOISE",
    "RelayUrlSigner",
    "RendezvousOptions",
    "RequestRefused",
    "RunningRendezvous",
    "SignatureError",
    "Store",
    "TokenFileError",
    "TokenTable",
    "build_app",
    "parse_listen_url",
    "run_rendezvous",
    "serve_rendezvous",
    "start_rendezvous",
]
