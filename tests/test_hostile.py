"""Hostile input: generated frames through the real decoder, and a subset over a
real socket to a real `yap serve`.

The decoder tests push 10,500 generated frames through `yap_core.frames.decode`
(see the max_examples below): no exception other than FrameError escapes, every
bad frame gets the code PROTOCOL.md gives it and names the broken field, and
every valid frame decodes. The socket test sends a few hundred of them on one
connection and checks each answer and that the connection and its running
session survive.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from hostile_frames import Labelled, bad_payload_frames, not_a_frame, valid_frames
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from websockets.sync.client import ClientConnection, connect
from yap_core.server_process import ServerProcess

from yap_core import frames

_HEALTH = [HealthCheck.too_slow, HealthCheck.filter_too_much]


def fast(n: int) -> settings:
    """n examples, no per-example deadline, the same examples on every run (CI is not a lottery)."""
    return settings(max_examples=n, deadline=None, derandomize=True, suppress_health_check=_HEALTH)


def check_decoded(text: str | bytes, expected: tuple[str, str | None] | None) -> None:
    try:
        frame = frames.decode(text)
    except frames.FrameError as exc:
        assert expected is not None, f"valid frame rejected: {exc.code} {exc.message}\n{text!r}"
        code, field = expected
        assert exc.code == code, f"{text!r}: got {exc.code} ({exc.message}), expected {code}"
        if field is not None:
            assert exc.field == field, f"{text!r}: error names {exc.field!r}, expected {field!r}"
            assert field in exc.message
        return
    assert expected is None, f"bad frame accepted (expected {expected}): {text!r}"
    obj = json.loads(text)
    assert frame.type == obj["type"]
    assert frame.session_id == obj.get("session_id")
    assert frame.request_id == obj.get("request_id")


@fast(3000)
@given(valid_frames())
def test_valid_frames_decode(case: Labelled) -> None:
    check_decoded(*case)


@fast(4500)
@given(bad_payload_frames())
def test_one_bad_field_is_invalid_payload_naming_it(case: Labelled) -> None:
    check_decoded(*case)


@fast(2500)
@given(not_a_frame())
def test_not_a_frame_is_invalid_message(case: Labelled) -> None:
    check_decoded(*case)


@fast(500)
@given(st.binary(max_size=200))
def test_random_bytes_never_escape(data: bytes) -> None:
    try:
        frames.decode(data)
    except frames.FrameError as exc:
        assert exc.code in ("invalid_message", "invalid_payload")


@pytest.mark.parametrize(
    "text",
    [
        '{"type":"ping","session_id":"\\ud800abc"}',  # lone surrogate: could not be echoed as UTF-8
        '{"type":"message","session_id":"s","payload":{"user_utterance":"\\udfff"}}',
        "[" * 100_000,
        '{"type":"start","session_id":"s","payload":{"history":' + "[" * 50_000 + "]}}",
        '{"type":"start","session_id":"s","payload":{"sampling":{"temperature":1e999}}}',
        '{"type":"start","session_id":"s","payload":{"sampling":{"max_tokens":' + "9" * 5000 + "}}}",
    ],
)
def test_pathological_text_gets_a_frame_error(text: str) -> None:
    with pytest.raises(frames.FrameError) as err:
        frames.decode(text)
    assert err.value.code in ("invalid_message", "invalid_payload")


# --- over a real socket -------------------------------------------------------------

API_KEY = "hostile-test-key"


@pytest.fixture(scope="module")
def hostile_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    log = Path(tmp_path_factory.mktemp("hostile")) / "server.log"
    env = {"TEXT_API_KEY": API_KEY, "INFERENCE_ENGINE": "scripted", "DEPLOY_MODE": "chat",
           "WS_MAX_MESSAGES_PER_WINDOW": "0", "WS_MAX_CANCELS_PER_WINDOW": "0", "SCRIPTED_TOKEN_DELAY_MS": "2"}
    with ServerProcess(env, log_path=log) as server:
        yield server


@pytest.fixture(scope="module")
def hostile_socket(hostile_server: ServerProcess) -> Iterator[ClientConnection]:
    ws = connect(hostile_server.ws_url, additional_headers={"X-API-Key": API_KEY}, compression=None,
                 open_timeout=30, max_size=2**22)
    ws.send(json.dumps({"type": "start", "session_id": "keeper", "request_id": "keeper-start",
                        "payload": {"chat_prompt": "You are a test."}}))
    assert json.loads(ws.recv(timeout=30))["type"] == "ready"
    yield ws
    ws.close()


def _answer(ws: ClientConnection) -> dict:
    while True:
        frame = json.loads(ws.recv(timeout=30))
        if frame["type"] == "error" or frame["type"] in ("pong", "ready", "cancelled", "session_end"):
            return frame
        # Valid turns stream frames; read through them to their terminal frame.
        if frame["type"] == "done":
            return frame


def _bad_only(case: Labelled) -> bool:
    text, expected = case
    return expected is not None


@settings(max_examples=150, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))
@given(st.one_of(bad_payload_frames(), not_a_frame()).filter(_bad_only))
def test_bad_frames_over_a_socket_get_their_code_and_the_socket_survives(
    hostile_socket: ClientConnection, case: Labelled
) -> None:
    text, expected = case
    assert expected is not None
    if len(text.encode()) > 60_000:
        return  # the size limit answers before the decoder; tested in test_faults
    hostile_socket.send(text)
    frame = _answer(hostile_socket)
    assert frame["type"] == "error", frame
    assert frame["payload"]["code"] == expected[0], (text, frame)
    assert isinstance(frame["session_id"], str)
    # Still alive: a ping on the kept session gets its pong.
    hostile_socket.send(json.dumps({"type": "ping", "session_id": "keeper", "request_id": "alive"}))
    pong = _answer(hostile_socket)
    assert pong == {"type": "pong", "session_id": "keeper", "request_id": "alive", "payload": {}}


def test_bad_frames_during_a_turn_leave_it_running(hostile_socket: ClientConnection) -> None:
    """Bad frames mid-stream get errors; the turn still ends with done and all its tokens."""
    ws = hostile_socket
    ws.send(json.dumps({"type": "message", "session_id": "keeper", "request_id": "long",
                        "payload": {"user_utterance": "tell me a story"}}))
    bad = ["nope", '{"type":"message","session_id":"keeper","payload":{"user_utterance":""}}',
           '{"type":"start","session_id":"keeper","payload":{"bogus":1}}', "[]", '{"type":"x"}']
    for text in bad:
        ws.send(text)
    seen: list[dict] = []
    while not (seen and seen[-1]["type"] == "done" and seen[-1]["request_id"] == "long"):
        seen.append(json.loads(ws.recv(timeout=30)))
    errors = [f["payload"]["code"] for f in seen if f["type"] == "error"]
    # Errors may still be in flight after done; collect until all five are in.
    while len(errors) < len(bad):
        f = json.loads(ws.recv(timeout=30))
        assert f["type"] == "error", f
        errors.append(f["payload"]["code"])
    assert sorted(errors) == sorted(["invalid_message", "invalid_payload", "invalid_payload",
                                     "invalid_message", "invalid_message"])
    turn = [f for f in seen if f.get("request_id") == "long"]
    assert [f["type"] for f in turn][-2:] == ["final", "done"]
    assert "".join(f["payload"]["text"] for f in turn if f["type"] == "token") == turn[-2]["payload"]["text"]
    assert not any(f["type"] == "cancelled" for f in seen)
