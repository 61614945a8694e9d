"""PROTOCOL.md turns end to end: a real `yap serve` (scripted engine that echoes
the prompt's last user message, scripted keyword classifier) and a real
WebSocket client."""

from __future__ import annotations

import uuid

import pytest
from protocol_support import API_KEY, WsClient, engine_running, status, types
from yap_core.server_process import ServerProcess, http_get_async
from yap_core.settings import CoreSettings

SCREEN_PREFIX = CoreSettings().screen_check_prefix
FOLLOWUP_PREFIX = CoreSettings().followup_prefix


@pytest.fixture(scope="module")
def server(yap_servers) -> ServerProcess:
    return yap_servers.get("scripted")


def rid() -> str:
    return str(uuid.uuid4())


def check_done(frames: list[dict]) -> dict:
    done = frames[-1]
    assert done["type"] == "done", frames
    usage = done["payload"]["usage"]
    assert set(usage) == {"prompt_tokens", "completion_tokens", "cached_prompt_tokens", "ttft_ms", "total_ms"}
    assert 0 <= usage["cached_prompt_tokens"] <= usage["prompt_tokens"]
    if usage["ttft_ms"] is not None:
        assert 0 <= usage["ttft_ms"] <= usage["total_ms"]
    assert done["payload"]["finish_reason"] in ("stop", "length")
    return usage


def reply(frames: list[dict]) -> str:
    text = "".join(f["payload"]["text"] for f in frames if f["type"] == "token")
    final = [f for f in frames if f["type"] == "final"]
    assert len(final) == 1
    assert final[0]["payload"]["text"] == text  # tokens concatenate to final
    return text


async def test_start_with_utterance_runs_a_whole_turn(server: ServerProcess) -> None:
    async with WsClient.connect(server) as ws:
        r = rid()
        await ws.send("start", "s1", request_id=r, payload={"user_utterance": "hello there friend"})
        frames = await ws.turn(r)
    kinds = types(frames)
    assert kinds[0] == "toolcall"
    assert kinds[-2:] == ["final", "done"]
    assert set(kinds[1:-2]) == {"token"}
    assert all(f["session_id"] == "s1" and f["request_id"] == r for f in frames)
    tool = frames[0]["payload"]
    assert tool["status"] == "no" and tool["tool"] is None and 0 <= tool["confidence"] <= 1
    assert isinstance(tool["raw"], dict)
    assert reply(frames) == "hello there friend"
    usage = check_done(frames)
    assert usage["completion_tokens"] == 3 and usage["ttft_ms"] is not None


async def test_server_assigns_one_request_id_per_turn(server: ServerProcess) -> None:
    async with WsClient.connect(server, auth="bearer") as ws:
        await ws.send("start", "s1", payload={"user_utterance": "no id here"})
        first = await ws.recv()
        assigned = first["request_id"]
        uuid.UUID(assigned)
        frames = [first, *await ws.turn(assigned)]
    assert {f["request_id"] for f in frames} == {assigned}
    check_done(frames)


async def test_toolcall_yes_puts_the_screen_prefix_before_the_user_text(server: ServerProcess) -> None:
    async with WsClient.connect(server, auth="query") as ws:
        r = rid()
        payload = {"user_utterance": "look at my screen", "sampling": {"sanitize_output": False, "max_tokens": 40}}
        await ws.send("start", "s1", request_id=r, payload=payload)
        frames = await ws.turn(r)
    tool = frames[0]
    assert tool["type"] == "toolcall"
    assert tool["payload"]["status"] == "yes" and tool["payload"]["tool"] == "take_screenshot"
    # The echo engine replies with what the chat model received.
    assert reply(frames).split() == (SCREEN_PREFIX + "look at my screen").split()[:40]


async def test_followup_adds_the_analysis_without_tool_routing(server: ServerProcess) -> None:
    async with WsClient.connect(server) as ws:
        await ws.send("start", "s1", payload={"sampling": {"sanitize_output": False}})
        ready = await ws.recv()
        assert ready["type"] == "ready"
        r = rid()
        await ws.send("followup", "s1", request_id=r, payload={"analysis_text": "a spreadsheet of sales"})
        frames = await ws.turn(r)
    assert "toolcall" not in types(frames)
    assert reply(frames).split() == (FOLLOWUP_PREFIX + "a spreadsheet of sales").split()
    check_done(frames)


