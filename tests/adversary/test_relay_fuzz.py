"""A seeded mutator throws 100,000 mutated relay frames at the rendezvous (and, through
it, at a real executor) from one harness credential, while a harness with another
credential runs a command that streams output through the same executor socket: the
legitimate stream gets every byte, in order, and both servers keep going.

Longer runs: CODEXEXEC_FUZZ_FRAMES=1000000 (and CODEXEXEC_FUZZ_SEED to replay one).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import uuid
from pathlib import Path

from websockets.asyncio.client import ClientConnection
from websockets.exceptions import ConnectionClosed

from codexexec.client import ExecServerClient
from codexexec.client.events import Exited, Output
from codexexec.noise.keys import StaticIdentity
from codexexec.relay.frames import (
    ack_frame,
    data_frame,
    encode,
    handshake_frame,
    heartbeat_frame,
    reset_frame,
    resume_frame,
)
from codexexec.remote.registry import connect_harness_noise
from codexexec.transport.relay import open_relay_socket
from tests.test_noise_executor import ENV, OTHER_TOKEN, Stack

FRAMES = int(os.environ.get("CODEXEXEC_FUZZ_FRAMES", "100000"))
SEED = int(os.environ.get("CODEXEXEC_FUZZ_SEED", "0")) or random.SystemRandom().randrange(2**32)


def _corpus(rng: random.Random, streams: list[str]) -> list[bytes]:
    """Valid frames of every kind, to mutate."""
    frames = []
    for stream_id in streams:
        frames += [
            encode(resume_frame(stream_id, rng.randrange(5))),
            encode(handshake_frame(stream_id, rng.randbytes(rng.randrange(1, 3000)))),
            encode(data_frame(stream_id, rng.randrange(10), rng.randbytes(rng.randrange(64)))),
            encode(ack_frame(stream_id, ack=rng.randrange(10), ack_bits=rng.randrange(256))),
            encode(heartbeat_frame(stream_id)),
            encode(reset_frame(stream_id)),
        ]
    return frames


def _mutate(rng: random.Random, frame: bytes) -> bytes:
    data = bytearray(frame)
    for _ in range(rng.randrange(1, 4)):
        choice = rng.randrange(6)
        if choice == 0 and data:  # flip bits
            data[rng.randrange(len(data))] ^= 1 << rng.randrange(8)
        elif choice == 1 and data:  # truncate
            del data[rng.randrange(len(data)) :]
        elif choice == 2:  # insert random bytes
            at = rng.randrange(len(data) + 1)
            data[at:at] = rng.randbytes(rng.randrange(1, 16))
        elif choice == 3 and data:  # overwrite a byte with an extreme value
            data[rng.randrange(len(data))] = rng.choice((0x00, 0x7F, 0x80, 0xFF))
        elif choice == 4:  # duplicate a slice
            start = rng.randrange(len(data) + 1)
            data += data[start : start + rng.randrange(32)]
        else:  # replace whole
            data = bytearray(rng.randbytes(rng.randrange(0, 64)))
    return bytes(data)


async def _drain(ws: ClientConnection) -> None:
    """Read what the rendezvous sends back (resets), so it never waits on us."""
    with contextlib.suppress(ConnectionClosed):
        async for _ in ws:
            pass


async def _fuzz(stack: Stack, rng: random.Random, count: int) -> int:
    """Send ``count`` mutated frames, reconnecting when the rendezvous closes the socket."""
    sent = 0
    streams = [str(uuid.UUID(int=rng.getrandbits(128))) for _ in range(4)] + ["", "x" * 40]
    corpus = _corpus(rng, streams)
    while sent < count:
        key = StaticIdentity.generate().channel_public_key().to_json_obj()
        bundle = await connect_harness_noise(stack.url, ENV, OTHER_TOKEN, key)
        ws = await open_relay_socket(bundle["url"], ENV)
        draining = asyncio.create_task(_drain(ws))
        try:
            while sent < count:
                frame = rng.choice(corpus)
                await ws.send(_mutate(rng, frame) if rng.random() < 0.9 else frame)
                sent += 1
                if sent % 500 == 0:
                    await asyncio.sleep(0)
        except ConnectionClosed:
            pass
        finally:
            await ws.close()
            draining.cancel()
    return sent


async def test_a_hundred_thousand_mutated_frames_leave_a_legitimate_stream_whole(
    stack: Stack, tmp_path: Path
) -> None:
    rng = random.Random(SEED)
    client = await ExecServerClient.connect(f"{ENV}@{stack.url}")
    stop = tmp_path / "stop"
    # Streams until the fuzzing is over.
    process = await client.start(
        ["sh", "-c", f'i=0; while [ ! -e {stop} ]; do i=$((i+1)); echo "$i"; sleep 0.001; done'],
        cwd="/tmp",
    )
    output = bytearray()
    exit_code = None

    async def collect() -> None:
        nonlocal exit_code
        async for event in process.events():
            if isinstance(event, Output):
                output.extend(event.data)
            elif isinstance(event, Exited):
                exit_code = event.exit_code

    collecting = asyncio.create_task(collect())
    sent = await asyncio.wait_for(_fuzz(stack, rng, FRAMES), 600)
    during = output.count(b"\n")
    stop.touch()
    await asyncio.wait_for(collecting, 60)
    assert sent == FRAMES, f"seed {SEED}"
    # They reached the rendezvous (its frame tap), not just our socket.
    fuzzed = sum(1 for side, _ in stack.routed if side == "harness")
    assert fuzzed >= FRAMES * 0.99, (fuzzed, f"seed {SEED}")
    assert exit_code == 0, f"seed {SEED}"
    numbers = [int(line) for line in output.decode().split()]
    assert numbers == list(range(1, len(numbers) + 1)), f"seed {SEED}"
    assert during > 100, "the legitimate stream ran while the frames were thrown"
    # Both still serve a new command afterwards.
    after = await client.start(["echo", "after"], cwd="/tmp")
    seen = bytearray()
    async for event in after.events():
        if isinstance(event, Output):
            seen.extend(event.data)
    assert seen == b"after\n", f"seed {SEED}"
    await client.close()
