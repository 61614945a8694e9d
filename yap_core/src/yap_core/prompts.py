"""Prompt building: system prompt, history trimming and token budgets.

The prompt is rendered with the chat model's own chat template, as
``[system, *history, user]``. Its token ids are built segment by segment: the
template is rendered once per conversation *shape* (the tuple of roles) with
placeholder contents, which gives the text the template puts around each
message; a segment is one message's content followed by the template text up
to the next content. Segments are tokenized separately and cached, so

- a turn only tokenizes what is new (the utterance, the last reply), and
- the ids of turn N (generation prompt included) are, by construction, a prefix
  of the ids of turn N+1: the engine's prefix cache hits.

When every template text after a content starts with a special token (true of
ChatML, Llama 3 and most templates), a content and its template text are
tokenized apart, since the tokenizer splits at special tokens anyway: the
system prompt counted at ``start`` is then not tokenized again for the turn.

The assembled text must equal the real template's rendering byte for byte.
That is proven once per template when it can be: a static analysis of the
template's Jinja syntax tree (``chat_template_proof.prints_contents_verbatim``) shows that a
message's content only ever flows into the output as it is (possibly joined
with ``+``/``~``, or through ``trim``, a no-op on our stripped contents), never
into a condition, a call, an index or another filter, and that nothing else in
the template varies between renders (no ``strftime_now``, no ``random``). Its
output is then a function of the roles alone with the contents printed in
between: the skeleton, with the contents put back, *is* the real rendering,
and a turn does not render the template at all. Any other template (one that
splits or tests contents, as Qwen3's does with ``</think>``, or reads the
clock) is rendered every turn with the real contents and compared with the
assembled text. A template that treats contents specially (or a tokenizer
that is not concatenation-safe, checked once at construction) is tokenized as
a whole instead, which is correct but loses the by-construction prefix
property. All methods are synchronous and pure CPU: the server runs them in a
thread, or on the event loop when ``cheap``.
"""

from __future__ import annotations

import logging
import re
import threading
from collections import OrderedDict
from collections.abc import Callable, Sequence
from typing import Generic, TypeVar

from yap_core.chat_template_proof import prints_contents_verbatim
from yap_core.contracts import ChatTokenizer
from yap_core.personas import Personas
from yap_core.pieces import PieceCache
from yap_core.prompt_types import Message, PromptError, RenderedPrompt
from yap_core.settings import CoreSettings

__all__ = ["Message", "Personas", "PromptBuilder", "PromptError", "RenderedPrompt"]

# New text (not yet tokenized) up to which a render may run on the event loop:
# ~0.1 ms of tokenizer work, less than a hop to a worker thread and back costs.
INLINE_NEW_CHARS = 1000

# Pieces of a text the piece cache may encode one by one (each a tokenizer
# call) before the text is encoded whole instead.
NEW_PIECES = 3

log = logging.getLogger(__name__)

# A history message as rendered: role, content (cleaned), the content's ids.
_Msg = tuple[str, str, tuple[int, ...]]

K = TypeVar("K")
V = TypeVar("V")

# Private-use characters: no chat template emits them, so they mark where each
# content sits in a rendered skeleton.
_OPEN, _CLOSE = "\ue000", "\ue001"
_PROBE = (("system", "Be brief."), ("user", "Hello there!"), ("assistant", "Hi. 12 apples?"),
          ("user", "  naïve café, 3.5%\nok"))


class _LRU(Generic[K, V]):
    """A small thread-safe LRU: sessions render concurrently in worker threads.

    Only ``put`` (insert, then evict) takes the lock. ``get`` is on every
    turn's hot path, dozens of times, and needs none: ``OrderedDict.get`` and
    ``move_to_end`` are single C calls, atomic under the GIL for our str and
    tuple-of-str keys; an entry another thread evicts between the two is
    still returned, just not moved."""

    def __init__(self, size: int) -> None:
        self._size = size
        self._data: OrderedDict[K, V] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: K) -> V | None:
        value = self._data.get(key)
        if value is not None:
            try:
                self._data.move_to_end(key)
            except KeyError:  # evicted by another thread in between
                pass
        return value

    def __contains__(self, key: K) -> bool:
        return key in self._data  # a dict lookup is atomic; no reordering

    def put(self, key: K, value: V) -> None:
        with self._lock:
            self._data[key] = value
            self._data.move_to_end(key)
            while len(self._data) > self._size:
                self._data.popitem(last=False)


