"""The per-socket send queue: token pieces that wait join one frame, nothing
else changes order, and the limit still drops a client that does not read.

The queue's ``send`` here is a coroutine gated by an event: it stands for a
socket whose client reads only when the test says so (the end-to-end tests
exercise the same queue on real sockets).
"""

from __future__ import annotations

import asyncio

import msgspec
from yap_core.connection import Outbox


class GatedSocket:
    """Sends complete one at a time, when the test opens the gate."""

    def __init__(self) -> None:
        self.sent: list[dict] = []
        self.gate = asyncio.Event()
        self.waiting = asyncio.Event()

    async def send(self, text: str) -> None:
        self.waiting.set()
        await self.gate.wait()
        self.gate.clear()
        self.waiting.clear()
        self.sent.append(msgspec.json.decode(text))

    async def release(self, n: int) -> None:
        for _ in range(n):
            await self.waiting.wait()
            self.gate.set()
            await asyncio.sleep(0)


async def test_pieces_join_the_waiting_frame_but_never_the_one_being_sent() -> None:
    sock = GatedSocket()
    overflowed: list[bool] = []
    box = Outbox(sock.send, 100, lambda: overflowed.append(True))
    runner = asyncio.create_task(box.run())
    try:
        box.put_token("s", "r1", "Hel")
        await sock.waiting.wait()  # "Hel" is being sent: it must go out alone
        for piece in ("lo", " the", "re"):
            box.put_token("s", "r1", piece)
        box.put('{"type":"final","session_id":"s","request_id":"r1","payload":{"text":"Hello there"}}')
        box.put_token("s", "r2", "Next")  # another turn after the final: its own frame
        box.put_token("s", "r2", " one")
        await sock.release(4)
        await box.flush(1.0)
    finally:
        runner.cancel()
    kinds = [(f["type"], f["request_id"], f["payload"].get("text")) for f in sock.sent]
    assert kinds == [
        ("token", "r1", "Hel"),
        ("token", "r1", "lo there"),
        ("final", "r1", "Hello there"),
        ("token", "r2", "Next one"),
    ]
    assert not overflowed


async def test_pieces_of_other_turns_do_not_merge() -> None:
    sock = GatedSocket()
    box = Outbox(sock.send, 100, lambda: None)
    runner = asyncio.create_task(box.run())
    try:
        box.put('{"type":"pong","session_id":"unknown","request_id":null,"payload":{}}')
        await sock.waiting.wait()
        box.put_token("a", "ra", "1")
        box.put_token("b", "rb", "2")  # another session on the same socket
        box.put_token("a", "ra", "3")
        await sock.release(4)
        await box.flush(1.0)
    finally:
        runner.cancel()
    assert [(f["session_id"], f["payload"].get("text")) for f in sock.sent[1:]] == [("a", "1"), ("b", "2"), ("a", "3")]


async def test_a_client_that_does_not_read_still_overflows() -> None:
    sock = GatedSocket()
    overflowed: list[bool] = []
    box = Outbox(sock.send, 4, lambda: overflowed.append(True))
    runner = asyncio.create_task(box.run())
    try:
        accepted = [box.put_token(f"s{i}", f"r{i}", "x") for i in range(6)]  # frames that cannot merge
    finally:
        runner.cancel()
    assert accepted == [True, True, True, True, False, False]
    assert overflowed == [True]


async def test_joined_pieces_count_towards_the_limit() -> None:
    """One turn's reply to a client that stopped reading: the pieces join one
    frame, yet the client is dropped once the limit's worth has queued."""
    sock = GatedSocket()
    overflowed: list[bool] = []
    box = Outbox(sock.send, 8, lambda: overflowed.append(True))
    runner = asyncio.create_task(box.run())
    try:
        box.put_token("s", "r", "first")
        await sock.waiting.wait()  # the first frame is stuck in the socket
        accepted = [box.put_token("s", "r", f" w{i}") for i in range(10)]
    finally:
        runner.cancel()
    assert accepted == [True] * 7 + [False] * 3
    assert overflowed == [True]


class InstantSocket:
    """Sends complete at once; records each frame with the loop's clock."""

    def __init__(self) -> None:
        self.sent: list[tuple[float, dict]] = []

    async def send(self, text: str) -> None:
        self.sent.append((asyncio.get_running_loop().time(), msgspec.json.decode(text)))


async def test_a_token_frame_interval_holds_pieces_but_never_the_first_or_what_ends_a_turn() -> None:
    sock = InstantSocket()
    box = Outbox(sock.send, 100, lambda: None, token_interval_s=0.5)
    runner = asyncio.create_task(box.run())
    loop = asyncio.get_running_loop()
    try:
        t0 = loop.time()
        box.put_token("s", "r1", "Hel")  # a turn's first piece: at once
        await asyncio.sleep(0.01)
        for piece in ("lo", " the", "re"):  # held: they join one frame
            box.put_token("s", "r1", piece)
            await asyncio.sleep(0.01)
        assert [f["payload"]["text"] for _, f in sock.sent] == ["Hel"]
        await asyncio.sleep(0.6)  # the interval is over: the joined frame left at ~0.5 s
        box.put_token("s", "r1", "!")  # held again, until the final queues behind it
        await asyncio.sleep(0.01)
        box.put('{"type":"final","session_id":"s","request_id":"r1","payload":{"text":"Hello there!"}}')
        box.put_token("s", "r2", "Next")  # another turn's first piece: at once
        await box.flush(1.0)
    finally:
        runner.cancel()
    kinds = [(f["type"], f["request_id"], f["payload"].get("text")) for _, f in sock.sent]
    assert kinds == [
        ("token", "r1", "Hel"),
        ("token", "r1", "lo there"),
        ("token", "r1", "!"),
        ("final", "r1", "Hello there!"),
        ("token", "r2", "Next"),
    ]
    times = [t - t0 for t, _ in sock.sent]
    assert times[0] < 0.25  # not held
    assert times[1] >= 0.49  # held for the interval after the first
    assert times[2] - times[1] < 0.4  # the final behind it released it before the interval's end
