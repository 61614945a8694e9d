"""TOKEN_FRAME_INTERVAL_MS end to end: a real `yap serve` (scripted engine,
tokens 5 ms apart) and a real WebSocket client. Pieces join fewer frames; the
first token, the turn's end and a cancel are not held."""

from __future__ import annotations

import asyncio
import uuid

from protocol_support import WsClient, types
from served import API_KEY, serve

REPLY = " ".join(f"word{i}" for i in range(40)) + "."
ENV = {"DEPLOY_MODE": "chat", "SCRIPTED_REPLY": REPLY, "SCRIPTED_TOKEN_DELAY_MS": "5", "TOKEN_FRAME_INTERVAL_MS": "100"}


async def test_pieces_join_fewer_frames_and_a_cancel_still_ends_the_turn() -> None:
    with serve(ENV) as server:
        async with WsClient.connect(server, key=API_KEY) as ws:
            r = str(uuid.uuid4())
            await ws.send("start", "s1", request_id=r, payload={"user_utterance": "tell me"})
            frames = await ws.turn(r)
            tokens = [f["payload"]["text"] for f in frames if f["type"] == "token"]
            assert types(frames)[-2:] == ["final", "done"]
            assert "".join(tokens) == frames[-2]["payload"]["text"] == REPLY
            completion = frames[-1]["payload"]["usage"]["completion_tokens"]
            assert completion == len(REPLY.split())  # the scripted engine: a word a token
            assert tokens[0] == "word0"  # the first piece is not held for others to join
            # 40 pieces over >= 200 ms with a frame at most every 100 ms: a handful of frames
            assert len(tokens) <= completion // 2, tokens

            r2 = str(uuid.uuid4())
            await ws.send("message", "s1", request_id=r2, payload={"user_utterance": "again"})
            first = await ws.recv()
            assert first["type"] == "token" and first["request_id"] == r2
            await ws.send("cancel", "s1", payload={"reason": "user spoke"})
            rest = await ws.turn(r2)
            assert rest[-1]["type"] == "cancelled" and set(types(rest[:-1])) <= {"token"}
            await asyncio.sleep(0.3)  # a held frame of r2 would have left by now
            await ws.send("ping", request_id="after")
            assert (await ws.recv())["type"] == "pong"