async def test_history_grows_and_the_prefix_cache_hits(server: ServerProcess) -> None:
    async with WsClient.connect(server) as ws:
        r0 = rid()
        await ws.send("start", "s1", request_id=r0, payload={"chat_prompt": "You are terse."})
        (ready,) = await ws.turn(r0)
        assert ready["type"] == "ready" and ready["request_id"] == r0
        assert isinstance(ready["payload"]["cached_prompt_tokens"], int)
        usages = []
        for text in ("first thing", "second thing"):
            r = rid()
            await ws.send("message", "s1", request_id=r, payload={"user_utterance": text})
            frames = await ws.turn(r)
            assert reply(frames) == text
            usages.append(check_done(frames))
    assert usages[1]["prompt_tokens"] > usages[0]["prompt_tokens"]  # history is in the prompt
    assert usages[0]["cached_prompt_tokens"] > 0  # the prefill of `start` warmed the prefix
    assert usages[1]["cached_prompt_tokens"] >= usages[0]["prompt_tokens"] // 2


async def test_message_sampling_applies_to_that_turn_only(server: ServerProcess) -> None:
    async with WsClient.connect(server) as ws:
        await ws.send("start", "s1", payload={})
        await ws.recv()
        r1, r2 = rid(), rid()
        await ws.send("message", "s1", request_id=r1, payload={"user_utterance": "one two three four five", "sampling": {"max_tokens": 2}})
        short = await ws.turn(r1)
        await ws.send("message", "s1", request_id=r2, payload={"user_utterance": "one two three four five"})
        full = await ws.turn(r2)
    assert short[-1]["payload"]["finish_reason"] == "length"
    assert short[-1]["payload"]["usage"]["completion_tokens"] == 2
    assert reply(short) == "one two"
    assert full[-1]["payload"]["finish_reason"] == "stop"
    assert reply(full) == "one two three four five"


async def test_sanitize_output_is_per_turn(server: ServerProcess) -> None:
    text = "I **really** like it *smiles*"
    async with WsClient.connect(server) as ws:
        await ws.send("start", "s1", payload={})
        await ws.recv()
        r1, r2 = rid(), rid()
        await ws.send("message", "s1", request_id=r1, payload={"user_utterance": text})
        clean = reply(await ws.turn(r1))
        await ws.send("message", "s1", request_id=r2, payload={"user_utterance": text, "sampling": {"sanitize_output": False}})
        raw = reply(await ws.turn(r2))
    assert "*" not in clean and "really" in clean
    assert raw == text


async def test_ping_gets_pong_and_pong_gets_nothing(server: ServerProcess) -> None:
    async with WsClient.connect(server) as ws:
        await ws.send("pong", "x", request_id="p0")
        await ws.send("ping", "s9", request_id="p1")
        await ws.send("ping")
        first, second = await ws.recv(), await ws.recv()
    assert first == {"type": "pong", "session_id": "s9", "request_id": "p1", "payload": {}}
    assert second["type"] == "pong" and second["session_id"] == "unknown" and second["payload"] == {}


async def test_message_without_a_session_is_session_not_found(server: ServerProcess) -> None:
    async with WsClient.connect(server) as ws:
        await ws.send("message", "nope", request_id="r", payload={"user_utterance": "hi"})
        err = await ws.recv()
        await ws.send("followup", "nope", payload={"analysis_text": "x"})
        err2 = await ws.recv()
    assert err["type"] == "error" and err["payload"]["code"] == "session_not_found"
    assert err["session_id"] == "nope" and err["request_id"] == "r"
    assert err["payload"]["retryable"] is False
    assert err2["payload"]["code"] == "session_not_found"


async def test_sessions_belong_to_their_socket(server: ServerProcess) -> None:
    async with WsClient.connect(server) as a, WsClient.connect(server) as b:
        await a.send("start", "mine", payload={})
        assert (await a.recv())["type"] == "ready"
        await b.send("message", "mine", payload={"user_utterance": "hi"})
        err = await b.recv()
    assert err["payload"]["code"] == "session_not_found"


