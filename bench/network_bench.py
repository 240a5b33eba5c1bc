"""Managed network proxy benchmark: tunnel throughput and added request latency.

    .venv/bin/python bench/network_bench.py [--size-mib 256] [--requests 200] [--runs 3]

Three processes, all on 127.0.0.1: a plain-socket origin (serves ``/big`` with
``sendall`` from a 1 MiB buffer, and ``/small``), the :class:`ManagedProxy` on its own
event loop, and this client (blocking sockets, ``recv_into`` a 1 MiB buffer). It
compares a download direct vs through an HTTP ``CONNECT`` tunnel, and the median time
of a small GET on a fresh connection direct vs through the proxy (absolute-form
forwarding), then prints a markdown table.
"""

from __future__ import annotations

import argparse
import socket
import statistics
import subprocess
import sys
import textwrap
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

ORIGIN = textwrap.dedent(
    """
    import socket, threading, sys
    CHUNK = memoryview(b"x" * (1 << 20))
    SMALL = b"HTTP/1.1 200 OK\\r\\nContent-Length: 2\\r\\nConnection: close\\r\\n\\r\\nok"
    def serve(conn):
        with conn:
            data = b""
            while b"\\r\\n\\r\\n" not in data:
                more = conn.recv(65536)
                if not more:
                    return
                data += more
            path = data.split(b" ", 2)[1]
            if path.startswith(b"/big/"):
                size = int(path[5:])
                conn.sendall(b"HTTP/1.1 200 OK\\r\\nContent-Length: %d\\r\\n\\r\\n" % size)
                while size:
                    n = min(size, len(CHUNK))
                    conn.sendall(CHUNK[:n])
                    size -= n
            else:
                conn.sendall(SMALL)
    listener = socket.create_server(("127.0.0.1", 0), backlog=512)
    print(listener.getsockname()[1], flush=True)
    while True:
        conn, _ = listener.accept()
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        threading.Thread(target=serve, args=(conn,), daemon=True).start()
    """
)

PROXY = textwrap.dedent(
    """
    import asyncio, sys
    from codexexec.network import ManagedProxy, NetworkPolicy
    async def resolve(host):
        return ["127.0.0.1"]
    async def main():
        policy = NetworkPolicy(allowed_domains=["origin.test"], allow_local=True)
        proxy = ManagedProxy(policy, resolver=resolve)
        await proxy.start()
        print(proxy.http_port, flush=True)
        await asyncio.Event().wait()
    asyncio.run(main())
    """
)


def spawn(code: str) -> tuple[subprocess.Popen[str], int]:
    process = subprocess.Popen(
        [sys.executable, "-c", code], cwd=ROOT, stdout=subprocess.PIPE, text=True
    )
    assert process.stdout is not None
    return process, int(process.stdout.readline())


def read_head(sock: socket.socket) -> tuple[bytes, bytes]:
    data = b""
    while b"\r\n\r\n" not in data:
        more = sock.recv(65536)
        if not more:
            raise ConnectionError("closed before the response head")
        data += more
    head, _, rest = data.partition(b"\r\n\r\n")
    return head, rest


def download(sock: socket.socket, size: int) -> None:
    sock.sendall(f"GET /big/{size} HTTP/1.1\r\nHost: origin.test\r\n\r\n".encode())
    head, rest = read_head(sock)
    assert head.startswith(b"HTTP/1.1 200"), head
    remaining = size - len(rest)
    buffer = bytearray(1 << 20)
    view = memoryview(buffer)
    while remaining:
        n = sock.recv_into(view, min(len(buffer), remaining))
        if not n:
            raise ConnectionError("short body")
        remaining -= n


def direct_download(origin: int, size: int) -> float:
    with socket.create_connection(("127.0.0.1", origin)) as sock:
        start = time.perf_counter()
        download(sock, size)
        return time.perf_counter() - start


def tunnel_download(proxy: int, origin: int, size: int) -> float:
    with socket.create_connection(("127.0.0.1", proxy)) as sock:
        start = time.perf_counter()
        target = f"origin.test:{origin}"
        sock.sendall(f"CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n".encode())
        head, rest = read_head(sock)
        assert head.startswith(b"HTTP/1.1 200") and not rest, head
        download(sock, size)
        return time.perf_counter() - start


def small_get(port: int, target: str) -> float:
    start = time.perf_counter()
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.sendall(f"GET {target} HTTP/1.1\r\nHost: origin.test\r\n\r\n".encode())
        data = b""
        while not data.endswith(b"ok"):
            more = sock.recv(65536)
            if not more:
                break
            data += more
    assert data.startswith(b"HTTP/1.1 200"), data
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mib", type=int, default=256)
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    size = args.size_mib << 20
    origin, origin_port = spawn(ORIGIN)
    proxy, proxy_port = spawn(PROXY)
    try:
        direct = [direct_download(origin_port, size) for _ in range(args.runs)]
        tunnel = [tunnel_download(proxy_port, origin_port, size) for _ in range(args.runs)]
        small_direct = [small_get(origin_port, "/small") for _ in range(args.requests)]
        target = f"http://origin.test:{origin_port}/small"
        small_proxied = [small_get(proxy_port, target) for _ in range(args.requests)]
    finally:
        for process in (proxy, origin):
            process.terminate()
            process.wait(5)
    mib = size / (1 << 20)
    direct_rate = mib / statistics.median(direct)
    tunnel_rate = mib / statistics.median(tunnel)
    median_direct = statistics.median(small_direct) * 1000
    median_proxied = statistics.median(small_proxied) * 1000
    print(f"| measure ({args.size_mib} MiB, median of {args.runs}) | direct | proxied | ratio |")
    print("|---|---:|---:|---:|")
    print(
        f"| download via CONNECT tunnel (MiB/s) | {direct_rate:.0f} | {tunnel_rate:.0f} "
        f"| {tunnel_rate / direct_rate:.2f}x |"
    )
    print(
        f"| small GET, new connection, median of {args.requests} (ms) | {median_direct:.3f} "
        f"| {median_proxied:.3f} | +{median_proxied - median_direct:.3f} ms |"
    )


if __name__ == "__main__":
    main()
