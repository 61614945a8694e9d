"""Deployments and the server's life: classifier-only mode, start-up errors,
drain on SIGTERM (1001), and exit when the engine dies."""

from __future__ import annotations

import asyncio
import os
import subprocess

import pytest
from protocol_support import API_KEY, WsClient, types
from yap_core.server_process import ServerProcess, http_get_async, yap_executable


@pytest.fixture(scope="module")
def tool_server(yap_servers) -> ServerProcess:
    return yap_servers.get("tool")


async def test_classifier_only_start_answers_toolcall_then_done(tool_server: ServerProcess) -> None:
    async with WsClient.connect(tool_server) as ws:
        await ws.send("start", "s1", request_id="a", payload={"user_utterance": "can you see my screen"})
        yes = await ws.turn("a")
        await ws.send("message", "s1", request_id="b", payload={"user_utterance": "how are you"})
        no = await ws.turn("b")
        await ws.send("followup", "s1", request_id="c", payload={"analysis_text": "a cat"})
        err = await ws.recv()
    assert types(yes) == ["toolcall", "done"] and types(no) == ["toolcall", "done"]
    assert yes[0]["payload"]["status"] == "yes" and yes[0]["payload"]["tool"] == "take_screenshot"
    assert no[0]["payload"]["status"] == "no" and no[0]["payload"]["tool"] is None
    usage = yes[1]["payload"]["usage"]
    assert usage["ttft_ms"] is None and usage["completion_tokens"] == 0
    assert err["payload"]["code"] == "engine_unavailable" and err["request_id"] == "c"
    body = (await http_get_async(tool_server.base_url + "/status", {"X-API-Key": API_KEY})).body
    assert body["deploy_mode"] == "tool" and body["models"]["chat"] is None


def run_serve(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    full = {k: v for k, v in os.environ.items() if k not in ("TEXT_API_KEY", "INFERENCE_ENGINE", "DEPLOY_MODE")}
    full.update(env)
    return subprocess.run(
        [yap_executable(), "serve", "--host", "127.0.0.1", "--port", "0"],
        env=full, capture_output=True, text=True, timeout=60, check=False,
    )


@pytest.mark.parametrize(
    ("env", "needle"),
    [
        ({}, "TEXT_API_KEY"),
        ({"TEXT_API_KEY": "k", "INFERENCE_ENGINE": "nosuch", "DEPLOY_MODE": "chat"}, "nosuch"),
        ({"TEXT_API_KEY": "k", "CHAT_MAX_OUT": "lots"}, "CHAT_MAX_OUT"),
        ({"TEXT_API_KEY": "k", "INFERENCE_ENGINE": "scripted", "DEPLOY_MODE": "chat", "TRUSTED_PROXIES": "not-an-ip"}, "TRUSTED_PROXIES"),
    ],
)
def test_bad_settings_fail_in_one_line_before_loading(env: dict[str, str], needle: str) -> None:
    done = run_serve(env)
    assert done.returncode != 0
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and needle in lines[0], done.stderr
    assert "loading" not in done.stderr


async def test_sigterm_drains_running_turns_then_closes_1001(yap_servers) -> None:
    server = yap_servers.start(
        {"INFERENCE_ENGINE": "scripted", "DEPLOY_MODE": "chat", "SCRIPTED_TOKEN_DELAY_MS": "100", "CHAT_MAX_OUT": "15", "DRAIN_TIMEOUT_S": "10"}
    )
    async with WsClient.connect(server) as ws:
        await ws.send("start", "s1", request_id="r", payload={"user_utterance": "finish me"})
        assert (await ws.recv())["type"] == "token"
        server.proc.terminate()  # SIGTERM
        await asyncio.sleep(0.3)
        health = await http_get_async(server.base_url + "/healthz")
        assert health.status == 503 and health.body["status"] == "draining"
        async with WsClient.connect(server) as late:
            refused = await late.recv()
            assert refused["type"] == "error" and await late.closed() == 1001
        frames = await ws.turn("r")
        assert frames[-1]["type"] == "done"  # the running turn finished
        code = await ws.closed()
    assert code == 1001
    assert await server.wait_exit(15) == 0


async def test_drain_timeout_cuts_turns_without_a_terminal_frame(yap_servers) -> None:
    server = yap_servers.start(
        {"INFERENCE_ENGINE": "scripted", "DEPLOY_MODE": "chat", "SCRIPTED_TOKEN_DELAY_MS": "500", "CHAT_MAX_OUT": "40", "DRAIN_TIMEOUT_S": "0.5"}
    )
    async with WsClient.connect(server) as ws:
        await ws.send("start", "s1", request_id="r", payload={"user_utterance": "a very long reply please"})
        assert (await ws.recv())["type"] == "token"
        server.proc.terminate()
        code = await ws.closed(wait_s=15)
    assert code == 1001
    assert not {"done", "cancelled", "error"} & set(types(ws.tail))
    assert await server.wait_exit(15) == 0


async def test_engine_death_turns_unhealthy_and_exits_non_zero(yap_servers) -> None:
    server = yap_servers.start({"INFERENCE_ENGINE": "scripted", "DEPLOY_MODE": "chat", "SCRIPTED_DIE_ON": "drop dead"})
    async with WsClient.connect(server) as ws:
        await ws.send("start", "s1", request_id="r", payload={"user_utterance": "drop dead"})
        frames = await ws.turn("r")
        assert frames[-1]["type"] == "error"
    assert await server.wait_exit(15) == 1
    assert "unhealthy" in server.log_text()

