"""Make a chat reply speakable: the output sanitizer for text-to-speech.

Two stages, both character-driven so that the result never depends on how the
reply was split into tokens (``feed`` piece by piece then ``finish`` equals
``sanitize`` of the whole):

1. A lexer over the raw text. At each position one rule decides what the
   construct there becomes (removed, spelled out, kept), or says it needs more
   characters; then it waits for the next piece. Only that undecided tail is
   held, and every rule looks ahead a bounded number of characters, so the
   held text is bounded (``MAX_HELD``) and the work per piece is amortised
   O(new text).
2. A whitespace normaliser over the lexer's output: runs of whitespace become
   one space (a line break after a word becomes a sentence break), no space
   before , ; : ! ? or ., no leading or trailing space, and runs of dots or
   ellipsis characters become "..." (three or more) or stay as they are.

What it does (docs/prompts-and-sanitizer.md has the table):
- removed: emotes in single asterisks (``*smiles*``), bold/italic markers,
  backticks and code-fence language tags, heading marks, list bullets,
  block quotes, horizontal rules, HTML tags (a space), emoji and their joiners,
  and the characters ``_ | \\ ^ { } [ ]`` (brackets of a markdown link keep
  the link text and drop the URL);
- spelled out: ``%`` percent, ``°C``/``°F``/``°`` degrees, ``&`` and (and the
  common HTML entities), ``@`` at, ``+`` plus, ``=`` equals, ``<`` less than,
  ``>`` greater than, ``~5`` about 5, ``#5`` number 5, ``$5``/``€5``/``£5``/
  ``¥5`` 5 dollars/euros/pounds/yen.
"""

from __future__ import annotations

import re
from collections.abc import Callable

__all__ = ["MAX_HELD", "StreamSanitizer", "sanitize"]

# Lookahead bounds: how far a rule may wait for the character that decides it.
EMOTE_MAX = 60  # *waves hello*
LINK_TEXT_MAX = 100  # [text](
URL_MAX = 200  # (https://...)
TAG_MAX = 64  # <span class="x">
ENTITY_MAX = 8  # &nbsp;
FENCE_LANG_MAX = 20  # ```python
NUMBER_MAX = 24  # $1,000,000.00
RUN_MAX = 16  # *** or ---: a longer run is cut in runs of this length
# The most raw text held back at any time (the longest lookahead above).
MAX_HELD = LINK_TEXT_MAX + URL_MAX + 4

_CURRENCY = {"$": " dollars", "€": " euros", "£": " pounds", "¥": " yen"}
_ENTITIES = {
    "amp": " and ", "lt": " less than ", "gt": " greater than ", "quot": '"',
    "apos": "'", "#39": "'", "nbsp": " ",
}
_SIMPLE = {
    "%": " percent ", "@": " at ", "…": "...", "_": " ", "|": " ",
    "\\": "", "^": "", "{": "", "}": "", "[": "", "]": "",
    "\t": " ", "\r": " ", "\u200d": "", "\ufe0f": "", "\ufffd": "", "\ufe0e": "", "\u20e3": "",
}
_LINE_BULLETS = "-+"
_NUMBER = re.compile(r"[0-9]+(?:,[0-9]{3})*(?:\.[0-9]+)?")
_ENTITY = re.compile(r"&([A-Za-z]{2,6}|#[0-9]{1,4});")
_TAG = re.compile(r"</?[A-Za-z][A-Za-z0-9-]*(?:\s[^<>\n]*)?/?>")
_TAG_PREFIX = re.compile(r"/?(?:[A-Za-z][A-Za-z0-9-]*(?:\s[^<>\n]*)?/?)?")
_WORD = re.compile(r"[A-Za-z0-9_+#.-]*")


def _is_emoji(c: str) -> bool:
    o = ord(c)
    return (
        0x1F000 <= o <= 0x1FAFF  # emoticons, pictographs, flags, skin tones
        or 0x2600 <= o <= 0x27BF  # misc symbols, dingbats
        or 0x2300 <= o <= 0x23FF  # watch, hourglass, play buttons
        or 0x2B00 <= o <= 0x2BFF  # stars, arrows
        or 0xE0000 <= o <= 0xE007F  # flag tags
        or o in (0x203C, 0x2049, 0x2122, 0x2139, 0x3030, 0x303D, 0x3297, 0x3299, 0xA9, 0xAE)
    )


# A rule gets (text, i, final, line_start) and returns (consumed, output) or
# None when the characters that decide it have not arrived yet. With
# final=True it must decide.
Step = tuple[int, str] | None


