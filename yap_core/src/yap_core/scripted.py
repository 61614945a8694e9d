"""The ``scripted`` plugin: an engine and a classifier with no model at all.

For server-bound benchmarks, the soak run and protocol tests where the model is
not the point. Never a default: a deployment names it (INFERENCE_ENGINE=scripted,
TOOL_CLASSIFIER=scripted).

- Engine: replies with a fixed text (or, with ``scripted_echo``, the last user
  message of the prompt), one word per token, instantly or at
  ``scripted_token_delay_ms``. Its tokenizer is byte-level with a ChatML-style
  template, self-contained. Abort, running counts and prefix-cache bookkeeping
  are real, so tests can check that the server aborts what it cancels.
- Classifier: a keyword rule. The decision is yes when the last user turn
  contains one of ``SCREEN_WORDS`` (case-insensitive); confidence is 0.9 for
  the decision taken.
"""

from __future__ import annotations

import asyncio
import math
import re
from array import array
from collections import OrderedDict
from collections.abc import AsyncIterator, Mapping, Sequence
from typing import Annotated, Any

import msgspec

from yap_core import __version__ as core_version
from yap_core.contracts import (
    SAMPLING_KEYS,
    Decision,
    Delta,
    EngineStats,
    GenerationRequest,
    Progress,
)
from yap_core.hookspecs import Register, hookimpl
from yap_core.settings import Config, SettingsError, doc
from yap_core.stops import StopMatcher

SCREEN_WORDS = ("screen", "screenshot", "look at this", "see this", "what am i looking at")