class _Assembled:
    """One rendering: its text, ids, and the token length of each segment.

    A segment-wise rendering keeps its pieces (contents and template texts,
    chunks of ids) and joins them on first use: ``_fit`` may try a longer
    history first and keep a shorter one, and only ``length`` is needed to
    judge."""

    __slots__ = ("length", "seg_lens", "_text", "_ids", "_conv", "_wrappers", "_chunks")

    def __init__(
        self,
        text: str | None,
        ids: tuple[int, ...] | None,
        seg_lens: list[int] | None,
        *,
        conv: list[tuple[str, str]] | None = None,
        wrappers: tuple[str, ...] = (),
        chunks: list[tuple[int, ...]] | None = None,
    ) -> None:
        self._text, self._ids = text, ids
        self._conv, self._wrappers, self._chunks = conv, wrappers, chunks
        # seg_lens[0]: template header; seg_lens[k]: message k-1 (system first)
        # with the template text that follows it. None: tokenized as a whole.
        self.seg_lens = seg_lens
        self.length = len(ids) if ids is not None else sum(seg_lens or ())

    @property
    def text(self) -> str:
        if self._text is None:
            assert self._conv is not None
            self._text = _fill(self._conv, self._wrappers)
        return self._text

    @property
    def ids(self) -> tuple[int, ...]:
        if self._ids is None:
            joined: list[int] = []
            for chunk in self._chunks or ():
                joined += chunk  # copies in C: Python work per chunk, not per token
            self._ids = tuple(joined)
        return self._ids


class _Prepared:
    """A session's next prompt without its utterance (``PromptBuilder.prepare``):
    the ids and text before the utterance, joined, and the template text after
    it. Valid for any history whose newest messages are ``seen``: the ones
    the budget walk looked at (``_recent``), with the one that stopped it; or,
    when nothing stopped it (``whole``), exactly that history. Older messages
    cannot change the prompt. An empty history is valid for every session
    that shares the system prompt."""

    __slots__ = ("seen", "whole", "head_ids", "head_text", "tail_ids", "tail_text", "length", "kept")

    def __init__(self, seen: tuple[Message, ...], whole: bool, built: _Assembled, kept: int) -> None:
        assert built.seg_lens is not None and built._chunks is not None and built._conv is not None
        self.seen, self.whole, self.kept = seen, whole, kept
        chunks = built._chunks  # [template header, content, text after it, ..., utterance (empty), text after]
        head: list[int] = []
        for chunk in chunks[:-2]:
            head += chunk
        self.head_ids, self.tail_ids = tuple(head), chunks[-1]
        self.head_text = _fill(built._conv[:-1], built._wrappers[:-1])
        self.tail_text = built._wrappers[-1]
        self.length = len(self.head_ids) + len(self.tail_ids)

    def fits(self, history: Sequence[Message]) -> bool:
        """Is this the prompt of ``history`` (up to the utterance)? Its newest
        messages are compared with ``seen``: by identity for a session's own
        (0.35 us for 60 messages), by role and content for another list, as
        from a client that sends the whole history with each ``start``
        (0.85 us): Message is a frozen Struct with a C ``==``."""
        n = len(self.seen)
        if len(history) < n or (self.whole and len(history) != n):
            return False
        return self.seen == tuple(history[len(history) - n :])


