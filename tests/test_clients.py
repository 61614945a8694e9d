"""The test clients (`yap client ...`) as real subprocesses against a real
server on the scripted engine and classifier: each check passes where the
server keeps the protocol, and fails (exit 1) where it cannot hold."""

from __future__ import annotations

import json
import os
import pty
import select
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from served import API_KEY, serve, yap
from yap_core.client import default_tool_file, load_labelled
from yap_core.scripted import SCREEN_WORDS
from yap_core.server_process import ServerProcess

# Slow enough tokens that a cancel lands mid-reply; short replies keep it quick.
ENV = {
    "SCRIPTED_TOKEN_DELAY_MS": "15",
    "CHAT_MAX_OUT": "24",
    # The tool client replays 30 turns on one socket: over 20 per 2 s it must
    # wait for the window as the server asks, and still finish.
    "WS_MESSAGE_WINDOW_SECONDS": "2",
}


@pytest.fixture(scope="module")
def server() -> Iterator[ServerProcess]:
    with serve(ENV) as s:
        yield s


@pytest.fixture(scope="module")
def quick_idle_server() -> Iterator[ServerProcess]:
    with serve({**ENV, "WS_IDLE_TIMEOUT_S": "1"}) as s:
        yield s


def client(server: ServerProcess, *args: str, key: str = API_KEY, input: str | None = None) -> subprocess.CompletedProcess[str]:
    return yap(["client", *args], env={"SERVER_WS_URL": server.ws_url, "TEXT_API_KEY": key}, input=input)


def test_warmup_prints_toolcall_reply_and_timings(server: ServerProcess) -> None:
    r = client(server, "warmup", "--double-ttfb", "--utterance", "please look at my screen")
    assert r.returncode == 0, r.stderr
    assert "[cold] toolcall: yes tool=take_screenshot" in r.stdout
    assert "[warm] reply: Sure thing!" in r.stdout
    assert "first token: cold" in r.stdout and "ms, warm" in r.stdout


def test_warmup_with_a_wrong_key_fails(server: ServerProcess) -> None:
    r = client(server, "warmup", key="not-the-key")
    assert r.returncode == 1
    assert "authentication_failed" in r.stderr
    assert "not-the-key" not in r.stdout + r.stderr


def test_warmup_with_no_server_fails_cleanly(server: ServerProcess) -> None:
    r = yap(["client", "warmup", "--server", "ws://127.0.0.1:9/ws", "--api-key", "k", "--timeout", "3"])
    assert r.returncode == 1
    assert r.stderr.startswith("FAIL:") and "Traceback" not in r.stderr


def test_conversation_runs_ten_turns_with_history(server: ServerProcess) -> None:
    r = client(server, "conversation")
    assert r.returncode == 0, r.stderr
    assert r.stdout.count("bot:  Sure thing!") == 10
    # The screen question is the one turn the scripted classifier flags.
    assert r.stdout.count("toolcall: yes") == 1
    assert "10 turns done; prompt tokens" in r.stdout


def test_history_recall_and_bench(server: ServerProcess) -> None:
    # The scripted engine answers "Sure thing! ...": it cannot recall, so the
    # plain run reports "no" and --require-recall fails, as it should.
    r = client(server, "history", "--bench", "2")
    assert r.returncode == 0, r.stderr
    assert "recalled 'Biscuit': no" in r.stdout
    assert "history prefilled (ready first): first token" in r.stdout
    r = client(server, "history", "--require-recall")
    assert r.returncode == 1 and "does not mention 'Biscuit'" in r.stderr


def test_history_recall_passes_when_the_reply_names_the_fact() -> None:
    with serve({**ENV, "SCRIPTED_REPLY": "Your dog is called Biscuit."}) as s:
        r = client(s, "history", "--require-recall")
    assert r.returncode == 0, r.stderr
    assert "recalled 'Biscuit': yes" in r.stdout


def test_cancel_checks_nothing_follows_then_recovers(server: ServerProcess) -> None:
    r = client(server, "cancel", "--after-tokens", "2", "--quiet-s", "0.2")
    assert r.returncode == 0, r.stderr
    assert "nothing followed" in r.stdout
    assert "recovered: 'Sure thing!" in r.stdout


