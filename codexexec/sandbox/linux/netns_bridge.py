"""Inside bubblewrap's private network namespace: reach the managed proxy, nothing else.

    python -I -S netns_bridge.py SPEC_JSON -- ARGV...

For each allowed proxy port this binds 127.0.0.1:<same port> inside the namespace and
forks one bridge process that carries each connection to the host through a Unix
socket (the only way out of the namespace). The proxy environment therefore needs no
rewriting. Then it confines itself — Landlock lets TCP connect only to those ports, so
any other connection fails with "Permission denied"; seccomp allows only IP sockets —
and execs the command. Any failure exits 126 without running the command.
"""

from __future__ import annotations

import os
import selectors
import signal
import socket
import sys

_BUFFER = 256 * 1024


def _bridge(listeners: dict[socket.socket, str]) -> None:
    """Forward every accepted TCP connection to its Unix socket, both ways, until killed."""
    import ctypes

    ctypes.CDLL(None).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG: die with the command
    devnull = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):  # never hold the command's pipes open
        os.dup2(devnull, fd)
    selector = selectors.DefaultSelector()
    peers: dict[socket.socket, socket.socket] = {}
    for listener in listeners:
        listener.setblocking(False)
        selector.register(listener, selectors.EVENT_READ)
    while True:
        for key, _ in selector.select():
            sock = key.fileobj
            assert isinstance(sock, socket.socket)
            if sock in listeners:
                try:
                    client, _ = sock.accept()
                    upstream = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                    upstream.connect(listeners[sock])
                except OSError:
                    continue
                for a, b in ((client, upstream), (upstream, client)):
                    a.setblocking(False)
                    peers[a] = b
                    selector.register(a, selectors.EVENT_READ)
                continue
            try:
                data = sock.recv(_BUFFER)
            except BlockingIOError:
                continue
            except OSError:
                data = b""
            peer = peers.get(sock)
            if data and peer is not None:
                try:
                    peer.setblocking(True)
                    peer.sendall(data)
                    peer.setblocking(False)
                    continue
                except OSError:
                    pass
            for end in (sock, peer):
                if end is not None and end in peers:
                    selector.unregister(end)
                    peers.pop(end, None)
                    end.close()


def main(argv: list[str]) -> None:
    from codexexec.sandbox.linux import stage

    spec, command = stage.parse("netns_bridge", argv)
    try:
        listeners: dict[socket.socket, str] = {}
        for route in spec["routes"]:
            listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            listener.bind(("127.0.0.1", route["port"]))
            listener.listen(128)
            listeners[listener] = route["uds"]
        if os.fork() == 0:
            try:
                _bridge(listeners)
            finally:
                os._exit(0)
        for listener in listeners:
            listener.close()
        from codexexec.sandbox.linux.landlock import apply_landlock, landlock_abi
        from codexexec.sandbox.linux.seccomp import SeccompMode, apply_seccomp

        if landlock_abi() >= 4:
            # Only filesystem rights already granted by bwrap's mounts; here, TCP only.
            apply_landlock(
                read_roots=["/"],
                write_roots=["/"],
                tcp_connect_ports=[r["port"] for r in spec["routes"]],
            )
        apply_seccomp(SeccompMode.PROXY_ROUTED, allow_unix_sockets=False)
    except Exception as exc:  # fail closed
        sys.stderr.write(f"codexexec sandbox: cannot set up the managed network: {exc}\n")
        os._exit(126)
    from codexexec.sandbox.linux import stage

    stage.become(command, spec)


if __name__ == "__main__":
    # Run as `python -I -S FILE` (backend.py): the package is found from this file alone.
    sys.path.insert(0, os.path.abspath(__file__).rsplit(os.sep, 4)[0])
    main(sys.argv[1:])
