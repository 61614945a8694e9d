"""Faults against a real `yap serve` child on the scripted engine: slow readers,
an engine raising mid-stream, an engine dying, a failing or slow classifier,
oversized frames. Fault injection is the scripted plugin's documented settings
(SCRIPTED_FAIL_ON, SCRIPTED_DIE_ON, SCRIPTED_CLASSIFIER_FAIL_ON,
SCRIPTED_CLASSIFIER_DELAY_MS), so the server runs unchanged."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from reliability_net import (
    open_ws,
    read_until_terminal,
    recv,
    send,
    silent_ws,
    start_session,
    turn,
    yap_server,
)
from websockets.asyncio.client import ClientConnection
from websockets.exceptions import ConnectionClosed
from yap_core.server_process import ServerProcess, http_get
from yap_core.soak import small_buffer_socket

KEY = "faults-key"
FAIL = "KABOOM"
CLASSIFIER_FAIL = "CLASSIFIER-BREAKS"
SLOW_SESSIONS = 700


@pytest.fixture(scope="module")
def fault_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    env = {
        "TEXT_API_KEY": KEY,
        "DEPLOY_MODE": "both",
        "TOOL_CLASSIFIER": "scripted",
        "SCRIPTED_FAIL_ON": FAIL,
        "SCRIPTED_CLASSIFIER_FAIL_ON": CLASSIFIER_FAIL,
        "SCRIPTED_TOKEN_DELAY_MS": "2",
        "WS_SEND_QUEUE_MAX": "16",
        "WS_MAX_MESSAGES_PER_WINDOW": "0",
        "WS_MAX_MESSAGE_BYTES": "4096",
        # Short, so Hypercorn's read timeout (idle + chat timeout + 5 s) drops a given-up socket in ~10 s.
        "WS_IDLE_TIMEOUT_S": "3",
        "CHAT_TIMEOUT_S": "2",
    }
    with yap_server(tmp_path_factory.mktemp("faults"), env) as server:
        yield server


def status(server: ServerProcess) -> dict:
    answer = http_get(server.base_url + "/status", {"X-API-Key": KEY})
    assert answer.status == 200
    return answer.body


async def wait_quiet(server: ServerProcess, within_s: float = 15.0) -> dict:
    deadline = time.monotonic() + within_s
    while True:
        body = await asyncio.to_thread(status, server)
        quiet = body["active_turns"] == 0 and body["engine"]["stats"]["running"] == 0
        if quiet and body["connections"]["active"] == 0:
            return body
        assert time.monotonic() < deadline, f"server never went quiet: {body}"
        await asyncio.sleep(0.1)


async def test_engine_raising_mid_stream_fails_that_turn_only(fault_server: ServerProcess) -> None:
    calm = await open_ws(fault_server.ws_url, KEY)
    doomed = await open_ws(fault_server.ws_url, KEY)
    await start_session(calm, "calm")
    await start_session(doomed, "doomed")
    calm_turn = asyncio.create_task(turn(calm, "calm", "tell me about the sea"))
    bad = await turn(doomed, "doomed", f"please {FAIL} now")
    assert [f["type"] for f in bad][-1] == "error"
    assert bad[-1]["payload"]["code"] == "internal_error"
    assert bad[-1]["payload"]["retryable"] is True
    assert bad[-1]["session_id"] == "doomed"
    assert "token" in [f["type"] for f in bad]  # it failed mid-stream, after a token
    good = await calm_turn
    assert good[-1]["type"] == "done"
    # The failed session and its socket go on.
    again = await turn(doomed, "doomed", "and now something normal")
    assert again[-1]["type"] == "done"
    await calm.close()
    await doomed.close()
    await wait_quiet(fault_server)


async def test_classifier_failure_does_not_block_chat(fault_server: ServerProcess) -> None:
    ws = await open_ws(fault_server.ws_url, KEY)
    await start_session(ws, "cls")
    frames = await turn(ws, "cls", f"look at my screen {CLASSIFIER_FAIL}")
    kinds = [f["type"] for f in frames]
    assert kinds[0] == "toolcall" and kinds[-1] == "done", kinds
    # The keyword rule would have said yes; the failure counts as no.
    assert frames[0]["payload"]["status"] == "no" and frames[0]["payload"]["tool"] is None
    ok = await turn(ws, "cls", "look at my screen")
    assert ok[0]["payload"]["status"] == "yes"
    await ws.close()


async def stop_reading(server: ServerProcess, prefix: str, utterance: str) -> ClientConnection:
    """A socket (tiny receive buffer) that asks for SLOW_SESSIONS replies at once, on
    sessions PREFIX0.., so none barges another and they outgrow every buffer on the
    way; it reads nothing until the server logs that it gave up on it."""
    warned = server.log_text().count("client stopped reading")
    ws = await open_ws(server.ws_url, KEY, sock=small_buffer_socket(server.host, server.port), max_queue=1)
    for n in range(SLOW_SESSIONS):
        await send(ws, {"type": "start", "session_id": f"{prefix}{n}",
                        "payload": {"chat_prompt": "You are long-winded.", "user_utterance": utterance}})
    deadline = time.monotonic() + 60
    while server.log_text().count("client stopped reading") == warned:
        assert time.monotonic() < deadline, "the server never gave up on a client that does not read"
        await asyncio.sleep(0.2)
    return ws


async def test_slow_reader_is_dropped_and_memory_stays_bounded(fault_server: ServerProcess) -> None:
    """A phone app that froze: it asked for replies, then neither reads nor sends."""
    before = fault_server.rss()
    ws = await stop_reading(fault_server, "slow", "a long story please")
    # Without this client reading a byte, the server lets it go: slot freed, turns aborted.
    body = await wait_quiet(fault_server)
    assert body["connections"]["active"] == 0
    grown = (fault_server.rss() - before) / 2**20
    assert grown < 50, f"server RSS grew {grown:.0f} MiB for one slow reader"
    # Reading now drains what the kernel buffered, then the close: 1008 with its reason.
    read = 0
    with pytest.raises(ConnectionClosed) as closed:
        while True:
            await asyncio.wait_for(ws.recv(), 20)
            read += 1
    rcvd = closed.value.rcvd
    assert rcvd is not None and rcvd.code == 1008 and "not reading" in rcvd.reason, rcvd
    assert read < SLOW_SESSIONS * 60  # cut short: far fewer frames than the replies would have had


async def test_dropped_slow_reader_that_keeps_sending_is_disconnected(fault_server: ServerProcess) -> None:
    """Dropped for not reading, the client keeps writing: the server must still end the TCP connection."""
    ws = await stop_reading(fault_server, "talker", "go on")
    # A send blocking (TimeoutError) means the server stopped reading without closing: the bug.
    with pytest.raises(ConnectionClosed):
        for _ in range(600):  # up to ~30 s of pings, never reading
            await asyncio.wait_for(send(ws, {"type": "ping", "session_id": "talker0"}), 10)
            await asyncio.sleep(0.05)
    ws.transport.abort()
    body = await wait_quiet(fault_server)
    assert body["connections"]["active"] == 0


async def test_oversized_frames(fault_server: ServerProcess) -> None:
    ws = await open_ws(fault_server.ws_url, KEY)
    await start_session(ws, "big")
    await send(ws, {"type": "message", "session_id": "big", "payload": {"user_utterance": "x" * 5000}})
    frame = await recv(ws)
    assert frame["type"] == "error" and frame["payload"]["code"] == "message_too_large"
    with pytest.raises(ConnectionClosed) as closed:
        await recv(ws)
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 1009
    # Far over the limit: cut by Hypercorn while it arrives, still 1009.
    ws = await open_ws(fault_server.ws_url, KEY)
    await ws.send("y" * 200_000)
    with pytest.raises(ConnectionClosed) as closed:
        while True:
            await recv(ws)
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 1009
    # Others unaffected.
    ws = await open_ws(fault_server.ws_url, KEY)
    await start_session(ws, "after")
    assert (await turn(ws, "after", "hello"))[-1]["type"] == "done"
    await ws.close()


async def test_disconnect_mid_stream_aborts_the_engine_request(fault_server: ServerProcess) -> None:
    ws = await open_ws(fault_server.ws_url, KEY)
    await start_session(ws, "gone")
    await send(ws, {"type": "message", "session_id": "gone", "request_id": "cut",
                    "payload": {"user_utterance": "talk for a while", "sampling": {"max_tokens": 150}}})
    while (await recv(ws))["type"] != "token":
        pass
    ws.transport.abort()  # no close frame: the phone just went away
    await wait_quiet(fault_server)


async def test_classifier_timeout_does_not_block_chat(tmp_path: Path) -> None:
    env = {"TEXT_API_KEY": KEY, "DEPLOY_MODE": "both", "TOOL_CLASSIFIER": "scripted",
           "SCRIPTED_CLASSIFIER_DELAY_MS": "60000", "TOOL_TIMEOUT_S": "0.2"}
    with yap_server(tmp_path, env) as server:
        ws = await open_ws(server.ws_url, KEY)
        await start_session(ws, "slowcls")
        # If the server waited for the classifier this would not come within the 30 s read timeout.
        frames = await turn(ws, "slowcls", "look at my screen")
        assert frames[0]["type"] == "toolcall" and frames[0]["payload"]["status"] == "no"
        assert frames[-1]["type"] == "done"
        await ws.close()


async def test_engine_death_turns_unhealthy_and_exits_nonzero(tmp_path: Path) -> None:
    env = {"TEXT_API_KEY": KEY, "SCRIPTED_DIE_ON": "DIE-NOW", "SCRIPTED_TOKEN_DELAY_MS": "2"}
    with yap_server(tmp_path, env) as server:
        # A bystander that stops reading keeps the server in its final close for a moment,
        # long enough to watch /healthz say unhealthy before the process exits.
        bystander = silent_ws(server.host, server.port, KEY)
        ws = await open_ws(server.ws_url, KEY)
        await start_session(ws, "victim")
        rid = uuid.uuid4().hex
        await send(ws, {"type": "message", "session_id": "victim", "request_id": rid,
                        "payload": {"user_utterance": "DIE-NOW please"}})
        frames = [f for f in await read_until_terminal(ws, rid) if f.get("request_id") == rid]
        assert frames[-1]["type"] == "error" and frames[-1]["payload"]["code"] == "internal_error"
        seen_unhealthy = None
        deadline = time.monotonic() + 30
        while server.returncode is None and time.monotonic() < deadline:
            try:
                answer = await asyncio.to_thread(http_get, server.base_url + "/healthz", None, timeout=2.0)
                if answer.status == 503:
                    seen_unhealthy = answer.body
            except OSError:
                pass  # the listener has gone: the process is exiting
            await asyncio.sleep(0.05)
        code = await server.wait_exit(30)
        assert code == 1, f"server exit status {code}; log:\n{server.log_tail()}"
        assert seen_unhealthy is not None and seen_unhealthy["status"] == "unhealthy", seen_unhealthy
        assert "unhealthy" in server.log_text()
        with pytest.raises(ConnectionClosed) as closed:
            await recv(ws, 10)
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 1011
        bystander.close()


def test_status_reports_engine_stats(fault_server: ServerProcess) -> None:
    body = status(fault_server)
    assert set(body["engine"]["stats"]) >= {"running", "waiting"}
    assert json.dumps(body)  # plain JSON all the way
