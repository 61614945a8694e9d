"""The TTS sanitizer: what it removes and spells out, and that streaming in
any pieces gives exactly the whole-text result."""

from __future__ import annotations

import re

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from yap_core.sanitizer import MAX_HELD, StreamSanitizer, sanitize

# Characters the output must never contain: each is removed or spelled out.
FORBIDDEN = set("*`#<>[]_|\\^{}%&@+=~$€£¥°…\ufffd")
EMOJI = re.compile("[\U0001F000-\U0001FAFF\u2600-\u27BF\u2300-\u23FF\u2B00-\u2BFF\u200d\ufe0f]")

# An alphabet rich in everything the rules look at, plus plain text.
MARKUP = list("*`#-+=<>[]()!&;°CF$€0123456789.,…~_|\\^{}%@ \n\t") + [
    "😀", "👍🏽", "\u200d", "\ufe0f", "a", "b", "x", "/", ":", "amp", "nbsp", "**", "```py\n",
    "<b>", "</b>", "[t](u)", "![a](b)", "*nods*", "&amp;", "## ", "\n- ", "\n> ", "...", "°C",
    "-" * 20, "*" * 17, "$" + "9" * 30, "1,000", "[" + "x" * 120,
]
texts = st.one_of(
    st.lists(st.sampled_from(MARKUP), max_size=60).map("".join),
    st.text(max_size=80),
)


def stream(text: str, cuts: list[int]) -> str:
    s = StreamSanitizer()
    out, prev = [], 0
    for cut in sorted(set(c for c in cuts if 0 < c < len(text))):
        out.append(s.feed(text[prev:cut]))
        assert s.held <= MAX_HELD  # only a bounded, undecided tail waits
        prev = cut
    out.append(s.feed(text[prev:]))
    out.append(s.finish())
    return "".join(out)


@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(text=texts, data=st.data())
def test_streaming_equals_whole_text_for_any_split(text: str, data: st.DataObject) -> None:
    top = max(len(text) - 1, 1)
    cuts = data.draw(st.lists(st.integers(min_value=1, max_value=top), max_size=max(len(text) // 2, 1)))
    assert stream(text, cuts) == sanitize(text)


@settings(max_examples=400, deadline=None)
@given(text=texts)
def test_output_has_no_stripped_construct(text: str) -> None:
    out = sanitize(text)
    assert not FORBIDDEN & set(out), out
    assert not EMOJI.search(out), out
    assert "  " not in out and "\n" not in out and "\t" not in out
    assert out == out.strip()
    assert "...." not in out


@settings(max_examples=200, deadline=None)
@given(text=texts)
def test_one_character_at_a_time(text: str) -> None:
    assert stream(text, list(range(len(text)))) == sanitize(text)


@pytest.mark.parametrize(
    ("raw", "spoken"),
    [
        ("Sure! *smiles warmly* Let's go.", "Sure! Let's go."),
        ("That is **really** good, __truly__.", "That is really good, truly."),
        ("## Steps\n- open it\n- close it", "Steps. open it. close it"),
        ("1. first\n2. second", "1. first. 2. second"),
        ("See [the docs](https://example.com/a_b) now", "See the docs now"),
        ("![a cat](cat.png) Nice", "a cat Nice"),
        ("Use `pip install` here", "Use pip install here"),
        ("```python\nprint(1)\n```\nDone.", "print(1) Done."),
        ("<b>bold</b> and <br/> <a href=\"x\">link</a>.", "bold and link."),
        ("Great job 👍🏽😀!", "Great job!"),
        ("It is 25°C or 77°F, about 3° off.", "It is 25 degrees Celsius or 77 degrees Fahrenheit, about 3 degrees off."),
        ("Battery at 50%.", "Battery at 50 percent."),
        ("Tom & Jerry, AT&amp;T", "Tom and Jerry, AT and T"),
        ("Mail me@example.com", "Mail me at example.com"),
        ("It costs $5.99, or €1,000.", "It costs 5.99 dollars, or 1,000 euros."),
        ("2+2=4, #1 fan, ~5 km", "2 plus 2 equals 4, number 1 fan, about 5 km"),
        ("if a < b and c > d", "if a less than b and c greater than d"),
        ("> quoted\nplain", "quoted. plain"),
        ("Well... maybe…  or.... not", "Well... maybe... or... not"),
        ("So...*sighs*. Fine", "So... Fine"),  # dots either side of a removed emote
        ("  Hello   world .  How are you ?  ", "Hello world. How are you?"),
        ("snake_case | pipes", "snake case pipes"),
        ("---\nafter the rule", "after the rule"),
        ("*unclosed asterisk", "unclosed asterisk"),
        ("5 * 3", "5 3"),
    ],
)
def test_rules(raw: str, spoken: str) -> None:
    assert sanitize(raw) == spoken
    assert stream(raw, list(range(len(raw)))) == spoken


def test_plain_text_streams_through_without_delay() -> None:
    s = StreamSanitizer()
    assert s.feed("Hello") == "Hello"
    assert s.feed(" there ") == " there"  # a trailing space waits for the next word
    assert s.feed("friend.") == " friend"  # a dot waits: it may become "..."
    assert s.finish() == "."


def test_held_text_is_bounded_by_the_lookahead() -> None:
    s = StreamSanitizer()
    # An opening bracket that never closes: text is released once the link
    # lookahead is exhausted, not held for the rest of the reply.
    out = s.feed("[" + "word " * 200)
    assert s.held <= MAX_HELD
    assert len(out) > 500
    s2 = StreamSanitizer()
    out2 = "".join(s2.feed(p) for p in ["*this ", "is a ", "very long line " * 10])
    assert s2.held <= MAX_HELD and "this is a very long line" in out2


def test_emote_waits_only_until_it_closes() -> None:
    s = StreamSanitizer()
    assert s.feed("Okay *laughs") == "Okay"
    assert s.held == len("*laughs")
    assert s.feed("* sure") == " sure"
    assert s.held == 0
    assert s.finish() == ""


def test_real_token_stream_of_a_markdown_reply(smollm2_tokenizer) -> None:
    tok = smollm2_tokenizer
    reply = (
        "Sure! *smiles* Here's how:\n\n## Steps\n1. Preheat to 200°C.\n- Mix **2 cups** & 50% sugar...\n"
        "See [the recipe](https://example.com/r?id=5) 😀 or <i>call</i> me@home for $5.99!"
    )
    ids = tok.encode(reply, add_special_tokens=False)
    s, out, prev = StreamSanitizer(), [], ""
    for n in range(1, len(ids) + 1):
        text = tok.decode(ids[:n])
        if text.endswith("\ufffd"):
            continue  # an incomplete UTF-8 character: engines wait for the rest
        out.append(s.feed(text[len(prev):]))
        prev = text
    out.append(s.finish())
    assert "".join(out) == sanitize(reply) == (
        "Sure! Here's how: Steps. 1. Preheat to 200 degrees Celsius. Mix 2 cups and 50 percent sugar... "
        "See the recipe or call me at home for 5.99 dollars!"
    )
