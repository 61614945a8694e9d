"""Admission over real sockets: auth-failure throttling keyed on the real client
address (X-Forwarded-For believed only from TRUSTED_PROXIES) and the Origin
allow-list. Clients connect from two loopback addresses: 127.0.0.2 plays the
trusted proxy, 127.0.0.1 an untrusted peer."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest
from reliability_net import open_ws, recv, source_socket, start_session, yap_server
from websockets.exceptions import ConnectionClosed
from yap_core.server_process import ServerProcess, http_get

KEY = "admission-key"
PROXY = "127.0.0.2"
APP_ORIGIN = "https://app.example"


@pytest.fixture(scope="module")
def gate(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    env = {"TEXT_API_KEY": KEY, "AUTH_MAX_FAILURES": "3", "AUTH_FAILURE_WINDOW_S": "300",
           "TRUSTED_PROXIES": PROXY, "ALLOWED_ORIGINS": APP_ORIGIN}
    with yap_server(tmp_path_factory.mktemp("gate"), env) as server:
        yield server


async def attempt(server: ServerProcess, key: str, *, source: str = "127.0.0.1", forwarded: str | None = None,
                  origin: str | None = None) -> tuple[str, int | None]:
    """Connect and report (error code, "throttled" or "ok"; close code)."""
    headers = {"X-Forwarded-For": forwarded} if forwarded else {}
    if origin:
        headers["Origin"] = origin
    ws = await open_ws(server.ws_url, key, headers=headers, sock=source_socket(server.host, server.port, source))
    try:
        # A refused socket gets its error frame at once; an admitted one gets nothing until it asks.
        frame = await recv(ws, 1.0)
    except TimeoutError:
        await ws.send('{"type":"ping","session_id":"p","request_id":"p1"}')
        frame = await recv(ws, 10)
    except ConnectionClosed as exc:
        return "closed", exc.rcvd.code if exc.rcvd else None
    if frame["type"] == "pong":
        await ws.close()
        return "ok", None
    assert frame["type"] == "error", frame
    code = frame["payload"]["code"]
    # A throttled attempt is still authentication_failed, told when to try again.
    if "retry_after_ms" in frame["payload"]:
        assert code in ("authentication_failed", "rate_limited"), frame
        assert 0 < frame["payload"]["retry_after_ms"] <= 300_000
        code = "throttled"
    with pytest.raises(ConnectionClosed) as closed:
        await recv(ws, 10)
    return code, closed.value.rcvd.code if closed.value.rcvd else None


async def test_throttle_keys_on_the_forwarded_client_behind_a_trusted_proxy(gate: ServerProcess) -> None:
    client = "203.0.113.5"
    for _ in range(3):
        assert await attempt(gate, "wrong", source=PROXY, forwarded=client) == ("authentication_failed", 1008)
    assert await attempt(gate, "wrong", source=PROXY, forwarded=client) == ("throttled", 1008)
    # A valid key from that same client is never locked out.
    assert await attempt(gate, KEY, source=PROXY, forwarded=client) == ("ok", None)
    # Another client behind the same proxy is not punished for the first one.
    assert await attempt(gate, "wrong", source=PROXY, forwarded="203.0.113.6") == ("authentication_failed", 1008)


async def test_spoofed_hops_left_of_the_proxy_do_not_dodge_the_throttle(gate: ServerProcess) -> None:
    # The proxy appends the real peer; whatever the client wrote before it is not believed.
    for n in range(3):
        assert await attempt(gate, "wrong", source=PROXY, forwarded=f"10.0.0.{n}, 198.51.100.9") == (
            "authentication_failed", 1008)
    assert await attempt(gate, "wrong", source=PROXY, forwarded="10.9.9.9, 198.51.100.9") == ("throttled", 1008)


async def test_forwarded_header_from_an_untrusted_peer_is_ignored(gate: ServerProcess) -> None:
    # 127.0.0.1 is no proxy: rotating X-Forwarded-For does not make it a new client.
    for n in range(3):
        assert await attempt(gate, "wrong", forwarded=f"192.0.2.{n}") == ("authentication_failed", 1008)
    assert await attempt(gate, "wrong", forwarded="192.0.2.99") == ("throttled", 1008)
    assert await attempt(gate, KEY, forwarded="192.0.2.99") == ("ok", None)
    # /status is throttled for the same address too.
    answer = await asyncio.to_thread(http_get, gate.base_url + "/status", {"X-API-Key": "wrong"})
    assert answer.status in (401, 429) and answer.body.get("retry_after_ms", 0) > 0, answer


async def test_origin_allow_list(gate: ServerProcess) -> None:
    assert await attempt(gate, KEY, source="127.0.0.3", origin="https://evil.example") == ("authentication_failed", 1008)
    assert await attempt(gate, KEY, source="127.0.0.3", origin=APP_ORIGIN) == ("ok", None)
    assert await attempt(gate, KEY, source="127.0.0.3") == ("ok", None)  # no Origin: not a browser


async def test_admitted_socket_serves(gate: ServerProcess) -> None:
    ws = await open_ws(gate.ws_url, KEY, headers={"Origin": APP_ORIGIN})
    await start_session(ws, "admitted")
    await ws.close()
