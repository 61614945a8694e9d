"""Cancel, barge-in, end, disconnect, timeout and engine failure, end to end.

The "slow" server's scripted engine yields one word per 150 ms, so turns are
still running when the client interrupts; /status shows the engine's running
requests, which must drop to 0 after every kind of interruption.
"""

from __future__ import annotations

import asyncio
import uuid

import pytest
from protocol_support import WsClient, engine_running, types
from yap_core.server_process import ServerProcess


@pytest.fixture(scope="module")
def server(yap_servers) -> ServerProcess:
    return yap_servers.get("slow")


def rid() -> str:
    return str(uuid.uuid4())


async def first_token(ws: WsClient, request_id: str) -> list[dict]:
    """Frames of ``request_id`` up to its first token."""
    got = []
    while True:
        frame = await ws.recv()
        assert frame["request_id"] == request_id, frame
        got.append(frame)
        if frame["type"] == "token":
            return got


async def test_cancel_stops_the_turn_and_the_engine(server: ServerProcess) -> None:
    async with WsClient.connect(server) as ws:
        r = rid()
        await ws.send("start", "s1", request_id=r, payload={"user_utterance": "tell me a story"})
        seen = await first_token(ws, r)
        assert types(seen)[0] == "toolcall"  # tool call first, also with CONCURRENT_MODEL_CALL=1
        await ws.send("cancel", "s1", payload={"reason": "user spoke"})
        frames = await ws.turn(r)
        assert frames[-1] == {"type": "cancelled", "session_id": "s1", "request_id": r, "payload": {"reason": "user spoke"}}
        assert set(types(frames[:-1])) <= {"token"}
        # Nothing of r after its cancelled: the next frame on the socket is the pong.
        await asyncio.sleep(0.5)
        await ws.send("ping", request_id="after")
        nxt = await ws.recv()
        assert nxt["type"] == "pong", nxt
    assert await engine_running(server) == 0


async def test_barge_in_cancels_the_old_turn_first_and_keeps_its_partial_reply(server: ServerProcess) -> None:
    async with WsClient.connect(server) as ws:
        old, new = rid(), rid()
        await ws.send("start", "s1", request_id=old, payload={"user_utterance": "first question", "sampling": {"sanitize_output": False}})
        heard = await first_token(ws, old)
        await ws.send("message", "s1", request_id=new, payload={"user_utterance": "second", "sampling": {"max_tokens": 2}})
        rest = []
        while True:
            frame = await ws.recv()
            if frame["request_id"] != old:
                break
            rest.append(frame)
        assert rest and rest[-1]["type"] == "cancelled" and rest[-1]["payload"]["reason"] == "barge_in"
        partial = "".join(f["payload"]["text"] for f in heard + rest if f["type"] == "token")
        new_frames = [frame, *await ws.turn(new)]
        assert all(f["request_id"] == new for f in new_frames)
        assert types(new_frames)[0] == "toolcall" and new_frames[-1]["type"] == "done"
        barged_prompt = new_frames[-1]["payload"]["usage"]["prompt_tokens"]

        # The same conversation given as history: identical prompt, so the
        # partial reply (exactly what was sent) is what history kept.
        check = rid()
        history = [{"role": "user", "content": "first question"}, {"role": "assistant", "content": partial}]
        await ws.send("start", "s2", request_id=check, payload={"history": history, "user_utterance": "second", "sampling": {"max_tokens": 2}})
        control = await ws.turn(check)
        assert control[-1]["payload"]["usage"]["prompt_tokens"] == barged_prompt
    assert await engine_running(server) == 0


async def test_frames_that_cannot_barge_in_leave_the_turn_running(server: ServerProcess) -> None:
    async with WsClient.connect(server) as ws:
        r = rid()
        await ws.send("start", "s1", request_id=r, payload={"user_utterance": "keep going", "sampling": {"max_tokens": 6}})
        await first_token(ws, r)
        await ws.send("message", "s1", payload={"user_utterance": ""})  # invalid
        await ws.send("message", "s1", payload={"user_utterance": "x", "sampling": {"top_p": 5}})  # invalid
        await ws.send("start", "other", request_id="o", payload={})  # another session
        frames = await ws.turn(r)
        assert frames[-1]["type"] == "done"
        others = types(ws.others)
        assert others.count("error") == 2 and "ready" in others and "cancelled" not in others


