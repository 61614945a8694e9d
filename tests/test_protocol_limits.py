"""Admission and limits end to end: auth (three sources, several keys, first
source wins, throttling), Origin, capacity (1013), frame size (1009), idle
(4000), rate windows, and keys kept out of the access log.

The "limits" server: MAX_CONCURRENT_CONNECTIONS=2, WS_MAX_MESSAGE_BYTES=1024,
WS_IDLE_TIMEOUT_S=1.5, 3 messages and 2 cancels per 30 s, 3 auth failures per
60 s, ALLOWED_ORIGINS=https://app.example, 300 ms per scripted token.
"""

from __future__ import annotations

import asyncio
import json

import pytest
from protocol_support import API_KEY, WsClient, engine_running, status, types
from yap_core.server_process import ServerProcess


@pytest.fixture(scope="module")
def server(yap_servers) -> ServerProcess:
    return yap_servers.get("limits")


async def rejected(ws: WsClient) -> tuple[dict, int | None]:
    frame = await ws.recv()
    return frame, await ws.closed()


async def test_bad_or_missing_key_gets_authentication_failed_then_1008(yap_servers) -> None:
    server = yap_servers.get("scripted")  # own throttle table: the limits server tests throttling
    for auth, key in (("header", "wrong"), ("bearer", "wrong"), ("query", "wrong"), ("none", "")):
        async with WsClient.connect(server, auth=auth, key=key) as ws:
            frame, code = await rejected(ws)
        assert frame["type"] == "error" and frame["session_id"] == "unknown"
        assert frame["payload"]["code"] == "authentication_failed" and frame["payload"]["retryable"] is False
        assert code == 1008


async def test_first_key_source_present_is_the_one_checked(yap_servers) -> None:
    server = yap_servers.get("scripted")
    # A bad X-API-Key is not rescued by a good query key.
    ws_conn = WsClient.connect(server, auth="query", key=API_KEY, headers={"X-API-Key": "bad"})
    async with ws_conn as ws:
        frame, code = await rejected(ws)
    assert frame["payload"]["code"] == "authentication_failed" and code == 1008
    # Any of the rotated keys works, by any source.
    async with WsClient.connect(server, auth="bearer", key="second-key") as ws:
        await ws.send("ping", request_id="k2")
        assert (await ws.recv())["type"] == "pong"


async def test_auth_failures_are_throttled_but_a_valid_key_still_gets_in(server: ServerProcess) -> None:
    answers = []
    for _ in range(5):
        async with WsClient.connect(server, key="guess") as ws:
            frame, close = await rejected(ws)
            answers.append(frame["payload"])
            assert close == 1008
    assert [a["code"] for a in answers] == ["authentication_failed"] * 5
    # Past AUTH_MAX_FAILURES=3 the answer is slowed and says when the window frees.
    assert ["retry_after_ms" in a for a in answers] == [False] * 3 + [True] * 2
    assert all(0 < a["retry_after_ms"] <= 60_000 for a in answers[3:])
    # Same address, valid key: never throttled.
    async with WsClient.connect(server) as ws:
        await ws.send("ping", request_id="in")
        assert (await ws.recv())["type"] == "pong"


async def test_origin_outside_the_allow_list_is_refused(server: ServerProcess) -> None:
    async with WsClient.connect(server, headers={"Origin": "https://evil.example"}) as ws:
        frame, code = await rejected(ws)
    assert frame["payload"]["code"] == "authentication_failed" and code == 1008
    async with WsClient.connect(server, headers={"Origin": "https://app.example"}) as ws:
        await ws.send("ping", request_id="o")
        assert (await ws.recv())["type"] == "pong"


async def no_connections(server: ServerProcess) -> None:
    for _ in range(100):
        if (await status(server))["connections"]["active"] == 0:
            return
        await asyncio.sleep(0.05)


async def test_connections_over_the_cap_get_server_at_capacity_then_1013(server: ServerProcess) -> None:
    await no_connections(server)
    async with WsClient.connect(server) as a, WsClient.connect(server) as b:
        for ws in (a, b):
            await ws.send("ping")
            await ws.recv()
        async with WsClient.connect(server) as c:
            frame, code = await rejected(c)
    assert frame["payload"]["code"] == "server_at_capacity" and frame["payload"]["retryable"] is True
    assert frame["payload"]["capacity"] == {"active": 2, "max": 2}
    assert code == 1013
    # Slots come back when sockets close.
    async with WsClient.connect(server) as ws:
        await ws.send("ping")
        assert (await ws.recv())["type"] == "pong"


async def test_frame_over_the_limit_gets_message_too_large_then_1009(server: ServerProcess) -> None:
    async with WsClient.connect(server) as ws:
        await ws.send("start", "s1", payload={"chat_prompt": "x" * 2000})
        frame, code = await rejected(ws)
    assert frame["payload"]["code"] == "message_too_large" and code == 1009


async def test_huge_frame_is_cut_while_it_arrives_with_1009(server: ServerProcess) -> None:
    async with WsClient.connect(server) as ws:
        await ws.send_raw(json.dumps({"type": "ping", "pad": "y" * 200_000}))
        code = await ws.closed()
    assert code == 1009


