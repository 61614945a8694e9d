"""Telemetry: every metric moves, and spans arrive, at a real OTLP/HTTP receiver,
driven by a real server through the protocol; off means no SDK at all; Sentry
events are rate-limited per error class and the DSN never reaches the logs."""

from __future__ import annotations

import asyncio
import gzip
import json
import logging
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from otlp_receiver import OtlpReceiver
from served import API_KEY, serve
from yap_core.settings import CoreSettings
from yap_core.telemetry import PREFIX, Telemetry
from yap_core.turn import timing_records
from yap_core.wsclient import YapConnection, new_id

HISTOGRAMS = ("ttft", "request_latency", "token_latency", "connection_duration", "connection_semaphore_wait",
              "prompt_tokens", "completion_tokens", "startup_duration", "tool_classification_latency")
COUNTERS = ("requests_total", "tokens_generated_total", "prompt_tokens_total", "connections_rejected_total",
            "session_churn_total", "cancellation_total", "errors_total", "timeout_disconnects_total",
            "rate_limit_violations_total", "tool_classifications_total")
GAUGES = ("active_connections", "active_generations")

ENV = {
    "SCRIPTED_TOKEN_DELAY_MS": "40",
    "CHAT_MAX_OUT": "30",
    "MAX_CONCURRENT_CONNECTIONS": "3",
    "WS_MAX_MESSAGES_PER_WINDOW": "6",
    "WS_IDLE_TIMEOUT_S": "1",
    "OTEL_METRIC_EXPORT_INTERVAL": "200",
}


def test_off_builds_no_sdk_object() -> None:
    """With no endpoint, the SDK is never even imported and every call is a no-op."""
    code = (
        "import sys\n"
        "from yap_core.telemetry import Telemetry\n"
        "t = Telemetry({}, engine='x')\n"
        "t.connection_opened(); t.generation_started(); t.token(0.01); t.error('internal_error')\n"
        "t.generation_finished('done', ttft_s=0.1, total_s=0.2, prompt_tokens=3, completion_tokens=4)\n"
        "h = t.session_opened('s')\n"
        "with t.span('request', {'request_id': 'r'}, parent=h) as s: assert s is None\n"
        "t.session_closed(h); t.shutdown()\n"
        "print(t.enabled, sorted(m for m in sys.modules if m.startswith('opentelemetry')))\n"
    )
    env = {"PATH": "/usr/bin:/bin", "YAP_PLUGINS_TOML": ""}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    assert out.stdout.strip() == "False []"


async def _wait_gauge_positive(receiver: OtlpReceiver, name: str, wait_s: float = 5.0) -> bool:
    def moved(r: OtlpReceiver) -> bool:
        return any(v > 0 for _, v in r.metric_points().get(PREFIX + name, []))

    return await asyncio.to_thread(receiver.wait_for, moved, wait_s)


async def _drive(url: str, receiver: OtlpReceiver) -> None:
    """One of everything the server counts, through the protocol."""
    async with await YapConnection.open(url, API_KEY) as a:
        sid = new_id()
        turn = await a.turn("start", sid, {"user_utterance": "please look at my screen"}, wait_s=30)
        assert turn.end == "done" and turn.toolcall and turn.toolcall["status"] == "yes"

        # A running turn: the gauges must see it before it is cancelled.
        rid = new_id()
        await a.send("message", sid, rid, {"user_utterance": "tell me more"})
        assert await _wait_gauge_positive(receiver, "active_generations")
        assert await _wait_gauge_positive(receiver, "active_connections")
        await a.send("cancel", sid, payload={"reason": "test"})
        while (await a.recv(10)).type != "cancelled":
            pass

        # Barge-in: a message over a running turn cancels it.
        first, second = new_id(), new_id()
        await a.send("message", sid, first, {"user_utterance": "one"})
        await a.send("message", sid, second, {"user_utterance": "two"})
        done = await a.collect(second, a.clock(), wait_s=30)
        assert done.end == "done" and any(f.type == "cancelled" for f in done.other)

        bad = await a.turn("message", sid, {"user_utterance": ""}, wait_s=10)
        assert bad.end == "error" and bad.error and bad.error["code"] == "invalid_payload"

        # Over WS_MAX_MESSAGES_PER_WINDOW (6): this socket has sent 4 or 5 counted turns.
        for _ in range(4):
            over = await a.turn("start", sid, {}, wait_s=10)
            if over.end == "error":
                break
        assert over.end == "error" and over.error and over.error["code"] == "rate_limited"
        await a.send("end", sid)
        assert await a.wait_closed(10) == 1000
    await asyncio.sleep(0.3)  # the server releases a's slot as the socket closes

    # The capacity (3) is full with b, c, e: the fourth is refused; silence closes the rest.
    async with await YapConnection.open(url, API_KEY) as b, await YapConnection.open(url, API_KEY) as c, \
            await YapConnection.open(url, API_KEY) as e:
        for conn in (c, e):
            await conn.send("ping", None, "p")
            assert (await conn.recv(10)).type == "pong"
        d = await YapConnection.open(url, API_KEY)
        assert await d.wait_closed(10) == 1013
        assert await b.wait_closed(10) == 4000

    wrong = await YapConnection.open(url, "wrong-key")
    assert await wrong.wait_closed(10) == 1008