async def test_disconnect_mid_turn_aborts_the_engine_request(server: ServerProcess) -> None:
    async with WsClient.connect(server) as ws:
        r = rid()
        await ws.send("start", "s1", request_id=r, payload={"user_utterance": "a long answer please"})
        await first_token(ws, r)
        body_running = await engine_running(server, settle_s=0)
        assert body_running >= 1
    assert await engine_running(server) == 0


async def test_end_during_a_turn_cancels_it_before_session_end(server: ServerProcess) -> None:
    async with WsClient.connect(server) as ws:
        r = rid()
        await ws.send("start", "s1", request_id=r, payload={"user_utterance": "talk to me"})
        await first_token(ws, r)
        await ws.send("end", "s1")
        code = await ws.closed()
    tail = [f for f in ws.tail if f["type"] != "token"]
    assert types(tail) == ["cancelled", "session_end"]
    assert tail[0]["request_id"] == r and tail[0]["payload"]["reason"] == "end"
    assert code == 1000
    assert await engine_running(server) == 0


async def test_turn_past_chat_timeout_is_an_error_and_aborted(server: ServerProcess) -> None:
    async with WsClient.connect(server) as ws:
        r = rid()
        # 40 tokens at 150 ms is 6 s, over CHAT_TIMEOUT_S=2.
        await ws.send("start", "s1", request_id=r, payload={"user_utterance": "go on"})
        frames = await ws.turn(r)
    err = frames[-1]
    assert err["type"] == "error" and err["payload"]["code"] == "timeout" and err["payload"]["retryable"] is True
    assert "final" not in types(frames)
    assert await engine_running(server) == 0


async def test_engine_failure_mid_turn_is_internal_error(server: ServerProcess) -> None:
    async with WsClient.connect(server) as ws:
        r = rid()
        await ws.send("start", "s1", request_id=r, payload={"user_utterance": "please fail now"})
        frames = await ws.turn(r)
        assert frames[-1]["type"] == "error" and frames[-1]["payload"]["code"] == "internal_error"
        # The session goes on.
        r2 = rid()
        await ws.send("message", "s1", request_id=r2, payload={"user_utterance": "ok", "sampling": {"max_tokens": 1}})
        assert (await ws.turn(r2))[-1]["type"] == "done"
    assert await engine_running(server) == 0


async def test_two_sessions_on_one_socket_run_together(server: ServerProcess) -> None:
    async with WsClient.connect(server) as ws:
        a, b = rid(), rid()
        await ws.send("start", "sa", request_id=a, payload={"user_utterance": "one", "sampling": {"max_tokens": 3}})
        await ws.send("start", "sb", request_id=b, payload={"user_utterance": "two", "sampling": {"max_tokens": 3}})
        seen: dict[str, list[str]] = {a: [], b: []}
        while not all(v and v[-1] == "done" for v in seen.values()):
            frame = await ws.recv()
            seen[frame["request_id"]].append(frame["type"])
    for kinds in seen.values():
        assert kinds[0] == "toolcall" and kinds[-2:] == ["final", "done"]


async def test_start_of_the_same_session_barges_in(server: ServerProcess) -> None:
    async with WsClient.connect(server) as ws:
        old, new = rid(), rid()
        await ws.send("start", "s1", request_id=old, payload={"user_utterance": "first"})
        await first_token(ws, old)
        await ws.send("start", "s1", request_id=new, payload={"chat_prompt": "Be brief."})
        rest = await ws.turn(old)
        assert rest[-1]["type"] == "cancelled" and rest[-1]["payload"]["reason"] == "barge_in"
        ready = await ws.recv()
        assert ready["type"] == "ready" and ready["request_id"] == new and ready["session_id"] == "s1"
    assert await engine_running(server) == 0


async def test_concurrent_classifier_yes_restarts_the_chat_and_holds_tokens(server: ServerProcess) -> None:
    async with WsClient.connect(server) as ws:
        r = rid()
        await ws.send("start", "s1", request_id=r, payload={"user_utterance": "what is on my screen", "sampling": {"max_tokens": 3}})
        frames = await ws.turn(r)
    assert types(frames) == ["toolcall", "token", "token", "token", "final", "done"]
    assert frames[0]["payload"]["status"] == "yes"
    assert await engine_running(server) == 0
