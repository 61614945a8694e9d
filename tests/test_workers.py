"""SERVER_WORKERS > 1: a supervisor and its worker processes on one port.

Real `yap serve` subprocesses on the scripted engine (the one engine that can
be shared without a GPU; vLLM's share() ran on the GPU, docs/gpu-results.md).
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest
from reliability_net import open_ws, recv, send
from served import SCRIPTED, serve, yap
from websockets.exceptions import ConnectionClosed
from yap_core.server_process import ServerProcess, http_get
from yap_core.wsclient import YapConnection, new_id

KEY = SCRIPTED["TEXT_API_KEY"]
WORKERS = {"SERVER_WORKERS": "2", "MAX_CONCURRENT_CONNECTIONS": "39"}


def workers_of(server: ServerProcess) -> list[psutil.Process]:
    return [p for p in psutil.Process(server.pid).children() if "--worker-spec" in " ".join(p.cmdline())]


def alive(procs: list[psutil.Process]) -> bool:
    def running(p: psutil.Process) -> bool:
        try:
            return p.is_running() and p.status() != psutil.STATUS_ZOMBIE
        except psutil.NoSuchProcess:
            return False

    return any(running(p) for p in procs)


def status(server: ServerProcess) -> dict:
    answer = http_get(server.base_url + "/status", {"Authorization": f"Bearer {KEY}"})
    assert answer.status == 200, answer
    return answer.body


@pytest.fixture(scope="module")
def two_workers() -> Iterator[ServerProcess]:
    with serve({**WORKERS, "AUTH_MAX_FAILURES": "10", "AUTH_FAILURE_WINDOW_S": "300"}) as server:
        yield server


def test_every_worker_serves_on_the_one_port(two_workers: ServerProcess) -> None:
    procs = workers_of(two_workers)
    assert len(procs) == 2
    seen = {}
    for _ in range(40):  # each GET is a new connection: the kernel spreads them by address hash
        body = status(two_workers)
        seen[body["worker"]["index"]] = body
    assert set(seen) == {0, 1}
    assert {b["worker"]["pid"] for b in seen.values()} == {p.pid for p in procs}
    for body in seen.values():
        assert body["worker"]["count"] == 2
        assert body["connections"]["max"] == 39  # the deployment's limit, neither split nor multiplied
        assert [(w["index"], w["state"]) for w in body["workers"]] == [(0, "ready"), (1, "ready")]


def status_from_each_worker(server: ServerProcess) -> dict[int, dict]:
    """/status as each worker answers it (each GET is a new connection, and
    the kernel spreads them by address hash)."""
    seen: dict[int, dict] = {}
    for _ in range(60):
        body = status(server)
        seen.setdefault(body["worker"]["index"], body)
        if len(seen) == 2:
            break
    assert set(seen) == {0, 1}
    return seen


async def test_status_counts_every_workers_sockets_and_turns(tmp_path: Path) -> None:
    """Whichever worker answers /status, its counts are the deployment's: the
    sockets and running turns of both workers (the board), with its own under
    "worker". Before, each worker counted only its own, so at least one of the
    two answers fell short of the 8 sockets below."""
    env = {**SCRIPTED, **WORKERS, "SCRIPTED_TOKEN_DELAY_MS": "50", "SCRIPTED_REPEAT": "true", "CHAT_MAX_OUT": "400"}
    async with ServerProcess(env, log_path=tmp_path / "server.log") as server:
        conns = [await YapConnection.open(server.ws_url, KEY) for _ in range(8)]
        try:
            sids, rids = [new_id() for _ in conns], [new_id() for _ in conns]
            for c, sid, rid in zip(conns, sids, rids, strict=True):
                await c.send("start", sid, rid, {"user_utterance": "go on", "sampling": {"max_tokens": 400}})
            for c in conns:  # every turn is streaming
                while (await c.recv(30)).type != "token":
                    pass
            answers = status_from_each_worker(server)
            for body in answers.values():
                assert body["connections"]["active"] == 8 and body["active_turns"] == 8, body
                assert body["connections"]["available"] == 39 - 8
                rows = body["workers"]
                assert sum(r["connections"] for r in rows) == 8 and sum(r["active_turns"] for r in rows) == 8
                own = rows[body["worker"]["index"]]
                assert own["pid"] == body["worker"]["pid"]
                assert own["connections"] == body["worker"]["connections"]
                assert own["active_turns"] == body["worker"]["active_turns"]
            assert {r["pid"] for r in answers[0]["workers"]} == {p.pid for p in workers_of(server)}
            # Each worker's engine requests, from its health check's stats (each second).
            deadline = time.monotonic() + 10
            while sum(r["engine_requests"] for r in status(server)["workers"]) != 8 and time.monotonic() < deadline:  # noqa: ASYNC110 - polling other processes
                await asyncio.sleep(0.2)
            assert sum(r["engine_requests"] for r in status(server)["workers"]) == 8
            for c, sid, rid in zip(conns, sids, rids, strict=True):
                await c.send("cancel", sid, rid, {})
        finally:
            for c in conns:
                await c.close()
        deadline = time.monotonic() + 30
        while True:  # the counts go back down as the workers see the sockets close
            quiet = [
                b["connections"]["active"] == 0
                and b["active_turns"] == 0
                and sum(r["engine_requests"] for r in b["workers"]) == 0
                for b in status_from_each_worker(server).values()
            ]
            if all(quiet) or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.1)
        assert all(quiet)


async def test_the_connection_limit_is_the_deployments_wherever_the_kernel_sends_a_socket(tmp_path: Path) -> None:
    """MAX_CONCURRENT_CONNECTIONS=4 over 2 workers: one worker may hold all 4,
    and a fifth socket is refused wherever it lands. Sockets that the kernel
    hands to worker 1 are closed, so worker 0 ends up holding every one. Before,
    each worker held at most ceil(4 / 2) = 2, and a third socket hashed to the
    same worker was refused while the other had room."""
    async with ServerProcess({**SCRIPTED, "SERVER_WORKERS": "2", "MAX_CONCURRENT_CONNECTIONS": "4"},
                           log_path=tmp_path / "server.log") as server:  # fmt: skip
        held = []
        try:
            for _ in range(80):
                if len(held) == 4:
                    break
                ws = await open_ws(server.ws_url, KEY)
                await send(ws, {"type": "ping", "session_id": None, "request_id": None, "payload": {}})
                assert (await recv(ws, 10))["type"] == "pong"  # admitted
                if status(server)["workers"][0]["connections"] == len(held) + 1:
                    held.append(ws)
                    continue
                await ws.close()
                deadline = time.monotonic() + 10
                while status(server)["connections"]["active"] != len(held) and time.monotonic() < deadline:  # noqa: ASYNC110 - polling another process
                    await asyncio.sleep(0.05)
            assert len(held) == 4
            body = status(server)
            assert [r["connections"] for r in body["workers"]] == [4, 0]
            assert body["connections"] == {"active": 4, "max": 4, "available": 0, "at_capacity": True}
            for _ in range(4):  # wherever the kernel sends it
                ws = await open_ws(server.ws_url, KEY)
                frame = await recv(ws, 10)
                await ws.close()
                assert frame["payload"]["code"] == "server_at_capacity", frame
                assert frame["payload"]["capacity"] == {"active": 4, "max": 4}
        finally:
            for ws in held:
                await ws.close()


async def failed_login(server: ServerProcess) -> str:
    """One socket with a wrong key: "failed", or "throttled" when told to retry later."""
    ws = await open_ws(server.ws_url, "not-the-key")
    try:
        frame = await recv(ws, 10)
    except ConnectionClosed:
        return "closed"
    finally:
        await ws.close()
    assert frame["type"] == "error" and frame["payload"]["code"] == "authentication_failed", frame
    return "throttled" if "retry_after_ms" in frame["payload"] else "failed"


async def test_failed_logins_are_counted_against_the_limit_once_not_per_worker(two_workers: ServerProcess) -> None:
    """AUTH_MAX_FAILURES=10 over 2 workers: each worker allows 5 failures, so
    one address is throttled by its 11th failed attempt wherever the kernel
    sends them (a limit of 10 in each worker would let up to 20 through)."""
    answers = []
    while len(answers) < 11 and "throttled" not in answers:
        answers.append(await failed_login(two_workers))
    assert answers[-1] == "throttled", answers
    assert len(answers) >= 6, answers  # 5 a worker: no sooner than the 6th attempt


async def test_turns_run_on_both_workers_at_once(two_workers: ServerProcess) -> None:
    conns = [await YapConnection.open(two_workers.ws_url, KEY) for _ in range(8)]
    try:
        turns = await asyncio.gather(
            *(c.turn("start", new_id(), {"user_utterance": f"hello {i}"}, wait_s=30) for i, c in enumerate(conns))
        )
    finally:
        for c in conns:
            await c.close()
    assert [t.end for t in turns] == ["done"] * 8
    assert all(t.text for t in turns)
    # Both processes did the work: each has spent CPU on turns beyond its start-up.
    assert all(p.cpu_times().user > 0 for p in workers_of(two_workers))


async def test_sigterm_drains_every_worker_then_exits_zero(tmp_path: Path) -> None:
    env = {**SCRIPTED, **WORKERS, "SCRIPTED_TOKEN_DELAY_MS": "40", "DRAIN_TIMEOUT_S": "20"}
    async with ServerProcess(env, log_path=tmp_path / "server.log") as server:
        procs = workers_of(server)
        conns = [await YapConnection.open(server.ws_url, KEY) for _ in range(6)]
        try:
            sids = [new_id() for _ in conns]
            rids = [new_id() for _ in conns]
            for c, sid, rid in zip(conns, sids, rids, strict=True):
                await c.send("start", sid, rid, {"user_utterance": "tell me something long"})
            for c in conns:  # every turn is streaming before the signal
                while (await c.recv(30)).type != "token":
                    pass
            os.kill(server.pid, signal.SIGTERM)
            turns = await asyncio.gather(*(c.collect(rid, c.clock(), wait_s=30) for c, rid in zip(conns, rids, strict=True)))
        finally:
            for c in conns:
                await c.close()
        assert [t.end for t in turns] == ["done"] * 6, [t.end for t in turns]  # running turns finished
        assert await server.wait_exit(30) == 0, server.log_tail()
        assert not alive(procs)
        assert "supervisor: draining the workers" in server.log_text()


async def test_a_worker_dying_stops_the_deployment(tmp_path: Path) -> None:
    async with ServerProcess({**SCRIPTED, **WORKERS}, log_path=tmp_path / "server.log") as server:
        victim, other = workers_of(server)
        victim.kill()
        assert await server.wait_exit(60) == 1, server.log_tail()
        assert "exited with -9; stopping the others" in server.log_text()
        other.wait(30)  # drained and gone with the supervisor


async def test_workers_exit_when_the_supervisor_is_killed(tmp_path: Path) -> None:
    async with ServerProcess({**SCRIPTED, **WORKERS}, log_path=tmp_path / "server.log") as server:
        procs = workers_of(server)
        os.kill(server.pid, signal.SIGKILL)
        await server.wait_exit(10)
        deadline = time.monotonic() + 30
        while alive(procs) and time.monotonic() < deadline:  # noqa: ASYNC110 - polling other processes
            await asyncio.sleep(0.2)
        assert not alive(procs)


def test_an_engine_that_cannot_be_shared_is_refused_at_start() -> None:
    result = yap(["serve", "--port", "0"], env={**SCRIPTED, "INFERENCE_ENGINE": "hf", "DEPLOY_MODE": "chat",
                                                "SERVER_WORKERS": "2"}, timeout=120)
    assert result.returncode == 2, result.stderr
    assert "SERVER_WORKERS=2" in result.stderr and "cannot be shared" in result.stderr


def test_a_malformed_worker_spec_is_a_settings_error() -> None:
    result = yap(["serve", "--worker-spec", '{"index": 1}'], env=SCRIPTED, timeout=60)
    assert result.returncode == 2 and "--worker-spec" in result.stderr and "count" in result.stderr
