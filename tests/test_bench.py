"""`yap bench` as a real subprocess against a real server on the scripted
engine: the report's numbers are consistent with the turns it ran, every mode
runs, the JSON and PNG come out, and failures are counted and fail the run."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from served import API_KEY, serve, yap
from yap_core.latency_stats import percentile, summarize
from yap_core.scripted import SCREEN_WORDS
from yap_core.server_process import ServerProcess

ENV = {"SCRIPTED_TOKEN_DELAY_MS": "2", "CHAT_MAX_OUT": "20", "WS_MAX_MESSAGES_PER_WINDOW": "0"}


@pytest.fixture(scope="module")
def server() -> Iterator[ServerProcess]:
    with serve(ENV) as s:
        yield s


def bench(server: ServerProcess, *args: str, key: str = API_KEY):  # noqa: ANN201
    return yap(["bench", "--no-progress", *args], env={"SERVER_WS_URL": server.ws_url, "TEXT_API_KEY": key})


def test_closed_loop_report_json_and_plot(server: ServerProcess, tmp_path: Path) -> None:
    out, png = tmp_path / "r.json", tmp_path / "r.png"
    r = bench(server, "-n", "6", "-c", "3", "--turns", "3", "--json-out", str(out), "--plot", str(png))
    assert r.returncode == 0, r.stderr
    assert "first turn (pays the prefill), n=6" in r.stdout and "later turns, n=12" in r.stdout
    report = json.loads(out.read_text())
    assert report["turns_ok"] == 18 and report["turns_failed"] == 0
    turns = report["turns"]
    assert sorted((t["session"], t["turn"]) for t in turns) == [(s, k) for s in range(6) for k in range(3)]
    for t in turns:
        assert t["end"] == "done"
        assert 0 < t["toolcall_ms"] <= t["ttft_ms"] <= t["first_3_words_ms"] <= t["total_ms"]
        assert t["ttft_ms"] <= t["first_sentence_ms"] <= t["total_ms"]
        assert 0 < t["tokens"] <= 20 and t["cached_prompt_tokens"] <= t["prompt_tokens"]
    first = [t["ttft_ms"] for t in turns if t["turn"] == 0]
    assert report["first_turn"]["ttft_ms"]["count"] == 6
    assert report["first_turn"]["ttft_ms"]["p50"] == pytest.approx(float(np.percentile(first, 50)))
    # Later turns carry the history: their prompts are longer than the first.
    by_session = {(t["session"], t["turn"]): t["prompt_tokens"] for t in turns}
    assert all(by_session[(s, 2)] > by_session[(s, 0)] for s in range(6))
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000


def test_burst_and_poisson_modes(server: ServerProcess, tmp_path: Path) -> None:
    out = tmp_path / "burst.json"
    r = bench(server, "-n", "8", "-c", "4", "--turns", "2", "--mode", "burst", "--json-out", str(out))
    assert r.returncode == 0, r.stderr
    report = json.loads(out.read_text())
    assert report["turns_ok"] == 16
    # In a wave, each turn starts at the same instant (the barrier): starts of
    # the wave's first turns lie within a few ms, far tighter than a turn lasts.
    wave = sorted(t["started_s"] for t in report["turns"] if t["session"] < 4 and t["turn"] == 1)
    assert wave[-1] - wave[0] < 0.05
    r = bench(server, "-n", "4", "-c", "4", "--turns", "1", "--mode", "poisson", "--rate", "50")
    assert r.returncode == 0, r.stderr
    assert "mode poisson at 50.0/s" in r.stdout


def test_prefill_mode_and_toolcalls(server: ServerProcess, tmp_path: Path) -> None:
    utterances = tmp_path / "u.txt"
    lines = ["hello there", f"can you {SCREEN_WORDS[0]} this"]
    utterances.write_text("\n".join(lines) + "\n")
    out = tmp_path / "p.json"
    r = bench(server, "-n", "2", "-c", "2", "--turns", "2", "--prefill", "--utterances", str(utterances),
              "--json-out", str(out))
    assert r.returncode == 0, r.stderr
    report = json.loads(out.read_text())
    assert report["prefill_ms"]["count"] == 2
    assert "prefill (ready) p50" in r.stdout


def test_failures_are_counted_and_fail_the_run(server: ServerProcess) -> None:
    r = bench(server, "-n", "3", "-c", "3", "--turns", "2", key="wrong-key")
    assert r.returncode == 1
    assert "turns ok 0, failed 6" in r.stdout and "authentication_failed" in r.stdout
    r = bench(server, "-n", "3", "-c", "3", "--turns", "2", "--max-failures", "6", key="wrong-key")
    assert r.returncode == 0


def test_bad_options_are_usage_errors(server: ServerProcess) -> None:
    assert bench(server, "--rate", "3").returncode == 2
    assert bench(server, "--mode", "poisson").returncode == 2


@given(st.lists(st.floats(min_value=0, max_value=1e6, allow_nan=False), min_size=1, max_size=200),
       st.sampled_from([50, 90, 95, 99]))
def test_percentile_matches_numpy(xs: list[float], q: int) -> None:
    assert percentile(sorted(xs), q) == pytest.approx(float(np.percentile(xs, q)), rel=1e-9, abs=1e-9)


def test_summary_ignores_missing_moments() -> None:
    s = summarize([None, 3.0, 1.0, None, 2.0])
    assert (s.count, s.avg, s.p50, s.min, s.max) == (3, 2.0, 2.0, 1.0, 3.0)
    assert summarize([None]).count == 0 and summarize([None]).p50 is None
