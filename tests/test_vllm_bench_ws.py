"""The WebSocket side of benchmarks/vllm_bench.py, against a real `yap serve`
(the scripted engine: no GPU here). GPU run 15 reads the ≤ 2 % throughput
target on the sustained windows with `--reply-spread`, and explains the loss
with `cycle_split`; both must do what the docs say they do."""

from __future__ import annotations

import asyncio
import sys
import time
from pathlib import Path

import psutil
import pytest
from served import serve

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import vllm_bench  # noqa: E402


def test_reply_lengths_are_one_draw_per_session_and_turn() -> None:
    assert {vllm_bench.sustained_reply_tokens(i, k, 0.0) for i in range(8) for k in range(8)} == {vllm_bench.MAX_TOKENS}
    drawn = [vllm_bench.sustained_reply_tokens(i, k, 0.5) for i in range(16) for k in range(16)]
    assert drawn == [vllm_bench.sustained_reply_tokens(i, k, 0.5) for i in range(16) for k in range(16)]
    low = vllm_bench.MAX_TOKENS - int(0.5 * vllm_bench.MAX_TOKENS)
    assert all(low <= n <= vllm_bench.MAX_TOKENS for n in drawn)
    assert len(set(drawn)) > 20, "the lengths must vary, or the sessions stay in lockstep"


def test_cycle_split_pairs_a_turn_with_its_sessions_next_in_the_same_window() -> None:
    # two sessions; session 0 has a turn in window 1 and two in window 2
    logged = {
        "a": {"received_at": 10.0, "total_ms": 100.0, "submit_ms": 0.2},
        "b": {"received_at": 20.0, "total_ms": 100.0, "submit_ms": 0.2},
        "c": {"received_at": 20.1101, "total_ms": 100.0, "submit_ms": 0.3, "engine_first_ms": 5.0},
        "d": {"received_at": 30.0, "total_ms": 100.0, "submit_ms": 0.2},
    }
    cycles = [
        ("a", 0, 1, 0.0, 9.999, 10.102, 0.05),  # done at the client 2 ms after the server queued it
        ("b", 0, 2, 0.0, 19.999, 20.102, None),
        # sent 1.1 ms after b's done arrived; in the app 7 ms later; its first token 6.2 ms after vLLM's 5.0
        ("c", 0, 2, 0.0, 20.1031, 20.3, 0.0112),
        ("d", 1, 2, 0.0, 29.999, 30.2, 0.02),  # another session: never paired with session 0's turns
    ]
    split = vllm_bench.cycle_split(cycles, logged)
    assert split["n"] == 1, "a -> b crosses windows; d has no next turn"
    assert split["done_hop_ms_p50"] == pytest.approx(2.0, abs=1e-6)
    assert split["client_gap_ms_p50"] == pytest.approx(1.1, abs=1e-6)
    assert split["hop_in_ms_p50"] == pytest.approx(7.0, abs=1e-6)
    assert split["submit_ms_p50"] == pytest.approx(0.3)
    assert split["between_ms_p50"] == pytest.approx(2.0 + 1.1 + 7.0 + 0.3, abs=1e-6)
    assert split["engine_first_ms_p50"] == pytest.approx(5.0)
    # only c has both the client's first token and vLLM's; a and d lack engine_first_ms, b had no token
    assert split["added_ms_p50"] == split["added_ms_p90"] == pytest.approx(11.2 - 5.0)


def test_first_split_joins_the_probes_first_tokens_by_the_clients_ids(tmp_path: Path) -> None:
    # the probe sees vLLM's internal ids, "<the client's id>-<8 hex>"; "z" was never called
    firsts = tmp_path / "run.aborts.firsts"
    firsts.write_text("aa-0123abcd 10.004000\nbb-89abcdef 20.010000\nz-00000000 5.0\naa-ffffffff 11.0\n")
    core = vllm_bench.read_probe_times(str(firsts))
    assert core == {"aa": 10.004, "bb": 20.01, "z": 5.0}, "the first line of an id counts"
    assert vllm_bench.read_probe_times(str(tmp_path / "none")) == {}
    # called at 10.000, the core handed the token out at 10.004, the client had it at 10.0065
    calls = [("aa", 10.0, 10.0065), ("bb", 20.0, 20.0105), ("cc", 30.0, 30.02)]
    split = vllm_bench.first_split(calls, core)
    assert split["n"] == 2, "cc: the probe never saw it"
    # core 4.0 and 10.0 ms, hand-on 0.5 and 2.5 ms; percentiles interpolate between the two
    assert (split["core_ms_p50"], split["core_ms_p90"]) == pytest.approx((7.0, 9.4))
    assert (split["handon_ms_p50"], split["handon_ms_p90"]) == pytest.approx((1.5, 2.3))
    assert vllm_bench.first_split([], core) == {"n": 0}