class PromptBuilder:
    def __init__(
        self,
        tokenizer: ChatTokenizer,
        settings: CoreSettings,
        max_model_len: int,
        personas: Personas,
        *,
        cache_size: int = 8192,
        prepared_size: int = 512,
    ) -> None:
        self._tok = tokenizer
        self._encode, self.rust_encode = _encoder(tokenizer)
        # Known pieces of ASCII text: an utterance of known words is encoded
        # without a tokenizer call (see pieces.py).
        self.pieces = PieceCache.for_tokenizer(tokenizer, self._encode)
        # The last text cheap_system_prompt found the pieces could not serve:
        # the thread that then counts it goes straight to the tokenizer.
        self._pieces_missed: str | None = None
        self._settings = settings
        self.max_model_len = max_model_len
        self._personas = personas
        self._ids_cache: _LRU[str, tuple[int, ...]] = _LRU(cache_size)
        # raw content -> as rendered: a turn looks at every content several times
        # (inline check, history budget, render), and again on every later turn
        self._cleaned: _LRU[str, str] = _LRU(cache_size)
        self._skeletons: _LRU[tuple[str, ...], tuple[str, ...] | tuple[()]] = _LRU(256)
        self._skeleton_ids: _LRU[tuple[str, ...], tuple[tuple[int, ...], ...]] = _LRU(256)
        # Each session's next prompt, from prepare() and prefix():
        # (system prompt as rendered, last two contents) -> entry
        self._prepared: _LRU[tuple[str, str | None, str | None], _Prepared] = _LRU(prepared_size)
        # Contents must not smuggle control tokens (a user typing "<|im_end|>"
        # would otherwise open a fake system turn): they are removed.
        specials = sorted(getattr(tokenizer, "all_special_tokens", None) or [], key=len, reverse=True)
        self._specials = re.compile("|".join(map(re.escape, specials))) if specials else None
        self.segmented = self._concatenation_safe()
        self.split_contents = self.segmented and self._split_safe()
        # The template proven to print contents verbatim (None: not proven, and
        # every turn renders the real template to compare).
        self._proven: str | None = self._prove_template() if self.segmented else None
        log.info(
            "prompt builder: segment-wise ids %s, contents tokenized apart %s, Rust encode %s, "
            "template proven content-blind %s, ASCII piece cache %s",
            self.segmented,
            self.split_contents,
            self.rust_encode,
            self._proven is not None,
            self.pieces is not None,
        )
        if not self.segmented:
            log.warning(
                "chat tokenizer is not concatenation-safe: prompts are tokenized whole "
                "(correct, but token-level prefix stability is not guaranteed)"
            )

    # --- public API ------------------------------------------------------------

    def system_prompt(self, chat_prompt: str | None, personality: str | None, gender: str | None) -> str:
        """The session's system prompt: ``chat_prompt`` when given and not
        blank, else the persona; refused past CHAT_PROMPT_MAX_TOKENS."""
        if chat_prompt is not None and self._clean(chat_prompt):
            text, field = self._clean(chat_prompt), "payload.chat_prompt"
        else:
            text, field = self._personas.compose(personality, gender), "payload.personality"
        n = len(self._ids(text))
        limit = self._settings.chat_prompt_max_tokens
        if n > limit:
            raise PromptError("invalid_payload", field, f"system prompt is {n} tokens; the limit is {limit}")
        return text

    def render(self, system: str, history: Sequence[Message], user_text: str, max_out: int) -> RenderedPrompt:
        """The prompt for one turn, trimmed to the budgets."""
        return self._render(system, history, user_text, max_out, self._prepared_for(system, history))

    def render_inline(
        self, system: str, history: Sequence[Message], user_text: str, max_out: int
    ) -> RenderedPrompt | None:
        """``render``, when that is little enough work for the event loop (see
        ``cheap``); None otherwise, and the caller renders in a thread."""
        inline, ready = self._inline(system, history, user_text)
        return self._render(system, history, user_text, max_out, ready) if inline else None

    def cheap(self, system: str, history: Sequence[Message], user_text: str) -> bool:
        """Is rendering this turn little enough work for the event loop? True
        when the next prompt was prepared (see ``prepare``), or every earlier
        content is tokenized already (see ``remember``), and the utterance is
        short; the caller otherwise renders in a thread.
        Only new tokenization counts: the Rust tokenizer releases the GIL, so a
        thread helps there. The rest (the template render, ~0.1 ms per 1,000
        characters of conversation) is pure Python holding the GIL: in a thread
        it would stall the loop just the same, plus the hop."""
        return self._inline(system, history, user_text)[0]

    def _inline(self, system: str, history: Sequence[Message], user_text: str) -> tuple[bool, _Prepared | None]:
        """``cheap``'s answer, and the prepared prompt it found (looked up once a turn)."""
        if not self.split_contents or len(user_text) > INLINE_NEW_CHARS:
            return False, None
        ready = self._prepared_for(system, history)
        if ready is not None:
            return True, ready
        cache = self._ids_cache
        return self._clean(system) in cache and all(self._clean(m.content) in cache for m in history), None

    def _render(
        self, system: str, history: Sequence[Message], user_text: str, max_out: int, ready: _Prepared | None
    ) -> RenderedPrompt:
        user = self._clean(user_text)
        if not user:
            raise PromptError("invalid_payload", "payload.user_utterance", "user_utterance is empty")
        user, ids = self._cap_user(user)
        # The history prepare() kept fits HISTORY_MAX_TOKENS whatever the
        # utterance, and the context with no utterance and no reply. Each
        # longer history failed one of the two, and would fail again with
        # them: so it is what _fit would keep, if it still fits the context.
        if ready is not None and ready.length + len(ids) <= self.max_model_len - max_out:
            return RenderedPrompt(
                token_ids=ready.head_ids + ids + ready.tail_ids,
                text=ready.head_text + user + ready.tail_text,
                history_used=ready.kept,
                user_tokens=len(ids),
            )
        built, kept = self._fit(system, history, user, max_out)
        return RenderedPrompt(token_ids=built.ids, text=built.text, history_used=kept, user_tokens=len(ids))

    def cheap_system_prompt(self, chat_prompt: str | None) -> bool:
        """Is ``system_prompt`` for this chat prompt little enough work for the
        event loop? True when it was counted before, or when the piece cache
        gives its ids with at most ``NEW_PIECES`` new pieces (kept, so
        ``system_prompt`` only looks them up): pure Python that a thread would
        not take off the loop (see ``cheap``), and the hop to one cost ~0.17 ms
        after a pause (dev box). False when the tokenizer must encode it whole.
        Persona prompts are small templates: always cheap."""
        if chat_prompt is None or not chat_prompt.strip() or len(chat_prompt) <= INLINE_NEW_CHARS:
            return True
        text = self._clean(chat_prompt)
        if text in self._ids_cache:
            return True
        ids = self.pieces.ids(text, NEW_PIECES) if self.pieces is not None else None
        if ids is None:
            self._pieces_missed = text
            return False
        self._ids_cache.put(text, ids)
        return True

    def remember(self, texts: Sequence[str]) -> None:
        """Tokenize contents the next turn will need (the reply just given),
        ahead of time, so that turn renders without tokenizing them."""
        for text in texts:
            cleaned = self._clean(text)
            if self.pieces is not None:
                # First: learning encodes the text whole once (its check), and
                # the ids below then come from the pieces, not a second encode.
                self.pieces.learn(cleaned)
            self._ids(cleaned)

    def prepare(self, system: str, history: Sequence[Message], added: Sequence[str]) -> int:
        """The next turn's work that does not need its utterance, done in the
        pause before it (a thread, after a turn): tokenize the contents this
        turn ``added`` to ``history`` (see ``remember``), build the next
        turn's shape (the template rendered for one more message pair, and
        the ids of its texts), and keep the next prompt up to the utterance,
        trimmed and joined. A new shape costs a template render of the whole
        conversation (~0.45 ms at 40 messages, in a loop; sessions share
        shapes, but the first to reach a length would pay it on the turn's
        way to the engine), and trimming and joining 50 messages ~0.07 ms.
        The next ``render`` of this history then only adds the utterance.
        ``history`` must be the session's history as it stands (what it has
        not forgotten: see the return value), which only grows at its end.
        The system prompt's pieces are learned here too (once: ``learn``
        skips a text it checked): a session started with its utterance had
        no prefill to learn them, and the next session's prompt, often this
        one with another name or number, is then served by the piece cache.

        Returns how many of the oldest messages of ``history`` no later
        render can use: the budget walk (``_recent``) stopped before them, and
        a longer history stops it sooner. The session forgets them."""
        self.remember((system, *added))
        try:
            return self._fit_and_keep(system, history)[2]
        except PromptError:
            return 0  # the turn's own render reports it, to the client

    def _fit_and_keep(self, system: str, history: Sequence[Message]) -> tuple[_Assembled, int, int]:
        """``_fit`` with no utterance and no room for a reply (render() checks
        the room its turn needs), kept for the next render of this history;
        and how many of the oldest messages no render will use again."""
        msgs, span = self._recent(history, self._settings.history_max_tokens)
        built, kept = self._fit_recent(system, msgs, "", 0)
        # Only a proven template's assembly, contents tokenized apart: the
        # utterance's ids and text then slot in between, as _assemble would put them.
        if self.split_contents and built.seg_lens is not None and built._text is None:
            seen = tuple(history[len(history) - span :])
            entry = _Prepared(seen, span == len(history), built, kept)
            self._prepared.put(self._prepared_key(system, history), entry)
        return built, kept, len(history) - span

    def _prepared_key(self, system: str, history: Sequence[Message]) -> tuple[str, str | None, str | None]:
        """The system prompt and the last two contents (as a rule the last
        utterance and its reply): not the history's length, which changes when
        the session forgets what no render uses. ``fits`` checks the rest."""
        last = history[-1].content if history else None
        before = history[-2].content if len(history) > 1 else None
        return self._clean(system), last, before

    def _prepared_for(self, system: str, history: Sequence[Message]) -> _Prepared | None:
        ready = self._prepared.get(self._prepared_key(system, history))
        if ready is None or not ready.fits(history):
            return None
        if getattr(self._tok, "chat_template", None) is not self._proven:
            return None  # the template was changed since (see _assemble)
        return ready

    def prefix(self, system: str, history: Sequence[Message]) -> tuple[int, ...]:
        """Ids of the part of the next prompt already known (system, history
        and the template's opening of the user message), for engine.prefill.
        History is trimmed as ``render`` will trim it. Runs in a thread at a
        session's start: the system prompt's pieces are learned here too."""
        if self.pieces is not None:
            self.pieces.learn(system)
        # Kept for the first turn's render too, with or without a history.
        built, n, _ = self._fit_and_keep(system, history)
        if built.length > self.max_model_len - self._settings.chat_max_out:
            # The context binds: trim as a turn with a full reply would be.
            built, n = self._fit(system, history, "", self._settings.chat_max_out)
        if built.seg_lens is not None:
            return built.ids[: built.length - built.seg_lens[-1]]
        # Whole-text mode: the conversation so far, without a generation prompt.
        kept = [{"role": m.role, "content": self._clean(m.content)} for m in history[len(history) - n :]]
        text = self._template([{"role": "system", "content": system}, *kept], generation_prompt=False)
        return tuple(self._encode(text))

    # --- budgets ---------------------------------------------------------------

    def _cap_user(self, user: str) -> tuple[str, tuple[int, ...]]:
        """Keep the beginning of the utterance within USER_UTT_MAX_TOKENS; with its ids."""
        ids = self._ids(user)
        limit = self._settings.user_utt_max_tokens
        if len(ids) <= limit:
            return user, ids
        cut = limit
        while True:
            text = self._tok.decode(ids[:cut], skip_special_tokens=True)
            # A cut inside a multi-byte character decodes to U+FFFD, and the
            # cut text may re-tokenize longer: step back until it fits cleanly.
            if cut > 1 and (text.endswith("\ufffd") or len(self._ids(text.strip())) > limit):
                cut -= 1
                continue
            text = text.strip()
            return text, self._ids(text)

    def _fit(
        self, system: str, history: Sequence[Message], user: str, max_out: int
    ) -> tuple[_Assembled, int]:
        """Render, dropping the oldest whole turns until history fits
        HISTORY_MAX_TOKENS and prompt + max_out fits the context."""
        return self._fit_recent(system, self._recent(history, self._settings.history_max_tokens)[0], user, max_out)

    def _fit_recent(self, system: str, msgs: list[_Msg], user: str, max_out: int) -> tuple[_Assembled, int]:
        """``_fit`` from what ``_recent`` kept of the history."""
        system = self._clean(system)
        budget = self._settings.history_max_tokens
        starts = _turn_starts(msgs)
        context = self.max_model_len - max_out
        start = 0
        while True:
            built = self._assemble(system, msgs[start:], user)
            if self._history_tokens(built, msgs[start:]) <= budget and built.length <= context:
                return built, len(msgs) - start
            later = [s for s in starts if s > start]
            if not later:
                raise PromptError(
                    "text_too_long",
                    None,
                    f"prompt is {built.length} tokens without history; with {max_out} reply "
                    f"tokens it exceeds the model's context of {self.max_model_len}",
                )
            start = self._jump(built, start, later, budget, context)

    def _recent(self, history: Sequence[Message], budget: int) -> tuple[list[_Msg], int]:
        """The newest whole turns whose contents alone fit the budget, as
        rendered and with their ids; and how many of the newest messages
        decided that (those walked and the one that went over, or all).
        Contents are a lower bound of what the template makes of them, so
        nothing the exact check would keep is lost; a long session's old
        history is not even looked at (only the newest messages are walked)."""
        kept: list[_Msg] = []
        total = 0
        for m in reversed(history):
            content = self._clean(m.content)
            ids = self._ids(content)
            total += len(ids)
            if total > budget:
                break
            kept.append((m.role, content, ids))
        else:
            return kept[::-1], len(history)  # all of it (even a history that opens with the assistant)
        span = len(kept) + 1
        kept.reverse()
        first = next((k for k, m in enumerate(kept) if m[0] == "user"), len(kept))
        return kept[first:], span

    def _jump(self, built: _Assembled, start: int, later: list[int], budget: int, context: int) -> int:
        """The first turn start that fits, judged from this rendering's segment
        lengths (exact for the templates we know; the caller re-checks)."""
        if built.seg_lens is None:
            return later[0]
        hist = built.seg_lens[2:-1]  # msgs[start:], one segment each
        total, hist_total = built.length, sum(hist)
        for s in later:
            dropped = sum(hist[: s - start])
            if hist_total - dropped <= budget and total - dropped <= context:
                return s
        return later[-1]

    def _history_tokens(self, built: _Assembled, msgs: list[_Msg]) -> int:
        if not msgs:
            return 0
        if built.seg_lens is not None:
            return sum(built.seg_lens[2:-1])  # contents with their template text
        return sum(len(ids) for _, _, ids in msgs)  # whole-text mode: contents only

    # --- rendering -------------------------------------------------------------

    def _assemble(self, system: str, msgs: list[_Msg], user: str) -> _Assembled:
        conv = [("system", system), *((role, content) for role, content, _ in msgs), ("user", user)]
        roles = tuple(r for r, _ in conv)
        if self._proven is not None and getattr(self._tok, "chat_template", None) is self._proven:
            # The skeleton with the contents put back is the real rendering
            # (see the module docstring): no template render this turn.
            wrappers = self._skeleton(roles)
            if wrappers:
                return self._segments(conv, msgs, roles, wrappers, None)
        text = self._template([{"role": r, "content": c} for r, c in conv])
        wrappers = self._skeleton(roles) if self.segmented else ()
        if wrappers and _fill(conv, wrappers) == text:
            return self._segments(conv, msgs, roles, wrappers, text)
        return _Assembled(text, tuple(self._encode(text)), None)

    def _segments(
        self,
        conv: list[tuple[str, str]],
        msgs: list[_Msg],
        roles: tuple[str, ...],
        wrappers: tuple[str, ...],
        text: str | None,
    ) -> _Assembled:
        """The ids of each content and of the template text after it, from the
        caches; joined when used."""
        if self.split_contents:
            tails = self._wrapper_ids(roles, wrappers)
            own = [self._ids(conv[0][1]), *(ids for _, _, ids in msgs), self._ids(conv[-1][1])]
            chunks = [tails[0]]
            seg_lens = [len(tails[0])]
            for content_ids, tail in zip(own, tails[1:], strict=True):
                chunks += (content_ids, tail)
                seg_lens.append(len(content_ids) + len(tail))
        else:
            chunks = [self._ids(wrappers[0])]
            chunks += [self._ids(content + after) for (_, content), after in zip(conv, wrappers[1:], strict=True)]
            seg_lens = [len(c) for c in chunks]
        return _Assembled(text, None, seg_lens, conv=conv, wrappers=wrappers, chunks=chunks)

    def _wrapper_ids(self, roles: tuple[str, ...], wrappers: tuple[str, ...]) -> tuple[tuple[int, ...], ...]:
        """The ids of a skeleton's template texts: one lookup per turn, not one per message."""
        cached = self._skeleton_ids.get(roles)
        if cached is None:
            cached = tuple(self._ids(w) for w in wrappers)
            self._skeleton_ids.put(roles, cached)
        return cached

    def _template(self, conv: list[dict[str, str]], *, generation_prompt: bool = True) -> str:
        try:
            out = self._tok.apply_chat_template(
                conv, tokenize=False, add_generation_prompt=generation_prompt
            )
        except Exception as exc:  # jinja raises TemplateError (e.g. roles must alternate)
            raise PromptError("invalid_payload", "payload.history", f"chat template refused the history: {exc}") from exc
        if not isinstance(out, str):
            raise TypeError(f"apply_chat_template(tokenize=False) returned {type(out).__name__}, not str")
        return out

    def _skeleton(self, roles: tuple[str, ...]) -> tuple[str, ...] | tuple[()]:
        """The template text around each content for this shape: n+1 strings,
        or () when the template does not keep contents in order."""
        cached = self._skeletons.get(roles)
        if cached is not None:
            return cached
        marks = [f"{_OPEN}{i}{_CLOSE}" for i in range(len(roles))]
        rendered = self._template([{"role": r, "content": m} for r, m in zip(roles, marks, strict=True)])
        wrappers: list[str] = []
        pos = 0
        for m in marks:
            at = rendered.find(m, pos)
            if at < 0 or rendered.count(m) != 1:
                self._skeletons.put(roles, ())
                return ()
            wrappers.append(rendered[pos:at])
            pos = at + len(m)
        wrappers.append(rendered[pos:])
        if any(_OPEN in w or _CLOSE in w for w in wrappers):
            self._skeletons.put(roles, ())
            return ()
        result = tuple(wrappers)
        self._skeletons.put(roles, result)
        return result

    def _clean(self, content: str) -> str:
        """Contents as rendered: without control tokens, without outer
        whitespace (which would also blur the token boundary at their start)."""
        cleaned = self._cleaned.get(content)
        if cleaned is None:
            cleaned = content
            if self._specials is not None:
                # Until nothing is left: one pass would join "<|im_<|im_end|>end|>"
                # into a real control token (a user opening a fake system turn).
                while True:
                    once = self._specials.sub("", cleaned)
                    if once == cleaned:
                        break
                    cleaned = once
            cleaned = cleaned.strip()
            self._cleaned.put(content, cleaned)
        return cleaned

    def _ids(self, text: str) -> tuple[int, ...]:
        ids = self._ids_cache.get(text)
        if ids is None:
            tried = text == self._pieces_missed
            ids = self.pieces.ids(text, NEW_PIECES) if self.pieces is not None and not tried else None
            if ids is None:
                ids = tuple(self._encode(text))
            self._ids_cache.put(text, ids)
        return ids

    def _concatenation_safe(self) -> bool:
        """Does tokenizing segments and concatenating give the same ids as
        tokenizing the whole rendering? Checked once, on a probe conversation."""
        conv = [{"role": r, "content": c.strip()} for r, c in _PROBE]
        text = self._template(conv)
        wrappers = self._skeleton(tuple(r for r, _ in _PROBE))
        if not wrappers:
            return False
        segments = [wrappers[0]] + [m["content"] + wrappers[i + 1] for i, m in enumerate(conv)]
        if "".join(segments) != text:
            return False
        joined = [i for s in segments for i in self._encode(s)]
        return joined == list(self._encode(text))

    def _prove_template(self) -> str | None:
        """The chat template, when it provably prints contents verbatim (see
        ``chat_template_proof.prints_contents_verbatim``) and the tokenizer renders it that way:
        a probe of contents Jinja or HTML could treat specially (autoescape,
        a finalize hook) must come out as the skeleton with them put back.
        The proof is of ``tokenizer.chat_template``, the template that
        transformers' ``apply_chat_template`` renders when given none."""
        source = getattr(self._tok, "chat_template", None)
        if not isinstance(source, str) or not prints_contents_verbatim(source):
            return None
        probe = [("system", "<b>&amp;</b> {{ x }}"), ("user", "\"q\" 'a' %}"), ("assistant", ""),
                 ("user", "tab\tand\nnew line")]  # fmt: skip
        wrappers = self._skeleton(tuple(r for r, _ in probe))
        if not wrappers:
            return None
        if _fill(probe, wrappers) != self._template([{"role": r, "content": c} for r, c in probe]):
            return None
        return source

    def _split_safe(self) -> bool:
        """May a content and the template text after it be tokenized apart? Yes
        when each such text starts with a special token (the tokenizer splits
        there) and the probe conversation tokenizes the same either way."""
        specials = tuple(getattr(self._tok, "all_special_tokens", None) or ())
        conv = [{"role": r, "content": c.strip()} for r, c in _PROBE]
        wrappers = self._skeleton(tuple(r for r, _ in _PROBE))
        if not specials or not wrappers or not all(w.startswith(specials) for w in wrappers[1:]):
            return False
        pieces = [wrappers[0]] + [p for i, m in enumerate(conv) for p in (m["content"], wrappers[i + 1])]
        joined = [i for p in pieces for i in self._encode(p)]
        return joined == list(self._encode(self._template(conv)))


