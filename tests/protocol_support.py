"""Support for cross-package tests: real `yap serve` subprocesses and a small
WebSocket client. (tests/conftest.py exposes the fixture; test modules import
the helpers from here: ``from protocol_support import WsClient`` — never from
``conftest``, a module name several test folders share.)

Servers
-------
``yap_servers`` (session scope) starts one `yap serve` child per named
configuration on a free loopback port, waits for ``/healthz`` 200, reuses it
for every test that asks for the same name, and stops them all (SIGTERM) at the
end of the session::

    async def test_x(yap_servers):
        server = yap_servers.get("scripted")          # a ServerProcess
        async with WsClient.connect(server) as ws: ...

Configurations are in ``SERVER_CONFIGS`` (env overrides on top of ``BASE_ENV``);
add one there rather than starting ad-hoc servers, so they are shared.
``yap_servers.start(env)`` starts a private one (stopped at session end) for
tests that must kill or drain their server.

Client
------
``WsClient`` wraps a `websockets` connection with JSON frames::

    async with WsClient.connect(server) as ws:           # key in X-API-Key
        await ws.send("start", "s1", payload={"user_utterance": "hi"}, request_id="r1")
        turn = await ws.turn("r1")                         # frames of r1 up to done/cancelled/error
        assert turn[-1]["type"] == "done"
        frame = await ws.recv()                            # next frame (dict), 10 s timeout
        code = await ws.closed()                           # close code once the server closes

``WsClient.connect(server, auth="bearer"|"query"|"none", key=...)`` chooses
how the key is sent; ``headers=`` adds headers (Origin, X-Forwarded-For ...).
``engine_running(server)`` reads ``/status`` and returns the engine's count
of running requests (to check that aborts happened).
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest
from websockets.asyncio.client import ClientConnection
from websockets.exceptions import ConnectionClosed
from yap_core.server_process import ServerProcess, http_get_async
from yap_core.wsclient import open_ws

API_KEY = "test-key-protocol"
TERMINAL = frozenset({"done", "cancelled", "error"})

BASE_ENV: dict[str, str] = {
    "TEXT_API_KEY": f"{API_KEY},second-key",
    "LOG_LEVEL": "INFO",
    "CHAT_MAX_OUT": "8",
    "OTEL_SDK_DISABLED": "true",
}

SERVER_CONFIGS: dict[str, dict[str, str]] = {
    # Model-free: the scripted engine echoes the prompt's last user message.
    "scripted": {
        "INFERENCE_ENGINE": "scripted",
        "TOOL_CLASSIFIER": "scripted",
        "DEPLOY_MODE": "both",
        "SCRIPTED_ECHO": "1",
        "CHAT_MAX_OUT": "40",
        # Small enough that a maximal system prompt plus utterance cannot fit.
        "SCRIPTED_MAX_MODEL_LEN": "1700",
    },
    # Slow tokens, so turns are still running when a test cancels or barges in.
    "slow": {
        "INFERENCE_ENGINE": "scripted",
        "TOOL_CLASSIFIER": "scripted",
        "DEPLOY_MODE": "both",
        "SCRIPTED_TOKEN_DELAY_MS": "150",
        "CHAT_MAX_OUT": "40",
        "SCRIPTED_FAIL_ON": "please fail",
        "CHAT_TIMEOUT_S": "2",
        "CONCURRENT_MODEL_CALL": "1",
    },
    # Tight limits: capacity, frame size, idle, rate windows.
    "limits": {
        "INFERENCE_ENGINE": "scripted",
        "DEPLOY_MODE": "chat",
        "MAX_CONCURRENT_CONNECTIONS": "2",
        "WS_MAX_MESSAGE_BYTES": "1024",
        "WS_IDLE_TIMEOUT_S": "1.5",
        "WS_MAX_MESSAGES_PER_WINDOW": "3",
        "WS_MESSAGE_WINDOW_SECONDS": "30",
        "WS_MAX_CANCELS_PER_WINDOW": "2",
        "WS_CANCEL_WINDOW_SECONDS": "30",
        "AUTH_MAX_FAILURES": "3",
        "AUTH_FAILURE_WINDOW_S": "60",
        "ALLOWED_ORIGINS": "https://app.example",
        "TRUSTED_PROXIES": "127.0.0.1",
        "SCRIPTED_UNSUPPORTED": "min_p",
        "SCRIPTED_TOKEN_DELAY_MS": "300",
        "CHAT_MAX_OUT": "20",
    },
    # A firehose: instant 4 KB tokens repeating up to 100000 (more than the
    # kernel's socket buffers hold), a short send queue.
    "flood": {
        "INFERENCE_ENGINE": "scripted",
        "DEPLOY_MODE": "chat",
        "SCRIPTED_REPEAT": "1",
        "SCRIPTED_REPLY": "y" * 4000 + " z",
        "SCRIPTED_MAX_MODEL_LEN": "200000",
        "CHAT_MAX_OUT": "100000",
        "WS_SEND_QUEUE_MAX": "64",
        "CHAT_TIMEOUT_S": "600",
    },
    # Classifier only.
    "tool": {"TOOL_CLASSIFIER": "scripted", "DEPLOY_MODE": "tool"},
    # The embedded default: the hf engine on SmolLM2-135M and the trained
    # classifier (built once, then cached), with small output.
    "hf": {"INFERENCE_ENGINE": "hf", "TOOL_CLASSIFIER": "classifier", "DEPLOY_MODE": "both", "CHAT_MAX_OUT": "8", "CHAT_TEMPERATURE": "0"},
}

# GPU runs (gpu/check.sh) point the real-model tests at another engine, e.g.
# YAP_TEST_REAL_ENGINE_ENV='{"INFERENCE_ENGINE":"vllm","CHAT_MODEL":"..."}'.
if os.environ.get("YAP_TEST_REAL_ENGINE_ENV"):
    SERVER_CONFIGS["hf"] = {**SERVER_CONFIGS["hf"], **json.loads(os.environ["YAP_TEST_REAL_ENGINE_ENV"])}


class ServerPool:
    def __init__(self, log_dir: Path) -> None:
        self.log_dir = log_dir
        self._named: dict[str, ServerProcess] = {}
        self._private: list[ServerProcess] = []

    def _new(self, env: Mapping[str, str], name: str) -> ServerProcess:
        return ServerProcess({**BASE_ENV, **env}, log_path=self.log_dir / f"{name}-{len(self._private)}.log")

    def get(self, name: str) -> ServerProcess:
        if name not in self._named:
            server = self._new(SERVER_CONFIGS[name], name)
            server.start_sync(timeout=900)  # the first run builds the default classifier
            self._named[name] = server
        return self._named[name]

    def start(self, env: Mapping[str, str], *, wait: bool = True) -> ServerProcess:
        """A private server (for tests that stop or kill it)."""
        server = self._new(env, "private")
        self._private.append(server)
        if wait:
            server.start_sync(timeout=300)
        else:
            server.launch()
        return server

    def stop_all(self) -> None:
        for server in [*self._named.values(), *self._private]:
            server.stop_sync(timeout=15)


@pytest.fixture(scope="session")
def yap_servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerPool]:
    pool = ServerPool(tmp_path_factory.mktemp("servers"))
    try:
        yield pool
    finally:
        pool.stop_all()


class WsClient:
    """A JSON-frame client over one real WebSocket."""

    def __init__(self, conn: ClientConnection) -> None:
        self.conn = conn
        self.others: list[dict[str, Any]] = []  # frames of other requests seen by turn()
        self.tail: list[dict[str, Any]] = []  # frames received by closed()

    @classmethod
    def connect(
        cls,
        server: ServerProcess,
        *,
        auth: str = "header",
        key: str = API_KEY,
        headers: Mapping[str, str] | None = None,
        max_size: int | None = 2**22,
        compression: str | None = "deflate",
    ) -> _Connecting:
        return _Connecting(server.ws_url, auth, key, headers, max_size, compression)

    async def send(
        self,
        frame_type: str,
        session_id: str | None = None,
        *,
        request_id: str | None = None,
        payload: Mapping[str, Any] | None = None,
    ) -> None:
        frame: dict[str, Any] = {"type": frame_type}
        if session_id is not None:
            frame["session_id"] = session_id
        if request_id is not None:
            frame["request_id"] = request_id
        if payload is not None:
            frame["payload"] = dict(payload)
        await self.conn.send(json.dumps(frame))

    async def send_raw(self, data: str | bytes) -> None:
        await self.conn.send(data)

    async def recv(self, wait_s: float = 10.0) -> dict[str, Any]:
        async with asyncio.timeout(wait_s):
            return json.loads(await self.conn.recv())

    async def turn(self, request_id: str, wait_s: float = 60.0) -> list[dict[str, Any]]:
        """Frames of ``request_id`` up to and including its terminal frame.
        Frames of other requests seen meanwhile go to ``self.others``."""
        got: list[dict[str, Any]] = []
        deadline = time.monotonic() + wait_s
        while True:
            frame = await self.recv(max(0.1, deadline - time.monotonic()))
            if frame.get("request_id") != request_id:
                self.others.append(frame)
                continue
            got.append(frame)
            if frame["type"] in TERMINAL or frame["type"] == "ready":
                return got

    async def closed(self, wait_s: float = 10.0) -> int | None:
        """Wait for the server to close; its close code. Frames still coming are kept in ``self.tail``."""
        async with asyncio.timeout(wait_s):
            try:
                while True:
                    self.tail.append(json.loads(await self.conn.recv()))
            except ConnectionClosed as exc:
                return exc.rcvd.code if exc.rcvd is not None else None


class _Connecting:
    def __init__(self, url: str, auth: str, key: str, headers: Mapping[str, str] | None, max_size: int | None,
                 compression: str | None) -> None:
        self.url = url
        self.auth = auth
        self.key = key
        self.headers = headers
        self.max_size = max_size
        self.compression = compression
        self._client: WsClient | None = None

    async def __aenter__(self) -> WsClient:
        # The key goes as yap_core.wsclient sends it; "none" sends no key at all.
        conn = await open_ws(
            self.url,
            None if self.auth == "none" else self.key,
            auth="header" if self.auth == "none" else self.auth,  # type: ignore[arg-type]
            headers=self.headers,
            open_timeout=20,
            max_size=self.max_size,
            compression=self.compression,
        )
        client = WsClient(conn)
        self._client = client
        return client

    async def __aexit__(self, *exc: object) -> None:
        if self._client is not None:
            await self._client.conn.close()


async def status(server: ServerProcess, key: str = API_KEY) -> dict[str, Any]:
    answer = await http_get_async(server.base_url + "/status", {"X-API-Key": key})
    assert answer.status == 200, answer
    return answer.body


async def engine_running(server: ServerProcess, settle_s: float = 3.0) -> int:
    """The engine's running requests per /status, after letting aborts settle
    (polls until 0 or ``settle_s``)."""
    deadline = time.monotonic() + settle_s
    while True:
        body = await status(server)
        running = body["engine"]["stats"]["running"]
        if running == 0 or time.monotonic() > deadline:
            return running
        await asyncio.sleep(0.05)


def types(frames: list[dict[str, Any]]) -> list[str]:
    return [f["type"] for f in frames]