def test_ws_first_calls_read_the_server_timing_line() -> None:
    logged = {
        "a": {"received_at": 100.0, "submit_ms": 0.2, "engine_first_ms": 12.0},
        "b": {"received_at": 200.0, "submit_ms": 0.3},  # never reached a first token
    }
    cycles = [("a", 0, 1, 0.0, 99.9, 100.5, 0.013), ("b", 0, 1, 0.0, 199.9, 200.5, None), ("c", 1, 1, 0.0, 1.0, 2.0, None)]
    [(rid, called, seen)] = vllm_bench.ws_first_calls(cycles, logged)
    assert rid == "a"
    assert called == pytest.approx(100.0002) and seen == pytest.approx(100.0122)


def test_sustained_window_against_a_real_server_with_spread_replies(monkeypatch: pytest.MonkeyPatch) -> None:
    """One short sustained window through real sockets: every turn ends done,
    the replies have the drawn lengths, and each turn pairs with the server's
    timing line (the split of the time between a session's turns)."""
    monkeypatch.setattr(vllm_bench, "SUSTAIN_S", 1.5)
    monkeypatch.setattr(vllm_bench, "SUSTAIN_WARM_S", 0.5)
    monkeypatch.setattr(vllm_bench, "REPLY_SPREAD", 0.5)
    env = {"TEXT_API_KEY": vllm_bench.API_KEY, "DEPLOY_MODE": "chat", "TURN_TIMING_LOG": "1",
           "SCRIPTED_REPLY": " ".join(["word"] * vllm_bench.MAX_TOKENS), "CHAT_MAX_OUT": str(vllm_bench.MAX_TOKENS),
           # the scripted tokenizer counts bytes: the ~600-word system prompts need room
           "CHAT_PROMPT_MAX_TOKENS": "8000", "WS_MAX_MESSAGES_PER_WINDOW": "0"}  # fmt: skip
    with serve(env) as server:
        front = vllm_bench.Front(server.ws_url, server.base_url, [psutil.Process(server.pid)], server.log_path)
        pool = vllm_bench.client_pool()
        cycles: list[vllm_bench.Cycle] = []
        try:
            turns, w0, w1, cores = asyncio.run(vllm_bench.ws_sustained(front, pool, 4, window=1, cycles=cycles))
        finally:
            pool.shutdown()
        time.sleep(0.1)  # the last turns' timing lines
        logged = front.timings()
    inside = [t for t in turns if w0 <= t[0] <= w1]
    assert len(inside) >= 8 and cores > 0
    low = vllm_bench.MAX_TOKENS - int(0.5 * vllm_bench.MAX_TOKENS)
    lengths = {n for *_, n in turns}
    assert lengths <= set(range(low, vllm_bench.MAX_TOKENS + 1)) and len(lengths) > 1, lengths
    assert {x[0] for x in cycles} <= set(logged), "every turn of the window has its server timing line"
    split = vllm_bench.cycle_split(cycles, logged)
    assert split["n"] >= len(cycles) - 4, "all but each session's last turn are paired"
    for key in ("done_hop_ms", "client_gap_ms", "hop_in_ms", "submit_ms"):
        assert split[f"{key}_p50"] >= 0, (key, split)
    assert split["between_ms_p50"] >= split["hop_in_ms_p50"]
    # the server's part of TTFT: positive (two socket hops at least), and less than the client's whole TTFT
    ttfts = sorted(x[6] * 1e3 for x in cycles if x[6] is not None)
    assert 0 < split["added_ms_p50"] < ttfts[len(ttfts) // 2], (split, ttfts[len(ttfts) // 2])
    # each turn's engine call and first token, on the server's clock, inside the client's send -> first token
    calls = {rid: (called, seen) for rid, called, seen in vllm_bench.ws_first_calls(cycles, logged)}
    assert len(calls) >= len(cycles) - 4
    for x in cycles:
        if x[0] in calls and x[6] is not None:
            called, seen = calls[x[0]]
            assert x[4] < called <= seen < x[4] + x[6], (x, called, seen)
