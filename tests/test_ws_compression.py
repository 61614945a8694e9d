"""permessage-deflate is declined unless WS_PERMESSAGE_DEFLATE is set
(server.websocket_compression: Hypercorn alone accepts every offer). A real
`yap serve` and a websockets client that offers deflate, as browsers do; the
turn streams either way."""

from __future__ import annotations

from pathlib import Path

import pytest
from reliability_net import open_ws, start_session, turn, yap_server

KEY = "compression-test-key"


@pytest.mark.parametrize("enabled", [False, True])
async def test_permessage_deflate_is_declined_unless_enabled(tmp_path: Path, enabled: bool) -> None:
    env = {"TEXT_API_KEY": KEY, "WS_PERMESSAGE_DEFLATE": "true" if enabled else "false"}
    with yap_server(tmp_path, env) as server:
        ws = await open_ws(server.ws_url, KEY, compression="deflate")
        try:
            accepted = ws.response.headers.get("Sec-WebSocket-Extensions")
            if enabled:
                assert accepted is not None and accepted.startswith("permessage-deflate")
                assert [e.name for e in ws.protocol.extensions] == ["permessage-deflate"]
            else:
                assert accepted is None and ws.protocol.extensions == []
            await start_session(ws, "s1")
            frames = await turn(ws, "s1", "hello there")
        finally:
            await ws.close()
    assert frames[-1]["type"] == "done"
    assert any(f["type"] == "token" for f in frames)