BAD_MESSAGES = ["not json", "[1, 2]", '"a string"', "{}", '{"type": 5}', '{"type": "dance"}']
BAD_PAYLOADS = [
    ({"type": "start"}, "session_id"),
    ({"type": "start", "session_id": 7}, "session_id"),
    ({"type": "message", "session_id": "s", "payload": {"user_utterance": ""}}, "payload.user_utterance"),
    ({"type": "message", "session_id": "s", "payload": {}}, "payload.user_utterance"),
    ({"type": "message", "session_id": "s", "payload": {"user_utterance": "hi", "chat_prompt": "x"}}, "payload.chat_prompt"),
    ({"type": "start", "session_id": "s", "payload": {"sampling": {"temperature": "0.5"}}}, "payload.sampling.temperature"),
    ({"type": "start", "session_id": "s", "payload": {"sampling": {"temperature": True}}}, "payload.sampling.temperature"),
    ({"type": "start", "session_id": "s", "payload": {"sampling": {"temperature": 2.5}}}, "payload.sampling.temperature"),
    ({"type": "start", "session_id": "s", "payload": {"sampling": {"top_p": 0}}}, "payload.sampling.top_p"),
    ({"type": "start", "session_id": "s", "payload": {"sampling": {"top_k": 0}}}, "payload.sampling.top_k"),
    ({"type": "start", "session_id": "s", "payload": {"sampling": {"max_tokens": 1.5}}}, "payload.sampling.max_tokens"),
    ({"type": "start", "session_id": "s", "payload": {"sampling": {"max_tokens": 41}}}, "payload.sampling.max_tokens"),
    ({"type": "start", "session_id": "s", "payload": {"sampling": {"sanitize_output": 1}}}, "payload.sampling.sanitize_output"),
    ({"type": "start", "session_id": "s", "payload": {"sampling": {"seed": 1}}}, "payload.sampling.seed"),
    ({"type": "start", "session_id": "s", "payload": {"personality": "no spaces!"}}, "payload.personality"),
    ({"type": "start", "session_id": "s", "payload": {"gender": "other"}}, "payload.gender"),
    ({"type": "start", "session_id": "s", "payload": {"history": [{"role": "system", "content": "x"}]}}, "payload.history[0].role"),
    ({"type": "start", "session_id": "s", "payload": {"history": [{"role": "user", "content": "x", "name": "y"}]}}, "payload.history[0].name"),
    ({"type": "followup", "session_id": "s", "payload": {"analysis_text": "x", "sampling": {}}}, "payload.sampling"),
    ({"type": "cancel", "payload": {"reason": "x" * 201}}, "payload.reason"),
    ({"type": "cancel", "payload": {"why": "x"}}, "payload.why"),
]


async def test_bad_frames_get_invalid_message_or_payload_and_the_socket_survives(server: ServerProcess) -> None:
    import json

    async with WsClient.connect(server) as ws:
        for raw in BAD_MESSAGES:
            await ws.send_raw(raw)
            err = await ws.recv()
            assert err["type"] == "error" and err["payload"]["code"] == "invalid_message", (raw, err)
            assert err["session_id"] == "unknown" and err["payload"]["retryable"] is False
        for frame, field in BAD_PAYLOADS:
            await ws.send_raw(json.dumps(frame))
            err = await ws.recv()
            assert err["payload"]["code"] == "invalid_payload", (frame, err)
            assert field in err["payload"]["message"], (frame, err)
            assert err["payload"]["field"] == field
        await ws.send("ping", request_id="still-here")
        assert (await ws.recv())["request_id"] == "still-here"


async def test_chat_prompt_over_its_budget_is_invalid_payload(server: ServerProcess) -> None:
    async with WsClient.connect(server) as ws:
        # A system prompt over CHAT_PROMPT_MAX_TOKENS is invalid_payload naming it.
        await ws.send("start", "s1", request_id="big", payload={"chat_prompt": "x" * 5000})
        err = await ws.recv()
    assert err["payload"]["code"] == "invalid_payload" and err["request_id"] == "big"
    assert "chat_prompt" in err["payload"]["message"]


