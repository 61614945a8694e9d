"""The per-socket send queue: token pieces that wait join one frame, nothing
else changes order, and the limit still drops a client that does not read.

The queue's ``send`` here is a coroutine gated by an event: it stands for a
socket whose client reads only when the test says so (the end-to-end tests
exercise the same queue on real sockets).
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Iterable

import msgspec
import pytest
from yap_core.connection import Outbox

# Python 3.12+: a frame that finds the sender parked can be sent inside put()
# by an eager task; on 3.11 the sender sends every frame. `make test` runs
# this file on both.
EAGER = sys.version_info >= (3, 12)


def kinds(sent: Iterable[dict]) -> list[tuple[str, str, str | None]]:
    """Each frame sent as (type, request id, text)."""
    return [(f["type"], f["request_id"], f["payload"].get("text")) for f in sent]


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
    assert kinds(sock.sent) == [
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
    assert kinds(f for _, f in sock.sent) == [
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


async def _parked(box: Outbox) -> asyncio.Task[None]:
    """The sender, started and parked on its empty queue."""
    runner = asyncio.create_task(box.run())
    await asyncio.sleep(0)
    return runner


async def test_a_turns_first_token_and_its_final_go_out_inside_put_where_python_can() -> None:
    sock = InstantSocket()
    box = Outbox(sock.send, 100, lambda: None)
    runner = await _parked(box)
    try:
        box.put_token("s", "r1", "Hel")
        # Eager: on the wire before put_token returned. Plain: the sender's pass.
        assert len(sock.sent) == (1 if EAGER else 0)
        await box.flush(1.0)
        box.put_token("s", "r1", "lo")  # not the turn's first piece: the sender sends it
        assert len(sock.sent) == 1
        await box.flush(1.0)
        box.put('{"type":"final","session_id":"s","request_id":"r1","payload":{"text":"Hello"}}')
        assert len(sock.sent) == (3 if EAGER else 2)
        box.put_token("s", "r2", "Next")  # a new turn, but the final is still queued on 3.11
        await box.flush(1.0)
    finally:
        runner.cancel()
    assert kinds(f for _, f in sock.sent) == [
        ("token", "r1", "Hel"),
        ("token", "r1", "lo"),
        ("final", "r1", "Hello"),
        ("token", "r2", "Next"),
    ]


async def test_frames_queued_behind_a_send_stuck_in_the_socket_keep_their_order() -> None:
    sock = GatedSocket()
    overflowed: list[bool] = []
    box = Outbox(sock.send, 5, lambda: overflowed.append(True))
    runner = await _parked(box)
    try:
        box.put_token("s", "r1", "Hel")
        await sock.waiting.wait()  # stuck in the socket: sent inside put (3.12) or by the sender
        assert box.put_token("s", "r1", "lo")  # may not join the frame being sent
        assert box.put_token("s", "r1", " there")
        assert box.put('{"type":"final","session_id":"s","request_id":"r1","payload":{"text":"Hello there"}}')
        assert box.put_token("s", "r2", "Next")
        assert not box.put_token("s", "r3", "x")  # the limit still counts the stuck frame: 5
        await sock.release(4)
        await box.flush(1.0)
    finally:
        runner.cancel()
    assert kinds(sock.sent) == [
        ("token", "r1", "Hel"),
        ("token", "r1", "lo there"),
        ("final", "r1", "Hello there"),
        ("token", "r2", "Next"),
    ]
    assert overflowed == [True]


async def test_a_send_that_fails_ends_the_sender_with_its_error() -> None:
    async def broken(text: str) -> None:
        raise ConnectionResetError("peer gone")

    box = Outbox(broken, 100, lambda: None)
    runner = await _parked(box)
    assert box.put_token("s", "r1", "Hel")  # the failure surfaces in run(), not in put()
    with pytest.raises(ConnectionResetError, match="peer gone"):
        await asyncio.wait_for(runner, 1.0)


async def test_stopping_the_sender_cancels_a_send_stuck_in_the_socket() -> None:
    sock = GatedSocket()
    cancelled: list[bool] = []

    async def send(text: str) -> None:
        try:
            await sock.send(text)
        except asyncio.CancelledError:
            cancelled.append(True)
            raise

    box = Outbox(send, 100, lambda: None)
    runner = await _parked(box)
    box.put_token("s", "r1", "Hel")
    await sock.waiting.wait()
    runner.cancel()
    with pytest.raises(asyncio.CancelledError):
        await runner
    await asyncio.sleep(0)  # the stuck send's own cancellation runs
    assert cancelled == [True]