class StreamSanitizer:
    """Sanitize a reply as it streams: ``feed`` each piece, then ``finish``."""

    __slots__ = ("_buf", "_line_start", "_space", "_newline", "_dots", "_tail_dots", "_started", "_last")

    def __init__(self) -> None:
        self._buf = ""
        self._line_start = True
        # normaliser state
        self._space = False
        self._newline = False
        self._dots = 0
        self._tail_dots = 0  # dots at the end of what was already emitted
        self._started = False
        self._last = ""

    @property
    def held(self) -> int:
        """Raw characters held back, waiting for what decides them."""
        return len(self._buf)

    def feed(self, text: str) -> str:
        self._buf += text
        return self._normalise(self._lex(final=False))

    def finish(self) -> str:
        out = self._normalise(self._lex(final=True))
        if self._dots:
            out += self._flush_dots()
        self._space = self._newline = False
        return out

    # --- stage 1: lexer -----------------------------------------------------

    def _lex(self, final: bool) -> str:
        buf, i, out = self._buf, 0, []
        n = len(buf)
        while i < n:
            plain = _PLAIN.match(buf, i)
            if plain is not None:
                # Most of a reply: passed as it is, in one step rather than per character.
                run = plain.group()
                out.append(run)
                i = plain.end()
                if not run.isspace():
                    self._line_start = False
                continue
            c = buf[i]
            rule = _RULES.get(c)
            if rule is None:
                if c in _SIMPLE:
                    out.append(_SIMPLE[c])
                elif _is_emoji(c):
                    pass
                elif c == "\n":
                    out.append("\n")
                    i += 1
                    self._line_start = True
                    continue
                elif c.isspace():
                    out.append(" ")
                elif c.isprintable():
                    out.append(c)
                i += 1
                if not c.isspace():
                    self._line_start = False
                continue
            step = rule(buf, i, final, self._line_start)
            if step is None:
                break
            used, text = step
            if used < 0:
                # A rewrite: the construct at i becomes ``text`` and is lexed again.
                buf = buf[:i] + text + buf[i - used :]
                n = len(buf)
                continue
            out.append(text)
            i += used
            self._line_start = False
        self._buf = buf[i:]
        return "".join(out)

    # --- stage 2: whitespace and dots ------------------------------------------

    def _flush_dots(self) -> str:
        # Dots separated only by removed text join the dots already emitted
        # (the space between was dropped): the run still ends as "." to "...".
        total = self._tail_dots + self._dots
        run = "..." if total >= 3 else "." * total
        out = run[self._tail_dots :]
        self._tail_dots = len(run)
        self._dots = 0
        self._last = "."
        self._started = True
        return out

    def _normalise(self, text: str) -> str:
        out: list[str] = []
        for c in text:
            if c == ".":
                self._space = self._newline = False
                self._dots += 1
                continue
            if self._dots:
                out.append(self._flush_dots())
            if c == " " or c == "\n":
                self._space = True
                if c == "\n":
                    self._newline = True
                continue
            if c in ",;:!?":
                self._space = self._newline = False
            elif self._space:
                if self._started:
                    if self._newline and self._last.isalnum():
                        out.append(".")
                    out.append(" ")
                self._space = self._newline = False
            out.append(c)
            self._last = c
            self._tail_dots = 0
            self._started = True
        return "".join(out)


# --- lexer rules ---------------------------------------------------------------


def _run(buf: str, i: int, ch: str) -> int:
    """Length of the run of ``ch`` at i, at most RUN_MAX (so a rule decides
    within a bounded lookahead: a run that reaches RUN_MAX is complete)."""
    j, end = i, min(len(buf), i + RUN_MAX)
    while j < end and buf[j] == ch:
        j += 1
    return j - i


def _open_run(buf: str, i: int, run: int) -> bool:
    """The run reaches the end of the text so far and could still grow."""
    return i + run == len(buf) and run < RUN_MAX


def _asterisk(buf: str, i: int, final: bool, line_start: bool) -> Step:
    run = _run(buf, i, "*")
    if _open_run(buf, i, run) and not final:
        return None
    if run > 1 or i + run == len(buf) or buf[i + 1].isspace():
        return run, ""  # bold/italic marker, bullet, or a stray operator
    # A single * before a word: an emote if it closes on the same line, soon.
    limit = min(len(buf), i + 1 + EMOTE_MAX)
    close = buf.find("*", i + 1, limit)
    newline = buf.find("\n", i + 1, limit if close < 0 else close)
    if close >= 0 and newline < 0:
        return close + 1 - i, " "
    if newline >= 0 or limit == i + 1 + EMOTE_MAX or final:
        return 1, ""
    return None


def _backtick(buf: str, i: int, final: bool, line_start: bool) -> Step:
    run = _run(buf, i, "`")
    if _open_run(buf, i, run) and not final:
        return None
    if run < 3:
        return run, ""
    # A fence: drop the language tag after it too.
    m = _WORD.match(buf, i + run, i + run + FENCE_LANG_MAX + 1)
    end = m.end() if m else i + run
    if end == len(buf) and not final and end - i - run <= FENCE_LANG_MAX:
        return None
    return end - i, " "


def _hash(buf: str, i: int, final: bool, line_start: bool) -> Step:
    run = _run(buf, i, "#")
    if i + run == len(buf):
        return None if not final else (run, "")
    return run, " number " if buf[i + run].isdigit() else " "