class ScriptedSettings(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    scripted_reply: Annotated[str, doc("The scripted engine's reply, one word per token.")] = (
        "Sure thing! Here is a short answer from the scripted engine, one word at a time, "
        "so that the server itself is what gets measured. It keeps going for a while, "
        "sentence after sentence, until it reaches the end of this script."
    )
    scripted_echo: Annotated[
        bool, doc("Reply with the prompt's last user message instead of scripted_reply.")
    ] = False
    scripted_repeat: Annotated[
        bool, doc("Repeat the reply until max_tokens (finish_reason length), for long streams.")
    ] = False
    scripted_unsupported: Annotated[
        tuple[str, ...], doc("Sampling keys the scripted engine declares it cannot honour (comma-separated).")
    ] = ()
    scripted_token_delay_ms: Annotated[float, doc("Delay before each token (0: instant).", ge=0)] = 0.0
    scripted_step_ms: Annotated[
        float,
        doc(
            "Tokens in batched steps, as a GPU engine gives them: every this many ms each running stream "
            "gets its next token in one event-loop pass, in the order the streams waited, a request that "
            "arrived during the step last (0: each stream on its own, after scripted_token_delay_ms; "
            "set one of the two).",
            ge=0,
        ),
    ] = 0.0
    scripted_max_model_len: Annotated[int, doc("Context length the scripted engine reports.", ge=64)] = 8192
    scripted_fail_on: Annotated[
        str | None, doc("Fault injection: a stream whose last user message contains this text fails after one token.")
    ] = None
    scripted_die_on: Annotated[
        str | None, doc("Fault injection: a last user message containing this text kills the engine (stats() then raises).")
    ] = None
    scripted_classifier_delay_ms: Annotated[
        float, doc("Delay of each scripted classification (to exercise TOOL_TIMEOUT_S).", ge=0)
    ] = 0.0
    scripted_classifier_fail_on: Annotated[
        str | None, doc("Fault injection: a classification whose last user turn contains this text raises.")
    ] = None


# --- tokenizer ----------------------------------------------------------------

IM_START, IM_END, EOS = "<|im_start|>", "<|im_end|>", "<|endoftext|>"
_SPECIALS = {IM_START: 256, IM_END: 257, EOS: 258}
_SPECIAL_TEXT = {v: k for k, v in _SPECIALS.items()}
_SPLIT = re.compile("(" + "|".join(re.escape(s) for s in _SPECIALS) + ")")


class ScriptedTokenizer:
    """Byte-level: ids 0-255 are bytes, 256+ the special tokens. Satisfies
    ``contracts.ChatTokenizer`` with the keyword arguments the core uses."""

    eos_token = EOS
    eos_token_id = _SPECIALS[EOS]
    # As a Hugging Face tokenizer lists them: the prompt builder removes them
    # from contents, and tokenizes contents apart from the template around
    # them (they start each piece of it), as it does for real models.
    all_special_tokens = [IM_START, IM_END, EOS]

    def encode(self, text: str, add_special_tokens: bool = False) -> list[int]:
        ids: list[int] = []
        for part in _SPLIT.split(text):
            if part in _SPECIALS:
                ids.append(_SPECIALS[part])
            elif part:
                ids.extend(part.encode())
        return ids

    def decode(self, token_ids: Sequence[int], skip_special_tokens: bool = False) -> str:
        out: list[str] = []
        run = bytearray()
        for i in token_ids:
            if i < 256:
                run.append(i)
                continue
            out.append(run.decode(errors="replace"))
            run.clear()
            if not skip_special_tokens:
                out.append(_SPECIAL_TEXT.get(i, ""))
        out.append(run.decode(errors="replace"))
        return "".join(out)

    def apply_chat_template(
        self,
        conversation: Sequence[Mapping[str, str]],
        add_generation_prompt: bool = False,
        tokenize: bool = True,
        return_dict: bool = True,
        **kwargs: Any,
    ) -> Any:
        text = "".join(f"{IM_START}{m['role']}\n{m['content']}{IM_END}\n" for m in conversation)
        if add_generation_prompt:
            text += f"{IM_START}assistant\n"
        if not tokenize:
            return text
        ids = self.encode(text)
        return {"input_ids": ids} if return_dict else ids


def last_user_message(tokenizer: ScriptedTokenizer, ids: Sequence[int]) -> str:
    text = tokenizer.decode(ids)
    marker = f"{IM_START}user\n"
    at = text.rfind(marker)
    if at < 0:
        return ""
    return text[at + len(marker) :].split(IM_END, 1)[0]


# --- engine -------------------------------------------------------------------

_WORD = re.compile(r"\s*\S+")
_PREFIX_SLOTS = 16  # prompts remembered for prefix-cache bookkeeping


def _pack(ids: Sequence[int]) -> bytes:
    return array("I", ids).tobytes()


def _common_prefix(a: bytes, b: bytes) -> int:
    """Common prefix of two packed id sequences, in ids (binary search on memcmp)."""
    lo, hi = 0, min(len(a), len(b)) // 4
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if a[: mid * 4] == b[: mid * 4]:
            lo = mid
        else:
            hi = mid - 1
    return lo


class EngineDied(RuntimeError):
    pass


class ScriptedShare:
    """``EngineShare`` of the scripted engine: nothing runs in the supervisor."""

    def __init__(self, attachments: list[Any]) -> None:
        self.attachments = attachments

    def wait_ready(self) -> None:
        return None

    def close(self) -> None:
        return None


class ScriptedEngine:
    name = "scripted"
    version = core_version

    def __init__(self, settings: ScriptedSettings) -> None:
        unknown = sorted(set(settings.scripted_unsupported) - SAMPLING_KEYS)
        if unknown:
            raise SettingsError(
                f"SCRIPTED_UNSUPPORTED: unknown sampling key(s) {', '.join(unknown)}; known: {', '.join(sorted(SAMPLING_KEYS))}"
            )
        if settings.scripted_step_ms and settings.scripted_token_delay_ms:
            raise SettingsError("SCRIPTED_STEP_MS and SCRIPTED_TOKEN_DELAY_MS both set: each paces the tokens, set one")
        self.settings = settings
        self.model_id = "scripted"
        self.max_model_len = settings.scripted_max_model_len
        self._tokenizer = ScriptedTokenizer()
        self._running: set[str] = set()
        self._aborted: set[str] = set()
        self._cached: OrderedDict[bytes, None] = OrderedDict()  # packed prompts, newest last
        self._queries = 0
        self._hits = 0
        self._dead = False
        # scripted_step_ms: the current step's event (every stream waits on
        # it) and the task that sets one each step while streams run
        self._step = asyncio.Event()
        self._stepper: asyncio.Task[None] | None = None
        self.attachment: Any = None  # SERVER_WORKERS: what the supervisor handed this worker

    @property
    def tokenizer(self) -> ScriptedTokenizer:
        return self._tokenizer

    def unsupported_sampling(self) -> frozenset[str]:
        return frozenset(self.settings.scripted_unsupported)

    async def start(self, progress: Progress | None = None) -> None:
        if progress:
            progress("scripted engine: nothing to load")

    async def close(self) -> None:
        self._running.clear()
        if self._stepper is not None:
            self._stepper.cancel()
            self._stepper = None

    async def _next_step(self) -> None:
        """Wait for the next batched step (scripted_step_ms)."""
        if self._stepper is None:
            self._stepper = asyncio.get_running_loop().create_task(self._steps(), name="scripted-steps")
        await self._step.wait()

    async def _steps(self) -> None:
        # On a fixed grid, as a GPU engine steps whether or not the server
        # keeps up: a step the event loop reaches late is not made up.
        step = self.settings.scripted_step_ms / 1000.0
        loop = asyncio.get_running_loop()
        due = loop.time()
        try:
            while self._running or self._aborted:  # an aborted stream still waits for its step
                due += step
                late = loop.time() - due
                if late > 0:
                    due += step * math.ceil(late / step)
                await asyncio.sleep(due - loop.time())
                event, self._step = self._step, asyncio.Event()
                event.set()  # wakes this step's streams in the order they waited
        finally:
            self._stepper = None

    def share(self, workers: int) -> ScriptedShare:
        """SERVER_WORKERS > 1. A scripted engine has nothing worth sharing (each
        worker scripts its own replies, prefix cache included); this lets the
        supervisor and its workers run, and be tested, without a GPU."""
        return ScriptedShare([{"worker": i} for i in range(workers)])

    def attach(self, attachment: Any) -> None:
        self.attachment = attachment

    async def abort(self, request_id: str) -> None:
        # Freed at once, as a real engine's scheduler drops it: the stream sees
        # the flag at its next step and ends with finish_reason "abort".
        if request_id in self._running:
            self._running.discard(request_id)
            self._aborted.add(request_id)

    async def prefill(self, prompt_token_ids: Sequence[int]) -> int:
        packed = _pack(prompt_token_ids)
        cached = self._lookup(packed)
        self._remember(packed)
        return cached

    async def stats(self) -> EngineStats:
        if self._dead:
            raise EngineDied("scripted engine was killed by scripted_die_on")
        return EngineStats(
            running=len(self._running),
            waiting=0,
            prefix_cache_queries=self._queries,
            prefix_cache_hits=self._hits,
        )

    def _lookup(self, packed: bytes) -> int:
        best = max((_common_prefix(seq, packed) for seq in self._cached), default=0)
        self._queries += len(packed) // 4
        self._hits += best
        return best

    def _remember(self, packed: bytes) -> None:
        self._cached[packed] = None
        self._cached.move_to_end(packed)
        while len(self._cached) > _PREFIX_SLOTS:
            self._cached.popitem(last=False)

    def _words(self, request: GenerationRequest) -> list[str]:
        if self.settings.scripted_echo:
            text = last_user_message(self._tokenizer, request.prompt_token_ids)
        else:
            text = self.settings.scripted_reply
        return _WORD.findall(text) or [" "]

    async def stream(self, request: GenerationRequest) -> AsyncIterator[Delta]:
        if self._dead:
            raise EngineDied("scripted engine is dead")
        rid = request.request_id
        ids = request.prompt_token_ids
        faulty = self.settings.scripted_fail_on or self.settings.scripted_die_on
        prompt_text = last_user_message(self._tokenizer, ids) if faulty else ""
        packed = _pack(ids)
        cached = self._lookup(packed)
        self._remember(packed)
        words = self._words(request)
        max_tokens = request.sampling.max_tokens
        cycle = request.sampling.ignore_eos or self.settings.scripted_repeat
        delay = self.settings.scripted_token_delay_ms / 1000.0
        stepped = self.settings.scripted_step_ms > 0
        self._running.add(rid)
        stops = StopMatcher(request.sampling.stop)
        try:
            n = 0
            while True:
                if stepped:
                    await self._next_step()
                elif delay:
                    await asyncio.sleep(delay)
                else:
                    await asyncio.sleep(0)  # yield to the loop, as a real engine does
                if rid in self._aborted:
                    yield Delta(text="", completion_tokens=n, prompt_tokens=len(ids), cached_prompt_tokens=cached, finish_reason="abort")
                    return
                if n >= 1 and self.settings.scripted_die_on and self.settings.scripted_die_on in prompt_text:
                    self._dead = True
                    raise EngineDied("scripted engine died (scripted_die_on)")
                if n >= 1 and self.settings.scripted_fail_on and self.settings.scripted_fail_on in prompt_text:
                    raise RuntimeError("scripted engine failure (scripted_fail_on)")
                if cycle:
                    word = words[n % len(words)]
                elif n < len(words):
                    word = words[n]
                else:
                    word = ""
                n += 1 if word else 0
                text, hit = stops.feed(word)
                finish = None
                if hit:
                    finish = "stop"
                elif n >= max_tokens:
                    finish = "length" if (cycle or n < len(words)) else "stop"
                elif not cycle and n >= len(words):
                    finish = "stop"
                if finish and not hit:
                    text += stops.flush()
                yield Delta(text=text, completion_tokens=n, prompt_tokens=len(ids), cached_prompt_tokens=cached, finish_reason=finish)
                if finish:
                    return
        finally:
            self._running.discard(rid)
            self._aborted.discard(rid)


# --- classifier ---------------------------------------------------------------


class ScriptedClassifier:
    name = "scripted"
    model_id = "scripted-keywords"

    def __init__(self, settings: ScriptedSettings) -> None:
        self.delay = settings.scripted_classifier_delay_ms / 1000.0
        self.fail_on = settings.scripted_classifier_fail_on

    async def start(self, progress: Progress | None = None) -> None:
        if progress:
            progress("scripted classifier: keyword rule, nothing to load")

    async def close(self) -> None:
        return None

    async def classify(self, user_turns: Sequence[str]) -> Decision:
        if self.delay:
            await asyncio.sleep(self.delay)
        if self.fail_on and user_turns and self.fail_on in user_turns[-1]:
            raise RuntimeError("scripted classifier failure (scripted_classifier_fail_on)")
        last = user_turns[-1].lower() if user_turns else ""
        matched = next((w for w in SCREEN_WORDS if w in last), None)
        return Decision(
            screenshot=matched is not None,
            confidence=0.9,
            raw={"rule": "keywords", "matched": matched},
        )


# --- hooks --------------------------------------------------------------------


def make_engine(config: Config) -> ScriptedEngine:
    return ScriptedEngine(config.section("scripted", ScriptedSettings))


def make_classifier(config: Config) -> ScriptedClassifier:
    return ScriptedClassifier(config.section("scripted", ScriptedSettings))


@hookimpl
def register_engines(register: Register) -> None:
    register("scripted", make_engine)


@hookimpl
def register_classifiers(register: Register) -> None:
    register("scripted", make_classifier)
