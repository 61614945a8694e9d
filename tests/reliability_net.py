"""Helpers for the reliability tests: a `yap serve` child per test module and a
few protocol moves over real sockets. Loopback only."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import socket
import uuid
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from websockets.asyncio.client import ClientConnection
from yap_core.server_process import ServerProcess

from yap_core import wsclient

BASE_ENV = {
    "INFERENCE_ENGINE": "scripted",
    "DEPLOY_MODE": "chat",
    "LOG_LEVEL": "INFO",
}


@contextmanager
def yap_server(tmp: Path, env: Mapping[str, str], *, args: tuple[str, ...] = (), **kw: Any) -> Iterator[ServerProcess]:
    server = ServerProcess({**BASE_ENV, **env}, log_path=tmp / f"server-{uuid.uuid4().hex[:6]}.log",
                           extra_args=args, **kw)
    with server:
        yield server


async def open_ws(url: str, key: str | None, *, headers: Mapping[str, str] | None = None, **kw: Any) -> ClientConnection:
    """yap_core.wsclient.open_ws, key in X-API-Key (``headers`` win), a patient handshake."""
    return await wsclient.open_ws(url, key, headers=headers, open_timeout=30, **kw)


async def send(ws: ClientConnection, frame: Mapping[str, Any]) -> None:
    await ws.send(json.dumps(frame))


async def recv(ws: ClientConnection, within_s: float = 30.0) -> dict[str, Any]:
    return json.loads(await asyncio.wait_for(ws.recv(), within_s))


async def read_until_terminal(ws: ClientConnection, request_id: str, within_s: float = 30.0) -> list[dict[str, Any]]:
    """Frames up to and including the terminal frame of `request_id`."""
    seen: list[dict[str, Any]] = []
    while True:
        frame = await recv(ws, within_s)
        seen.append(frame)
        if frame.get("request_id") == request_id and frame["type"] in ("done", "cancelled", "error"):
            return seen


async def start_session(ws: ClientConnection, session_id: str) -> None:
    await send(ws, {"type": "start", "session_id": session_id, "request_id": f"{session_id}-ready",
                    "payload": {"chat_prompt": "You are a test."}})
    frame = await recv(ws)
    assert frame["type"] == "ready", frame


async def turn(ws: ClientConnection, session_id: str, utterance: str, **payload: Any) -> list[dict[str, Any]]:
    rid = uuid.uuid4().hex
    await send(ws, {"type": "message", "session_id": session_id, "request_id": rid,
                    "payload": {"user_utterance": utterance, **payload}})
    return [f for f in await read_until_terminal(ws, rid) if f.get("request_id") == rid]


def source_socket(host: str, port: int, source: str) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind((source, 0))
    sock.connect((host, port))
    sock.setblocking(False)
    return sock


def silent_ws(host: str, port: int, key: str) -> socket.socket:
    """A WebSocket that completes its handshake and then never reads nor answers
    anything, not even a close: the worst client a server has to let go of."""
    sock = socket.create_connection((host, port), timeout=10)
    nonce = base64.b64encode(os.urandom(16)).decode()
    sock.sendall(
        (f"GET /ws HTTP/1.1\r\nHost: {host}:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
         f"Sec-WebSocket-Key: {nonce}\r\nSec-WebSocket-Version: 13\r\nX-API-Key: {key}\r\n\r\n").encode()
    )
    reply = b""
    while b"\r\n\r\n" not in reply:
        chunk = sock.recv(4096)
        if not chunk:
            raise ConnectionError("closed during the handshake")
        reply += chunk
    if not reply.startswith(b"HTTP/1.1 101"):
        raise ConnectionError(f"handshake refused: {reply[:80]!r}")
    return sock