def _dash_like(ch: str, word: str) -> Callable[[str, int, bool, bool], Step]:
    """'-', '+' and '=': bullets at line start, rules when three or more."""

    def rule(buf: str, i: int, final: bool, line_start: bool) -> Step:
        run = _run(buf, i, ch)
        if _open_run(buf, i, run) and not final:
            return None
        if run >= 3:
            return run, " "
        nxt = buf[i + run] if i + run < len(buf) else ""
        if line_start and ch in _LINE_BULLETS and run == 1 and (nxt == "" or nxt.isspace()):
            return 1, " "
        if ch == "-":
            return run, "-" if run == 1 else " - "
        return run, word * run if ch == "+" else word  # "C++", but "==" is one equals

    return rule


def _angle_open(buf: str, i: int, final: bool, line_start: bool) -> Step:
    m = _TAG.match(buf, i, min(len(buf), i + TAG_MAX))
    if m:
        return m.end() - i, " "
    # Undecided while what follows could still become a tag.
    rest = buf[i + 1 : i + TAG_MAX]
    could_be_tag = len(buf) - i < TAG_MAX and _TAG_PREFIX.fullmatch(rest) is not None
    if could_be_tag and not final:
        return None
    return 1, " less than "


def _angle_close(buf: str, i: int, final: bool, line_start: bool) -> Step:
    return 1, " " if line_start else " greater than "


def _bracket(buf: str, i: int, final: bool, line_start: bool) -> Step:
    """[text](url) becomes text; anything else just loses the bracket."""
    limit = min(len(buf), i + 1 + LINK_TEXT_MAX)
    close = -1
    for j in range(i + 1, limit):
        if buf[j] in "[\n":
            return 1, ""
        if buf[j] == "]":
            close = j
            break
    if close < 0:
        return None if limit == len(buf) and limit < i + 1 + LINK_TEXT_MAX and not final else (1, "")
    if close + 1 == len(buf):
        return None if not final else (1, "")
    if buf[close + 1] != "(":
        return 1, ""
    ulimit = min(len(buf), close + 2 + URL_MAX)
    for j in range(close + 2, ulimit):
        if buf[j] == ")":
            # Rewrite: the link text replaces the whole link, and is lexed again.
            return -(j + 1 - i), buf[i + 1 : close]
        if buf[j].isspace():
            return 1, ""
    if ulimit == len(buf) and ulimit < close + 2 + URL_MAX and not final:
        return None
    return 1, ""


def _bang(buf: str, i: int, final: bool, line_start: bool) -> Step:
    """'![alt](src)': an image; the '!' goes, the link rule keeps the alt text."""
    if i + 1 == len(buf):
        return None if not final else (1, "!")
    return 1, "" if buf[i + 1] == "[" else "!"


def _amp(buf: str, i: int, final: bool, line_start: bool) -> Step:
    m = _ENTITY.match(buf, i)
    if m:
        return m.end() - i, _ENTITIES.get(m.group(1).lower(), " ")
    if not final and len(buf) - i <= ENTITY_MAX and re.fullmatch(r"&#?[A-Za-z0-9]*", buf[i : i + ENTITY_MAX + 1]):
        return None
    return 1, " and "


def _degree(buf: str, i: int, final: bool, line_start: bool) -> Step:
    if i + 2 >= len(buf) and not final:
        return None
    unit = buf[i + 1] if i + 1 < len(buf) else ""
    after = buf[i + 2] if i + 2 < len(buf) else ""
    if unit in "CF" and unit and not after.isalpha():
        return 2, " degrees Celsius " if unit == "C" else " degrees Fahrenheit "
    return 1, " degrees "


def _currency(buf: str, i: int, final: bool, line_start: bool) -> Step:
    if i + 1 == len(buf) and not final:
        return None
    window = i + 1 + NUMBER_MAX
    m = _NUMBER.match(buf, i + 1, window)
    if not m:
        return 1, " "
    end = m.end()
    # The number may still go on (",000", ".5"): four more characters, or
    # the end of the window, decide.
    if not final and len(buf) - end < 4 and len(buf) < window:
        return None
    return end - i, m.group(0) + _CURRENCY[buf[i]] + " "


def _tilde(buf: str, i: int, final: bool, line_start: bool) -> Step:
    if i + 1 == len(buf) and not final:
        return None
    return 1, " about " if i + 1 < len(buf) and buf[i + 1].isdigit() else " "


_RULES: dict[str, Callable[[str, int, bool, bool], Step]] = {
    "*": _asterisk,
    "`": _backtick,
    "#": _hash,
    "-": _dash_like("-", "-"),
    "+": _dash_like("+", " plus "),
    "=": _dash_like("=", " equals "),
    "<": _angle_open,
    ">": _angle_close,
    "[": _bracket,
    "!": _bang,
    "&": _amp,
    "°": _degree,
    "~": _tilde,
    **{c: _currency for c in _CURRENCY},
}

# Printable ASCII that no rule and no substitution touches (space included):
# the lexer copies a run of it as it is.
_PLAIN = re.compile(
    "[" + re.escape("".join(c for c in map(chr, range(0x20, 0x7F)) if c not in _RULES and c not in _SIMPLE)) + "]+"
)


def sanitize(text: str) -> str:
    """The whole-text form: the same as streaming ``text`` in any pieces."""
    s = StreamSanitizer()
    return s.feed(text) + s.finish()