def test_cancel_fails_when_the_reply_ends_first(server: ServerProcess) -> None:
    r = client(server, "cancel", "--after-tokens", "500")
    assert r.returncode == 1
    assert "nothing left to cancel" in r.stderr


def test_idle_end_closes_1000_and_silence_4000(quick_idle_server: ServerProcess) -> None:
    r = client(quick_idle_server, "idle", "--idle-timeout", "1", "--timeout", "10")
    assert r.returncode == 0, r.stderr
    assert "end -> session_end, close 1000: ok" in r.stdout
    assert "silence -> close 4000 after" in r.stdout


def test_idle_fails_when_the_server_timeout_is_not_the_one_claimed(quick_idle_server: ServerProcess) -> None:
    # The server closes after 1 s; claiming 5 s must fail the "not before" check.
    r = client(quick_idle_server, "idle", "--idle-timeout", "5", "--timeout", "10")
    assert r.returncode == 1
    assert "before the idle timeout" in r.stderr


def _expected_counts(path: Path) -> tuple[int, int, int, int]:
    """What the scripted classifier's keyword rule must score on the file."""
    tp = fp = tn = fn = 0
    for item in load_labelled(path):
        said = any(w in item.text.lower() for w in SCREEN_WORDS)
        tp += said and item.label
        fp += said and not item.label
        tn += not said and not item.label
        fn += not said and item.label
    return tp, fp, tn, fn


def test_tool_reports_accuracy_and_errors(server: ServerProcess) -> None:
    tp, fp, tn, fn = _expected_counts(default_tool_file())
    assert fp and fn  # the sample is hard enough for a keyword rule to miss both ways
    r = client(server, "tool", "--show-misses")
    assert r.returncode == 0, r.stderr
    total = tp + fp + tn + fn
    assert f"turns {total}: accuracy {(tp + tn) / total:.3f}" in r.stdout
    assert f"false positives {fp}, false negatives {fn}" in r.stdout
    assert r.stdout.count("miss: ") == fp + fn
    r = client(server, "tool", "--min-accuracy", "0.99")
    assert r.returncode == 1 and "below --min-accuracy" in r.stderr


def test_tool_rejects_a_bad_file(server: ServerProcess, tmp_path: Path) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"text": "hi", "label": "maybe"}) + "\n")
    r = client(server, "tool", "--file", str(bad))
    assert r.returncode == 2
    assert "bad.jsonl:1" in r.stderr


def test_live_through_a_stdin_pipe(server: ServerProcess, tmp_path: Path) -> None:
    personas = tmp_path / "personas.toml"
    personas.write_text('[ana]\npersonality = "friendly"\ngender = "female"\n')
    r = client(server, "live", "--personas", str(personas), "--persona", "ana",
               input="hello there\n/personas\ncan you see my screen\n")
    assert r.returncode == 0, r.stderr
    assert r.stdout.count("bot> Sure thing!") == 2
    assert "[toolcall yes" in r.stdout and "ana" in r.stdout
    assert "[session ended]" in r.stdout


def test_live_in_a_terminal(server: ServerProcess) -> None:
    """A real pty: prompts appear, the reply streams, Ctrl-D ends the session."""
    main, child = pty.openpty()
    env = {**os.environ, "SERVER_WS_URL": server.ws_url, "TEXT_API_KEY": API_KEY}
    from yap_core.server_process import yap_executable

    proc = subprocess.Popen([yap_executable(), "client", "live"], stdin=child, stdout=child, stderr=child, env=env)
    os.close(child)
    seen = b""

    def read_until(marker: bytes, timeout: float = 30.0) -> None:
        nonlocal seen
        deadline = time.monotonic() + timeout
        while marker not in seen and time.monotonic() < deadline:
            ready, _, _ = select.select([main], [], [], 0.2)
            if ready:
                try:
                    seen += os.read(main, 4096)
                except OSError:
                    break
        assert marker in seen, seen.decode(errors="replace")

    try:
        read_until(b"you> ")
        os.write(main, b"hi there\n")
        read_until(b"[done ")
        os.write(main, b"\x04")  # EOF: the client ends the session
        read_until(b"[session ended]")
        assert proc.wait(30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        os.close(main)
    assert b"bot> Sure thing!" in seen
