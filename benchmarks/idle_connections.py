"""Idle connections held by one `yap serve` process: memory per connection.

Starts a server (scripted engine: no model memory to blur the figure), opens
--connections WebSockets from this process, each with a session (`start`
answered by `ready`), keeps them alive with protocol pings every --ping-every
seconds for --hold seconds, and prints the server's RSS before, with all
connections held, and after they close. Every ping must get its pong.

    .venv/bin/python benchmarks/idle_connections.py --connections 1000 --hold 30 [--client-deflate [--server-deflate]]

--client-deflate: the clients offer permessage-deflate, as browsers do (the
server declines unless --server-deflate sets WS_PERMESSAGE_DEFLATE).

Each connection costs one file descriptor here and one in the server; the soft
limit is raised to the hard limit when it is too low for that.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import resource
import sys
import tempfile
import time
from pathlib import Path

import psutil
from websockets.asyncio.client import ClientConnection
from yap_core.server_process import ServerProcess, http_get
from yap_core.wsclient import open_ws

MiB = 1024 * 1024
KEY = "idle-bench-key"


def ensure_fd_limit(needed: int) -> int:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < needed:
        if hard != resource.RLIM_INFINITY and hard < needed:
            sys.exit(f"need {needed} file descriptors, the hard limit is {hard}: lower --connections")
        resource.setrlimit(resource.RLIMIT_NOFILE, (needed, hard))  # the server child inherits it
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


async def open_one(url: str, index: int, compression: str | None) -> ClientConnection:
    ws = await open_ws(url, KEY, open_timeout=60, max_size=2**20, compression=compression)
    await ws.send(json.dumps({"type": "start", "session_id": f"idle{index}", "request_id": f"r{index}",
                              "payload": {"chat_prompt": "You are idle."}}))
    frame = json.loads(await asyncio.wait_for(ws.recv(), 60))
    if frame["type"] != "ready":
        raise RuntimeError(f"connection {index}: expected ready, got {frame}")
    return ws


async def keep_alive(ws: ClientConnection, index: int, every: float, until: float) -> int:
    pongs = 0
    while time.monotonic() < until:
        await ws.send(json.dumps({"type": "ping", "session_id": f"idle{index}", "request_id": f"p{pongs}"}))
        frame = json.loads(await asyncio.wait_for(ws.recv(), 60))
        if frame != {"type": "pong", "session_id": f"idle{index}", "request_id": f"p{pongs}", "payload": {}}:
            raise RuntimeError(f"connection {index}: expected pong, got {frame}")
        pongs += 1
        await asyncio.sleep(min(every, max(0.0, until - time.monotonic())))
    return pongs


async def run(
    connections: int, hold: float, ping_every: float, batch: int, client_deflate: bool, server_deflate: bool
) -> dict[str, object]:
    log = Path(tempfile.mkdtemp(prefix="yap-idle-")) / "server.log"
    compression = "deflate" if client_deflate else None
    env = {"TEXT_API_KEY": KEY, "INFERENCE_ENGINE": "scripted", "DEPLOY_MODE": "chat", "LOG_LEVEL": "WARNING",
           "MAX_CONCURRENT_CONNECTIONS": str(connections + 10), "WS_IDLE_TIMEOUT_S": str(max(150.0, hold * 4)),
           "WS_PERMESSAGE_DEFLATE": "true" if server_deflate else "false"}
    server = ServerProcess(env, log_path=log, extra_args=("--no-access-log",))
    await server.start()
    try:
        await asyncio.sleep(1.0)
        before = server.rss()
        sockets: list[ClientConnection] = []
        t0 = time.monotonic()
        for start in range(0, connections, batch):
            sockets += await asyncio.gather(
                *(open_one(server.ws_url, i, compression) for i in range(start, min(connections, start + batch)))
            )
        opened_s = time.monotonic() - t0
        status = http_get(server.base_url + "/status", {"X-API-Key": KEY}).body
        until = time.monotonic() + hold
        peak = server.rss()
        sampler_stop = asyncio.Event()

        async def sample() -> None:
            nonlocal peak
            while not sampler_stop.is_set():
                peak = max(peak, server.rss())
                await asyncio.sleep(0.5)

        sampler = asyncio.create_task(sample())
        pongs = await asyncio.gather(*(keep_alive(ws, i, ping_every, until) for i, ws in enumerate(sockets)))
        held = server.rss()
        sampler_stop.set()
        await sampler
        await asyncio.gather(*(ws.close() for ws in sockets))
        await asyncio.sleep(2.0)
        after = server.rss()
        quiet = http_get(server.base_url + "/status", {"X-API-Key": KEY}).body
    finally:
        code = await server.stop()
    return {
        "connections": connections,
        "client_offers_deflate": client_deflate,
        "server_accepts_deflate": server_deflate,
        "held_s": hold,
        "open_s": round(opened_s, 2),
        "connections_active_seen": status["connections"]["active"],
        "pongs": sum(pongs),
        "rss_before_mib": round(before / MiB, 1),
        "rss_held_mib": round(held / MiB, 1),
        "rss_peak_mib": round(peak / MiB, 1),
        "rss_after_close_mib": round(after / MiB, 1),
        "kib_per_connection": round((held - before) / connections / 1024, 1),
        "connections_active_after": quiet["connections"]["active"],
        "server_exit": code,
        "machine": f"{platform.machine()}, {os.cpu_count()} cpu, {psutil.virtual_memory().total // MiB} MiB, "
        f"Python {platform.python_version()}",
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--connections", type=int, default=1000)
    parser.add_argument("--hold", type=float, default=30.0, help="seconds to hold them, pinging")
    parser.add_argument("--ping-every", type=float, default=5.0)
    parser.add_argument("--batch", type=int, default=100, help="connections opened at once")
    parser.add_argument("--client-deflate", action="store_true", help="clients offer permessage-deflate")
    parser.add_argument("--server-deflate", action="store_true", help="WS_PERMESSAGE_DEFLATE=true: the server accepts it")
    args = parser.parse_args()
    ensure_fd_limit(args.connections + 256)
    result = asyncio.run(
        run(args.connections, args.hold, args.ping_every, args.batch, args.client_deflate, args.server_deflate)
    )
    for name, value in result.items():
        print(f"{name:28} {value}")
    if result["connections_active_seen"] != args.connections or result["connections_active_after"] != 0:
        sys.exit("the server did not hold (or release) every connection")


if __name__ == "__main__":
    main()