async def test_cancel_with_nothing_running_gets_exactly_one_cancelled(server: ServerProcess) -> None:
    async with WsClient.connect(server) as ws:
        await ws.send("cancel", "s1", request_id="c1", payload={"reason": "just because"})
        got = await ws.recv()
        await ws.send("ping", request_id="after")
        nxt = await ws.recv()
    assert got == {"type": "cancelled", "session_id": "s1", "request_id": "c1", "payload": {"reason": "just because"}}
    assert nxt["type"] == "pong"


async def test_end_sends_session_end_and_closes_1000(server: ServerProcess) -> None:
    async with WsClient.connect(server) as ws:
        await ws.send("start", "s1", payload={})
        await ws.recv()
        await ws.send("end", "s1", request_id="e")
        code = await ws.closed()
    assert types(ws.tail) == ["session_end"]
    assert ws.tail[0]["session_id"] == "s1" and ws.tail[0]["payload"] == {}
    assert code == 1000


async def test_status_needs_a_key_and_reports_the_deployment(server: ServerProcess) -> None:
    none = await http_get_async(server.base_url + "/status")
    assert none.status == 401
    wrong = await http_get_async(server.base_url + "/status", {"X-API-Key": "wrong"})
    assert wrong.status == 401
    bearer = await http_get_async(server.base_url + "/status", {"Authorization": "Bearer second-key"})
    assert bearer.status == 200
    query = await http_get_async(server.base_url + f"/status?api_key={API_KEY}")
    assert query.status == 200
    body = await status(server)
    assert body["engine"]["name"] == "scripted" and isinstance(body["engine"]["version"], str)
    assert body["models"] == {"chat": "scripted", "tool": "scripted-keywords"}
    assert body["deploy_mode"] == "both"
    conns = body["connections"]
    assert set(conns) >= {"active", "max", "available", "at_capacity"}
    assert conns["max"] == 100 and conns["available"] == conns["max"] - conns["active"]
    assert isinstance(body["active_turns"], int) and body["uptime_s"] > 0
    assert {"name": "scripted", "version": body["plugins"][0]["version"]} in body["plugins"]
    health = await http_get_async(server.base_url + "/healthz")
    assert health.status == 200 and health.body == {"status": "ok"}
    assert await engine_running(server) == 0


async def test_history_keeps_the_utterance_without_the_screen_prefix(server: ServerProcess) -> None:
    async with WsClient.connect(server) as ws:
        r1, r2, r3 = rid(), rid(), rid()
        await ws.send("start", "a", request_id=r1, payload={"user_utterance": "look at my screen"})
        first = await ws.turn(r1)
        assert first[0]["payload"]["status"] == "yes"
        heard = reply(first)
        await ws.send("message", "a", request_id=r2, payload={"user_utterance": "thanks"})
        barged = check_done(await ws.turn(r2))["prompt_tokens"]
        # The same conversation given as plain history renders the same prompt.
        history = [{"role": "user", "content": "look at my screen"}, {"role": "assistant", "content": heard}]
        await ws.send("start", "b", request_id=r3, payload={"history": history, "user_utterance": "thanks"})
        control = check_done(await ws.turn(r3))["prompt_tokens"]
    assert control == barged


async def test_prompt_that_cannot_fit_the_context_is_text_too_long(server: ServerProcess) -> None:
    async with WsClient.connect(server) as ws:
        # 1400 + 340 tokens (byte-level tokenizer) + 40 out: over the 1700-token context.
        await ws.send("start", "s1", request_id="long", payload={"chat_prompt": "x" * 1400, "user_utterance": "y" * 340})
        frames = await ws.turn("long")
        await ws.send("message", "s1", request_id="short", payload={"user_utterance": "hi"})
        after = await ws.turn("short")
    assert types(frames) == ["toolcall", "error"]
    assert frames[-1]["payload"]["code"] == "text_too_long" and frames[-1]["payload"]["retryable"] is False
    assert after[-1]["type"] == "done"  # the session survives; nothing was added to its history