async def test_idle_socket_is_closed_with_4000_but_not_during_a_turn(server: ServerProcess) -> None:
    async with WsClient.connect(server) as ws:
        await ws.send("start", "s1", request_id="long", payload={"user_utterance": "talk", "sampling": {"max_tokens": 8}})
        frames = await ws.turn("long")  # 8 tokens x 300 ms = 2.4 s, longer than the idle timeout
        assert frames[-1]["type"] == "done"
        code = await ws.closed(wait_s=5)
    assert code == 4000


async def test_pings_keep_a_socket_open(server: ServerProcess) -> None:
    async with WsClient.connect(server) as ws:
        for _ in range(4):
            await asyncio.sleep(0.6)
            await ws.send("ping")
            assert (await ws.recv())["type"] == "pong"


async def test_message_and_cancel_windows_answer_rate_limited(server: ServerProcess) -> None:
    async with WsClient.connect(server) as ws:
        for i in range(3):
            await ws.send("start", f"s{i}", payload={})
            assert (await ws.recv())["type"] == "ready"
        await ws.send("start", "s9", request_id="over", payload={})
        err = await ws.recv()
        assert err["payload"]["code"] == "rate_limited" and err["request_id"] == "over"
        assert 0 < err["payload"]["retry_after_ms"] <= 30_000 and err["payload"]["retryable"] is True
        for _ in range(2):
            await ws.send("cancel", "s0")
            assert (await ws.recv())["type"] == "cancelled"
        await ws.send("cancel", "s0")
        err = await ws.recv()
        assert err["payload"]["code"] == "rate_limited" and err["payload"]["retry_after_ms"] <= 30_000


async def test_rate_limited_frame_leaves_the_running_turn_alone(server: ServerProcess) -> None:
    async with WsClient.connect(server) as ws:
        await ws.send("start", "s1", request_id="t", payload={"user_utterance": "x", "sampling": {"max_tokens": 3}})
        await ws.send("start", "s2", payload={})
        await ws.send("start", "s3", payload={})
        await ws.send("message", "s1", payload={"user_utterance": "barge"})  # 4th: rate limited
        frames = await ws.turn("t")
    assert frames[-1]["type"] == "done"
    assert "rate_limited" in [f["payload"].get("code") for f in ws.others]
    assert "cancelled" not in types(ws.others)
    assert await engine_running(server) == 0


async def test_keys_never_reach_the_log(server: ServerProcess) -> None:
    async with WsClient.connect(server, auth="query") as ws:
        await ws.send("ping")
        await ws.recv()
    await asyncio.sleep(0.3)
    log = server.log_text()
    assert "/ws?api_key=%5Bredacted%5D" in log  # the access line is there, redacted
    assert API_KEY not in log and "second-key" not in log


async def test_forwarded_for_is_trusted_from_a_trusted_proxy_only(server: ServerProcess) -> None:
    # The peer (127.0.0.1) is in TRUSTED_PROXIES: failures count per forwarded client.
    async def attempt(client: str) -> bool:
        async with WsClient.connect(server, key="guess", headers={"X-Forwarded-For": f"{client}, 127.0.0.1"}) as ws:
            frame, _ = await rejected(ws)
        assert frame["payload"]["code"] == "authentication_failed"
        return "retry_after_ms" in frame["payload"]

    first = [await attempt("203.0.113.7") for _ in range(4)]
    assert first == [False] * 3 + [True]  # throttled after 3
    assert await attempt("203.0.113.8") is False  # a neighbour is not throttled
    async with WsClient.connect(server, headers={"X-Forwarded-For": "203.0.113.7"}) as ws:
        await ws.send("ping")  # the throttled address with a valid key gets in
        assert (await ws.recv())["type"] == "pong"


async def test_sampling_key_the_engine_cannot_honour_is_invalid_payload(server: ServerProcess) -> None:
    async with WsClient.connect(server) as ws:
        await ws.send("start", "s1", payload={"sampling": {"min_p": 0.1}})
        err = await ws.recv()
    assert err["payload"]["code"] == "invalid_payload" and err["payload"]["field"] == "payload.sampling.min_p"
    assert (await status(server))["engine"]["unsupported_sampling"] == ["min_p"]
    assert "min_p" in server.log_text()  # reported at start-up


async def test_client_that_stops_reading_is_closed_not_buffered(yap_servers) -> None:
    server = yap_servers.get("flood")
    # No permessage-deflate: 4 KB of "y" would compress to nothing and fit the socket buffers.
    async with WsClient.connect(server, compression=None) as ws:
        await ws.send("start", "s1", request_id="f", payload={"user_utterance": "go", "sampling": {"max_tokens": 100000, "sanitize_output": False}})
        for _ in range(200):  # not reading: the server's queue fills and it gives up on us
            await asyncio.sleep(0.1)
            if (await status(server))["connections"]["active"] == 0:
                break
        assert (await status(server))["connections"]["active"] == 0
        assert await engine_running(server) == 0
        code = await ws.closed(wait_s=30)
    assert code in (1008, None)  # the close frame may be cut behind the unread backlog
    assert not [f for f in ws.tail if f["type"] == "done"]