def _moved(points: dict[str, list[tuple[dict[str, Any], float]]]) -> set[str]:
    return {name for name, pts in points.items() if any(v > 0 for _, v in pts)}


async def test_every_metric_moves_and_spans_arrive() -> None:
    with OtlpReceiver() as receiver, serve({**ENV, "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.url}) as server:
        await _drive(server.ws_url, receiver)
        wanted = {PREFIX + n for n in HISTOGRAMS + COUNTERS + GAUGES}
        await asyncio.to_thread(receiver.wait_for, lambda r: wanted <= _moved(r.metric_points()), 15)
        points = receiver.metric_points()
        assert wanted - _moved(points) == set()

        # Attributes that carry meaning.
        def attrs(name: str, key: str) -> set[Any]:
            return {a.get(key) for a, v in points[PREFIX + name] if v > 0}

        assert {"done", "cancelled"} <= attrs("requests_total", "status")
        # the client's own reason ("test") is counted as "cancel": clients do not pick label values
        assert attrs("cancellation_total", "reason") == {"cancel", "barge_in"}
        assert {"invalid_payload", "rate_limited"} <= attrs("errors_total", "error.type")
        assert {"auth", "capacity"} <= attrs("connections_rejected_total", "reason")
        assert "yes" in attrs("tool_classifications_total", "decision")
        # No GPU here: the GPU gauges export nothing, and nothing failed.
        assert not points.get(PREFIX + "gpu.memory_used") and not points.get(PREFIX + "gpu.utilization")
        resource = receiver.resource_attributes()
        assert resource["service.name"] == "yap" and resource["yap.engine"] == "scripted"
        # one series per process (SERVER_WORKERS runs several): the server's pid names it
        assert resource["service.instance.id"].endswith(f"-{server.pid}")
        assert "yap.worker" not in resource

        def have_spans(r: OtlpReceiver) -> bool:
            names = {s["name"] for s in r.spans()}
            return {"request", "generation"} <= names

        assert await asyncio.to_thread(receiver.wait_for, have_spans, 15)
        spans = receiver.spans()
        by_id = {s["span_id"]: s for s in spans}
        generations = [s for s in spans if s["name"] == "generation"]
        for g in generations:
            parent = by_id.get(g["parent_id"])
            assert parent is not None and parent["name"] == "request"
            assert parent["attributes"]["request_id"] == g["attributes"]["request_id"]
            assert parent["attributes"]["session_id"]
            assert g["attributes"]["yap.engine"] == "scripted"
        assert API_KEY not in server.log_text()


# --- Sentry ------------------------------------------------------------------------


class SentrySink:
    """A loopback HTTP server standing in for Sentry's ingest: counts envelopes' events."""

    def __init__(self) -> None:
        self.events: list[dict[str, Any]] = []
        sink = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                if self.headers.get("Content-Encoding") == "gzip":
                    body = gzip.decompress(body)
                elif self.headers.get("Content-Encoding") == "br":
                    import brotli  # type: ignore[import-not-found]

                    body = brotli.decompress(body)
                lines = body.split(b"\n")
                for header, item in zip(lines[1::2], lines[2::2], strict=False):
                    if json.loads(header).get("type") == "event":
                        sink.events.append(json.loads(item))
                self.send_response(200)
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> SentrySink:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def sentry_sink() -> Iterator[SentrySink]:
    with SentrySink() as sink:
        yield sink


def test_sentry_is_rate_limited_per_error_class(sentry_sink: SentrySink, caplog: pytest.LogCaptureFixture) -> None:
    dsn = f"http://publickey-secret-ish@127.0.0.1:{sentry_sink.port}/42"
    caplog.set_level(logging.DEBUG)
    t = Telemetry(engine="scripted", settings=CoreSettings(sentry_dsn=dsn, sentry_error_interval_s=60))
    assert not t.enabled  # Sentry alone builds no OpenTelemetry SDK
    for _ in range(3):  # internal_error frames for exceptions the server caught: sent with their stack
        t.error("internal_error", RuntimeError("engine fell over"))
    t.error("internal_error", ValueError("bad value"))
    for _ in range(2):  # without an exception: a message
        t.error("internal_error")
    t.error("invalid_payload")  # client errors are not Sentry events
    t.shutdown()  # flushes the transport
    kinds = sorted(
        e["exception"]["values"][0]["type"] if "exception" in e else e.get("message") or e["logentry"]["message"]
        for e in sentry_sink.events
    )
    assert kinds == ["RuntimeError", "ValueError", "yap error frame: internal_error"]
    assert all(e["tags"]["yap.engine"] == "scripted" for e in sentry_sink.events)
    assert "publickey-secret-ish" not in caplog.text


async def test_a_failed_turn_reaches_sentry_with_its_stack(sentry_sink: SentrySink) -> None:
    """The engine raising mid-turn: the client gets internal_error, and Sentry
    gets the exception itself (type and stack), not only a message."""
    dsn = f"http://publickey@127.0.0.1:{sentry_sink.port}/42"
    with serve({"SENTRY_DSN": dsn, "SCRIPTED_FAIL_ON": "please fail"}) as server:
        async with await YapConnection.open(server.ws_url, API_KEY) as conn:
            turn = await conn.turn("start", new_id(), {"user_utterance": "please fail now"}, wait_s=10)
        assert turn.end == "error" and turn.error is not None and turn.error["code"] == "internal_error", turn
        for _ in range(100):  # Sentry's transport sends from a thread of its own
            if sentry_sink.events:
                break
            await asyncio.sleep(0.1)
    [event] = sentry_sink.events
    [value] = event["exception"]["values"]
    assert value["type"] == "RuntimeError" and "scripted_fail_on" in value["value"]
    assert any(f["function"] == "run" for f in value["stacktrace"]["frames"])  # TurnRunner.run caught it


def test_sentry_without_the_extra_is_a_clear_error() -> None:
    code = (
        "import sys; sys.modules['sentry_sdk'] = None\n"
        "from yap_core.settings import CoreSettings, SettingsError\n"
        "from yap_core.telemetry import Telemetry\n"
        "try:\n"
        "    Telemetry(settings=CoreSettings(sentry_dsn='http://k@127.0.0.1:1/1'))\n"
        "except SettingsError as e:\n"
        "    print(e)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert "pip install 'yap-core[sentry]'" in out.stdout
    assert "k@127.0.0.1" not in out.stdout


async def test_turn_timing_log_splits_ttft_on_the_hosts_clock() -> None:
    """TURN_TIMING_LOG: one line per turn whose parts add up, with the frame's
    arrival and the first token as perf_counter readings that a client on the
    same host can put beside its own send and receive times."""
    env = {"SCRIPTED_TOKEN_DELAY_MS": "5", "CHAT_MAX_OUT": "5", "TURN_TIMING_LOG": "1", "LOG_LEVEL": "WARNING"}
    with serve(env) as server:
        async with await YapConnection.open(server.ws_url, API_KEY) as conn:
            turns = [await conn.turn("start", new_id(), {"user_utterance": f"hello {i}"}, wait_s=10) for i in range(3)]
        await asyncio.sleep(0.2)
        records = timing_records(server.log_text())
    for turn in turns:
        assert turn.end == "done", turn
        r = records[turn.request_id]
        assert r["status"] == "done" and r["completion_tokens"] > 0
        # the parts: frame in -> engine called -> first text -> token frame queued
        assert r["ttft_ms"] == pytest.approx(r["submit_ms"] + r["engine_first_ms"] + r["after_engine_ms"], abs=0.01)
        assert r["ttft_ms"] == pytest.approx((r["first_token_at"] - r["received_at"]) * 1e3, abs=0.01)
        # one clock for both processes: sent -> arrived -> first token queued -> first token read
        first_read = turn.sent_at + turn.first_token_s
        assert turn.sent_at < r["received_at"] < r["first_token_at"] < first_read
        assert first_read - turn.sent_at < 10.0
