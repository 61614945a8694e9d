"""The Starlette app: ``/healthz``, ``/status`` and ``/ws``.

Order at connect: authenticate, take a connection slot, serve. A rejected
socket completes the handshake, gets one ``error`` frame and is closed
(1008 authentication or Origin, 1013 capacity or still starting, 1001 draining).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route, WebSocketRoute
from starlette.websockets import WebSocket

from yap_core import frames
from yap_core.auth import Authenticator
from yap_core.connection import (
    CLOSE_GOING_AWAY,
    CLOSE_POLICY,
    CLOSE_TRY_LATER,
    Connection,
)
from yap_core.runtime import Runtime

log = logging.getLogger("yap.app")
_CLOSE_ALL_S = 10.0
# A failing attempt from a throttled address waits this long for its answer.
THROTTLE_DELAY_S = 1.0  # sockets whose clients never answer the close are left to Hypercorn


def _peer(scope: dict[str, Any]) -> str | None:
    client = scope.get("client")
    return client[0] if client else None


class YapApp:
    """The ASGI app of one runtime, with the live sockets it may have to close."""

    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime
        self.auth = Authenticator(runtime.settings, runtime.worker.count if runtime.worker is not None else 1)
        self.live: set[Connection] = set()
        self._none_live = asyncio.Event()
        self._none_live.set()
        self.asgi = Starlette(
            routes=[
                Route("/healthz", self.healthz, methods=["GET"]),
                Route("/status", self.status, methods=["GET"]),
                WebSocketRoute("/ws", self.websocket),
            ]
        )

    # --- HTTP -------------------------------------------------------------------
    async def healthz(self, request: Request) -> JSONResponse:
        state, detail = self.runtime.health()
        if state == "ready":
            return JSONResponse({"status": "ok"})
        return JSONResponse({"status": state, "detail": detail}, status_code=503)

    async def status(self, request: Request) -> JSONResponse:
        result = self.auth.authenticate(_peer(request.scope), request.scope["headers"], request.scope["query_string"])
        if result.verdict == "throttled":
            self.runtime.telemetry.rate_limit_violation("auth")
            await asyncio.sleep(THROTTLE_DELAY_S)
            return JSONResponse(
                {"error": "authentication_failed", "message": result.message, "retry_after_ms": result.retry_after_ms},
                status_code=401,
            )
        if result.verdict != "ok":
            return JSONResponse({"error": "authentication_failed", "message": result.message}, status_code=401)
        return JSONResponse(await self.runtime.status())

    # --- WebSocket ----------------------------------------------------------------
    async def _reject(self, ws: WebSocket, code: int, frame: str) -> None:
        await ws.accept()
        with contextlib.suppress(Exception):
            await ws.send_text(frame)
            await ws.close(code)

    async def websocket(self, ws: WebSocket) -> None:
        rt = self.runtime
        tele = rt.telemetry
        result = self.auth.authenticate(_peer(ws.scope), ws.scope["headers"], ws.scope["query_string"])
        if result.verdict == "throttled":
            # Still authentication_failed (clients and tests see one answer to
            # a bad key), but slowed down; a valid key never gets here.
            tele.rate_limit_violation("auth")
            tele.connection_rejected("auth")
            await asyncio.sleep(THROTTLE_DELAY_S)
            frame = frames.error_frame("authentication_failed", result.message, retry_after_ms=result.retry_after_ms)
            await self._reject(ws, CLOSE_POLICY, frame)
            return
        if result.verdict != "ok":
            reason = "origin" if result.verdict == "bad_origin" else "auth"
            tele.connection_rejected(reason)
            await self._reject(ws, CLOSE_POLICY, frames.error_frame("authentication_failed", result.message))
            return
        if rt.state != "ready":
            tele.connection_rejected("capacity")
            code = CLOSE_GOING_AWAY if rt.state == "draining" else CLOSE_TRY_LATER
            message = f"the server is {rt.state}" + ("; connect again later" if rt.state != "unhealthy" else "")
            frame = frames.error_frame("engine_unavailable", message, retryable=rt.state != "unhealthy", retry_after_ms=1000)
            await self._reject(ws, code, frame)
            return
        t0 = time.perf_counter()
        if not rt.try_acquire_connection():
            tele.connection_rejected("capacity")
            cap = rt.capacity()
            frame = frames.error_frame(
                "server_at_capacity",
                f"{cap.active} of {cap.max} connections in use (MAX_CONCURRENT_CONNECTIONS)",
                retry_after_ms=1000,
                capacity=frames.Capacity(cap.active, cap.max),
            )
            await self._reject(ws, CLOSE_TRY_LATER, frame)
            return
        tele.semaphore_wait(time.perf_counter() - t0)
        opened = time.monotonic()
        connection = Connection(rt, ws.receive, ws.send)
        self.live.add(connection)
        self._none_live.clear()
        tele.connection_opened()
        try:
            await ws.accept()
            await connection.serve()
        finally:
            self.live.discard(connection)
            if not self.live:
                self._none_live.set()
            rt.release_connection()
            tele.connection_closed(time.monotonic() - opened)

    # --- drain ------------------------------------------------------------------
    async def close_all(self, code: int, reason: str) -> None:
        """Close every live socket (turns cut off get no terminal frame)."""
        for connection in list(self.live):
            connection.shutdown(code, reason)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(_CLOSE_ALL_S):
                await self._none_live.wait()
