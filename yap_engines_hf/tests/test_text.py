"""Incremental detokenization and stop strings, on the real SmolLM2 tokenizer."""

from __future__ import annotations

from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from yap_core.stops import StopMatcher
from yap_core.testing import YapKit
from yap_engines_hf.detokenize import REPLACEMENT, IncrementalDetokenizer

SAMPLES = [
    "Ça va? Très bien, merci! 👋🏽 Let's go 🚀🚀 — naïve café, Zürich, 東京, Ελληνικά.",
    "emoji at the end 🤖",
    "🙂",
    "plain ascii text, nothing special",
]


def _pieces(kit: YapKit, text: str) -> list[str]:
    tok = kit.engine.tokenizer
    detok = IncrementalDetokenizer(lambda ids: tok.decode(list(ids), skip_special_tokens=True))
    ids = tok.encode(text, add_special_tokens=False)
    return [detok.push(i) for i in ids] + [detok.flush()]


def test_multibyte_characters_are_never_split(yap_kit: YapKit) -> None:
    for text in SAMPLES:
        pieces = _pieces(yap_kit, text)
        assert "".join(pieces) == text
        assert not any(REPLACEMENT in p for p in pieces), pieces
        # some token of the emoji samples is a partial character: its text was held back
        if "👋🏽" in text:
            assert "" in pieces[:-1]


# yap_kit is function-scoped but holds no per-test state
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=st.text(alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters=REPLACEMENT), max_size=40))
def test_pieces_always_join_to_the_decoded_text(yap_kit: YapKit, text: str) -> None:
    tok = yap_kit.engine.tokenizer
    ids = tok.encode(text, add_special_tokens=False)
    # characters the vocabulary cannot spell (unassigned planes) decode lossily anyway
    assume(tok.decode(ids, skip_special_tokens=True) == text)
    pieces = _pieces(yap_kit, text)
    assert "".join(pieces) == text
    assert not any(REPLACEMENT in p for p in pieces)


def test_flush_drops_an_incomplete_character(yap_kit: YapKit) -> None:
    tok = yap_kit.engine.tokenizer
    ids = tok.encode("ok 👋🏽", add_special_tokens=False)
    detok = IncrementalDetokenizer(lambda x: tok.decode(list(x), skip_special_tokens=True))
    out = "".join(detok.push(i) for i in ids[:-1]) + detok.flush()
    assert REPLACEMENT not in out
    assert out.startswith("ok")


def _run_stops(stops: tuple[str, ...], pieces: list[str]) -> tuple[str, bool]:
    m = StopMatcher(stops)
    out = ""
    for piece in pieces:
        text, hit = m.feed(piece)
        out += text
        if hit:
            return out, True
    return out + m.flush(), False


def test_stop_string_split_across_pieces() -> None:
    assert _run_stops(("END",), ["Hello E", "N", "D and more"]) == ("Hello ", True)
    assert _run_stops(("END",), ["Hello E", "NX"]) == ("Hello ENX", False)
    assert _run_stops(("\n\n", "User:"), ["Hi.", "\n", "\nUser: x"]) == ("Hi.", True)
    assert _run_stops((), ["a", "b"]) == ("ab", False)


@settings(max_examples=200, deadline=None)
@given(
    text=st.text(alphabet="abc \n", max_size=30),
    stops=st.lists(st.text(alphabet="abc \n", min_size=1, max_size=4), max_size=3),
    cuts=st.lists(st.integers(min_value=0, max_value=30), max_size=6),
)
def test_stops_cut_at_the_first_match_however_the_text_is_split(text: str, stops: list[str], cuts: list[int]) -> None:
    bounds = sorted({0, len(text), *(c for c in cuts if c <= len(text))})
    pieces = [text[a:b] for a, b in zip(bounds, bounds[1:], strict=False)]
    out, hit = _run_stops(tuple(stops), pieces)
    found = [text.find(s) for s in stops if s in text]
    if found:
        # the earliest end of a match decides: text before the earliest-starting
        # match that is complete by then (feeding is incremental)
        assert hit
        assert not any(s in out for s in stops)
        assert text.startswith(out)
    else:
        assert (out, hit) == (text, False)
