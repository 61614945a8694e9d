"""One WebSocket frame's hop into a bare Hypercorn app, idle against busy.

No Yap code: Hypercorn (uvloop, as `yap serve` runs it) serving an ASGI app
that answers each text frame with the moment it received it. A `websockets`
client (the library the benchmarks' clients use) sends a frame, reads the
answer, and either sends the next at once or waits first. The hop is client
send -> app has the frame, on the host's one `time.perf_counter` clock.

Why: the GPU runs read "hop in" (client send -> Yap's app has the frame) at
about 0.5 ms per turn at one session, the largest part of the time the server
adds (docs/gpu-results.md). This tells how much of that any Hypercorn app
pays when its process wakes from idle, as a server between voice turns does.

    python benchmarks/ws_hop.py [--frames 400] [--pauses 0,0.005,0.03]

Server on CPU 0, client on CPU 1 where the host has them. "busy-wait" pauses
keep the client's CPU awake, so only the server wakes from idle.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import os
import time
from typing import Any

from yap_core.latency_stats import summarize
from yap_core.server_process import free_port


def _pin(cpu: int) -> None:
    if hasattr(os, "sched_setaffinity") and cpu in os.sched_getaffinity(0):
        os.sched_setaffinity(0, {cpu})


async def _app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] == "lifespan":
        while (await receive())["type"] != "lifespan.shutdown":
            await send({"type": "lifespan.startup.complete"})
        await send({"type": "lifespan.shutdown.complete"})
        return
    await receive()  # websocket.connect
    await send({"type": "websocket.accept"})
    while True:
        message = await receive()
        at = time.perf_counter()
        if message["type"] != "websocket.receive":
            return
        await send({"type": "websocket.send", "text": repr(at)})


def _serve(port: int) -> None:
    import uvloop
    from hypercorn.asyncio import serve
    from hypercorn.config import Config

    _pin(0)
    config = Config()
    config.bind = [f"127.0.0.1:{port}"]
    config.accesslog = None
    uvloop.run(serve(_app, config))


async def _hops(port: int, frames: int, pause_s: float, busy: bool) -> tuple[list[float], list[float]]:
    from websockets.asyncio.client import connect

    hop_in: list[float] = []
    hop_out: list[float] = []
    async with connect(f"ws://127.0.0.1:{port}", compression=None) as ws:
        for _ in range(frames):
            sent = time.perf_counter()
            await ws.send("x" * 60)
            answer = await ws.recv()
            back = time.perf_counter()
            hop_in.append((float(answer) - sent) * 1e3)
            hop_out.append((back - float(answer)) * 1e3)
            if busy:
                end = time.perf_counter() + pause_s
                while time.perf_counter() < end:
                    pass
            elif pause_s:
                await asyncio.sleep(pause_s)
    skip = frames // 10  # the connection's first frames
    return hop_in[skip:], hop_out[skip:]


async def _wait_listening(port: int, seconds: float = 20.0) -> None:
    deadline = time.monotonic() + seconds
    while True:
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.close()
            return
        except OSError:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.1)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--frames", type=int, default=400)
    ap.add_argument("--pauses", default="0,0.005,0.03", help="seconds between frames (after each answer)")
    args = ap.parse_args()
    port = free_port()
    server = multiprocessing.get_context("spawn").Process(target=_serve, args=(port,), daemon=True)
    server.start()
    try:
        asyncio.run(_wait_listening(port))
        _pin(1)
        print(f"bare Hypercorn + uvloop app, {args.frames} frames a row; p50 / p90 ms")
        print("| pause between frames | client waits | hop in (send -> app has it) | hop out (app answers -> client has it) |")
        print("| --- | --- | --- | --- |")
        for pause in (float(p) for p in args.pauses.split(",")):
            for busy in (False, True) if pause else (False,):
                hop_in, hop_out = asyncio.run(_hops(port, args.frames, pause, busy))
                a, b = summarize(hop_in), summarize(hop_out)
                how = "busy-wait" if busy else ("asyncio.sleep" if pause else "-")
                print(f"| {pause * 1e3:g} ms | {how} | {a.p50:.3f} / {a.p90:.3f} | {b.p50:.3f} / {b.p90:.3f} |")
    finally:
        server.kill()


if __name__ == "__main__":
    main()
