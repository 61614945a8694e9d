"""GPU check: /healthz answers while the vLLM engine starts, then a turn streams.

Starts `yap serve` on vLLM as a child process, probes /healthz every 0.25 s
from launch (each probe with a 2 s timeout) and records every answer, then
runs one turn over the WebSocket. Passes when /healthz answered 503
"starting" during the start (no probe timed out) and 200 once ready.

    python3 gpu/healthz_during_start.py --model .wh/models/llama-1b --out $OUT/healthz.json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request

from websockets.asyncio.client import connect


def probe(url: str) -> tuple[int | str, str]:
    try:
        with urllib.request.urlopen(url, timeout=2) as answer:
            return answer.status, answer.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()
    except (TimeoutError, OSError) as exc:
        return type(exc).__name__, ""


async def one_turn(port: int) -> list[str]:
    async with connect(f"ws://127.0.0.1:{port}/ws", additional_headers={"X-API-Key": "gpu-check"}) as ws:
        await ws.send(json.dumps({"type": "start", "session_id": "s", "payload": {"user_utterance": "hello there"}}))
        seen = []
        while True:
            frame = json.loads(await ws.recv())
            seen.append(frame["type"])
            if frame["type"] in ("done", "error", "cancelled"):
                return seen


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--timeout", type=float, default=400)
    args = ap.parse_args()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "TEXT_API_KEY": "gpu-check", "INFERENCE_ENGINE": "vllm", "DEPLOY_MODE": "chat",
           "CHAT_MODEL": args.model, "CHAT_LOAD_FORMAT": "dummy", "CHAT_MAX_LEN": "4096",
           "CHAT_GPU_FRAC": "0.80", "CHAT_MAX_OUT": "16"}
    server = subprocess.Popen([sys.executable, "-c", "from yap_core.cli import main; main()", "serve", "--port", str(port)], env=env)
    t0 = time.monotonic()
    probes: list[dict[str, object]] = []
    try:
        while time.monotonic() - t0 < args.timeout and server.poll() is None:
            sent = time.monotonic()
            status, body = probe(f"http://127.0.0.1:{port}/healthz")
            probes.append({"t_s": round(sent - t0, 2), "answer_ms": round((time.monotonic() - sent) * 1000, 1),
                           "status": status, "body": body[:120]})
            if status == 200:
                break
            time.sleep(0.25)
        turn = asyncio.run(one_turn(port)) if probes and probes[-1]["status"] == 200 else []
    finally:
        server.terminate()
        server.wait(60)
    starting = [p for p in probes if p["status"] == 503 and "starting" in str(p["body"])]
    # Connection refused before the socket is bound is expected; after the first
    # HTTP answer every probe must be answered.
    first = next((i for i, p in enumerate(probes) if not isinstance(p["status"], str)), len(probes))
    timeouts = [p for p in probes[first:] if isinstance(p["status"], str)]
    result = {
        "ok": bool(starting) and not timeouts and bool(probes) and probes[-1]["status"] == 200 and turn[-1:] == ["done"],
        "ready_after_s": probes[-1]["t_s"] if probes else None,
        "starting_answers": len(starting),
        "max_answer_ms_while_starting": max((p["answer_ms"] for p in starting), default=None),
        "bound_after_s": probes[first]["t_s"] if first < len(probes) else None,
        "probe_failures_after_bind": len(timeouts),
        "turn": turn,
        "probes": probes,
    }
    with open(args.out, "w") as fh:
        json.dump(result, fh, indent=1)
    print(json.dumps({k: v for k, v in result.items() if k != "probes"}))
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
