"""The real-model path: `yap serve` on the embedded default deployment (hf
engine on SmolLM2-135M GGUF, CPU, plus the trained screenshot classifier),
CHAT_MAX_OUT=8 and temperature 0 so turns are short and repeatable."""

from __future__ import annotations

import uuid

import pytest
from protocol_support import WsClient, engine_running, status, types
from yap_core.server_process import ServerProcess


@pytest.fixture(scope="module")
def server(yap_servers) -> ServerProcess:
    return yap_servers.get("hf")


def rid() -> str:
    return str(uuid.uuid4())


async def test_a_real_reply_streams_and_history_hits_the_prefix_cache(server: ServerProcess) -> None:
    async with WsClient.connect(server) as ws:
        r0 = rid()
        await ws.send("start", "s1", request_id=r0, payload={"personality": "friendly", "gender": "female"})
        (ready,) = await ws.turn(r0)
        assert ready["type"] == "ready"
        usages = []
        for question in ("What is the capital of France?", "And the capital of Spain?"):
            r = rid()
            await ws.send("message", "s1", request_id=r, payload={"user_utterance": question})
            frames = await ws.turn(r)
            kinds = types(frames)
            assert kinds[0] == "toolcall" and frames[0]["payload"]["status"] == "no", frames[0]
            assert kinds[-2:] == ["final", "done"] and set(kinds[1:-2]) == {"token"}, kinds
            text = "".join(f["payload"]["text"] for f in frames if f["type"] == "token")
            assert text.strip() and frames[-2]["payload"]["text"] == text
            usage = frames[-1]["payload"]["usage"]
            assert 1 <= usage["completion_tokens"] <= 8
            assert usage["ttft_ms"] is not None and usage["ttft_ms"] <= usage["total_ms"]
            usages.append(usage)
    assert usages[1]["prompt_tokens"] > usages[0]["prompt_tokens"]
    assert usages[0]["cached_prompt_tokens"] > 0  # the start's prefill
    assert usages[1]["cached_prompt_tokens"] > usages[0]["cached_prompt_tokens"]  # the first turn is cached


async def test_cancel_and_barge_in_abort_the_real_engine(server: ServerProcess) -> None:
    async with WsClient.connect(server) as ws:
        r1, r2, r3 = rid(), rid(), rid()
        await ws.send("start", "s1", request_id=r1, payload={"user_utterance": "Tell me a long story about a dragon."})
        assert (await ws.recv())["type"] == "toolcall"
        first = await ws.recv()
        assert first["type"] == "token" and first["request_id"] == r1
        await ws.send("message", "s1", request_id=r2, payload={"user_utterance": "Actually, just say hi."})
        old = await ws.turn(r1)
        assert old[-1]["type"] == "cancelled" and old[-1]["payload"]["reason"] == "barge_in"
        await ws.recv()  # the new turn's first frame
        await ws.send("cancel", "s1", request_id=r3)
        new = await ws.turn(r2)
        assert new[-1]["type"] in ("cancelled", "done")
    assert await engine_running(server) == 0


async def test_disconnect_mid_turn_aborts_the_real_engine(server: ServerProcess) -> None:
    async with WsClient.connect(server) as ws:
        r = rid()
        await ws.send("start", "s1", request_id=r, payload={"user_utterance": "Count from one to fifty."})
        assert types([await ws.recv(), await ws.recv()]) == ["toolcall", "token"]
    assert await engine_running(server) == 0
    body = await status(server)
    assert body["engine"]["name"] == server.env["INFERENCE_ENGINE"] and body["active_turns"] == 0


async def test_the_trained_classifier_routes_a_screen_request(server: ServerProcess) -> None:
    async with WsClient.connect(server) as ws:
        r = rid()
        await ws.send("start", "s1", request_id=r, payload={"user_utterance": "Can you look at my screen and tell me what you see?"})
        frames = await ws.turn(r)
    tool = frames[0]
    assert tool["type"] == "toolcall" and tool["payload"]["status"] == "yes"
    assert tool["payload"]["tool"] == "take_screenshot" and tool["payload"]["confidence"] >= 0.5
    assert types(frames)[-2:] == ["final", "done"]
