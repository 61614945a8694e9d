"""Keys never reach logs: a real server with two rotated keys, debug logging and
the access log on; good and bad keys presented by header, bearer and query on
/ws and /status; then every byte the process wrote is searched for them."""

from __future__ import annotations

import asyncio
import secrets
from pathlib import Path
from urllib.parse import quote

import pytest
from reliability_net import open_ws, recv, start_session, turn, yap_server
from websockets.exceptions import ConnectionClosed
from yap_core.server_process import http_get


def fresh_key(tag: str) -> str:
    # Distinctive enough that a hit in the log can only be a leak.
    return f"{tag}-{secrets.token_hex(12)}"


async def test_keys_never_reach_logs(tmp_path: Path) -> None:
    good, rotated, bad = fresh_key("goodkey"), fresh_key("rotatedkey"), fresh_key("badkey")
    env = {"TEXT_API_KEY": f"{good},{rotated}", "LOG_LEVEL": "DEBUG", "AUTH_MAX_FAILURES": "100"}
    with yap_server(tmp_path, env) as server:
        ws_url, base = server.ws_url, server.base_url
        ways = {
            "header": lambda k: ({"X-API-Key": k}, ""),
            "bearer": lambda k: ({"Authorization": f"Bearer {k}"}, ""),
            "query": lambda k: ({}, f"?api_key={quote(k)}"),
        }
        for way, make in ways.items():
            for key in (good, rotated):
                headers, query = make(key)
                ws = await open_ws(ws_url + query, None, headers=headers)
                await start_session(ws, f"s-{way}")
                assert (await turn(ws, f"s-{way}", f"hello with {way}"))[-1]["type"] == "done"
                await ws.close()
                answer = await asyncio.to_thread(http_get, base + "/status" + query, headers)
                assert answer.status == 200, (way, answer)
            headers, query = make(bad)
            ws = await open_ws(ws_url + query, None, headers=headers)
            frame = await recv(ws)
            assert frame["payload"]["code"] == "authentication_failed"
            with pytest.raises(ConnectionClosed) as closed:
                await recv(ws)
            assert closed.value.rcvd is not None and closed.value.rcvd.code == 1008
            answer = await asyncio.to_thread(http_get, base + "/status" + query, headers)
            assert answer.status == 401
            assert bad not in str(answer.body)
        # The key also never comes back in an error message or /healthz.
        answer = await asyncio.to_thread(http_get, base + f"/healthz?api_key={good}")
        assert good not in str(answer.body)
    log = server.log_text()
    # The capture is real: the access log and debug lines are in it.
    assert "/status" in log and "GET" in log
    assert "api_key=" in log  # the query parameter was logged, redacted
    for key in (good, rotated, bad):
        assert key not in log, f"a key leaked into the server's output: {key[:8]}..."
        assert quote(key) not in log