def _encoder(tok: ChatTokenizer) -> tuple[Callable[[str], Sequence[int]], bool]:
    """How to tokenize one text without special tokens. A Hugging Face fast
    tokenizer's own Rust ``encode`` when it gives the same ids as the
    tokenizer's ``encode`` (checked here on probe texts): transformers' path
    wraps one text in a batch call that hands it to the Rust thread pool,
    whose wake-up cost the server paid on every turn (0.1-0.3 ms measured)."""

    def plain(text: str) -> Sequence[int]:
        return tok.encode(text, add_special_tokens=False)

    backend = getattr(tok, "backend_tokenizer", None)
    if backend is None or not callable(getattr(backend, "encode", None)):
        return plain, False

    def fast(text: str) -> Sequence[int]:
        return backend.encode(text, add_special_tokens=False).ids

    specials = " ".join(getattr(tok, "all_special_tokens", None) or [])
    probes = [c for _, c in _PROBE] + ["", "  spaced  out ", f"a{specials}b", "emoji 🙂 ünïcode 你好 \u200d"]
    try:
        same = all(list(fast(p)) == list(plain(p)) for p in probes)
    except Exception:  # a backend with another signature: use the tokenizer's own method
        same = False
    return (fast, True) if same else (plain, False)


def _fill(conv: Sequence[tuple[str, str]], wrappers: tuple[str, ...]) -> str:
    """A skeleton's template texts with the contents put back in between."""
    pieces = [wrappers[0]]
    for (_, content), after in zip(conv, wrappers[1:], strict=True):
        pieces += (content, after)
    return "".join(pieces)


def _turn_starts(msgs: list[_Msg]) -> list[int]:
    """Indices where a whole turn begins: each user message (and index 0, for
    a history that opens with the assistant). Trimming drops up to one of these."""
    starts = [i for i, (role, _, _) in enumerate(msgs) if role == "user" and i > 0]
    return [*starts, len(msgs)] if msgs else []
