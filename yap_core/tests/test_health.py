"""/healthz with SERVER_WORKERS > 1 speaks for the deployment: every worker
serves the one port, so while any worker is still starting, a socket the
kernel hands it would get 1013, and the deployment is not ready.

Real objects: the workers' shared board, a worker's Runtime and the ASGI app,
over httpx's ASGI transport; the other worker's row written as it would be."""

from __future__ import annotations

import os

import httpx
from yap_core.app import YapApp
from yap_core.board import Board
from yap_core.runtime import Runtime
from yap_core.settings import Config, CoreSettings
from yap_core.workers import WorkerSpec


async def healthz(app: YapApp) -> tuple[int, dict]:
    transport = httpx.ASGITransport(app=app.asgi)
    async with httpx.AsyncClient(transport=transport, base_url="http://yap") as client:
        answer = await client.get("/healthz")
    return answer.status_code, answer.json()


async def test_healthz_waits_for_every_worker() -> None:
    board = Board.create(2)
    try:
        config = Config({"INFERENCE_ENGINE": "scripted", "TOOL_CLASSIFIER": "scripted", "TEXT_API_KEY": "k" * 32})
        spec = WorkerSpec(index=0, count=2, fd=-1, parent_pid=os.getpid(), board_fd=board.fd)
        runtime = Runtime(config, config.section("core", CoreSettings), worker=spec)
        app = YapApp(runtime)
        await runtime.close()  # never started: nothing but its telemetry to close
        assert await healthz(app) == (503, {"status": "starting", "detail": "loading models"})

        runtime.state = "ready"  # this worker is; worker 2 has not written its row yet
        assert await healthz(app) == (503, {"status": "starting", "detail": "worker 2 of 2 is unknown"})
        board.write(1, "starting", 0, 39, 0, 0)
        assert await healthz(app) == (503, {"status": "starting", "detail": "worker 2 of 2 is starting"})
        assert (await runtime.status())["status"] == "starting"

        board.write(1, "ready", 0, 39, 0, 0)
        assert await healthz(app) == (200, {"status": "ok"})
        assert (await runtime.status())["status"] == "ready"

        board.write(1, "draining", 0, 39, 0, 0)  # SIGTERM reached the other worker first
        assert await healthz(app) == (503, {"status": "draining", "detail": "worker 2 of 2 is draining"})
        runtime.state = "unhealthy"  # this worker's own state comes first
        runtime.detail = "engine stats failed"
        assert await healthz(app) == (503, {"status": "unhealthy", "detail": "engine stats failed"})
    finally:
        board.close()


async def test_healthz_of_a_lone_server_is_its_own_state() -> None:
    config = Config({"INFERENCE_ENGINE": "scripted", "TOOL_CLASSIFIER": "scripted", "TEXT_API_KEY": "k" * 32})
    runtime = Runtime(config, config.section("core", CoreSettings))
    app = YapApp(runtime)
    await runtime.close()
    assert await healthz(app) == (503, {"status": "starting", "detail": "loading models"})
    runtime.state = "ready"
    assert await healthz(app) == (200, {"status": "ok"})
