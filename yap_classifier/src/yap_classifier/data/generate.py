"""Write the labelled screenshot-intent data set kept in the repo.

    python -m yap_classifier.data.generate        # rewrites the .jsonl files beside this module

Templates × slot fillers × voice noise, plus hand-written examples, with a
fixed seed: running it again gives the same bytes (a test checks that the kept
files are what this script writes). Files:

- ``train.jsonl``: train templates.
- ``test.jsonl``: held-out templates and follow-up phrasings never seen in train.
- ``test_iid.jsonl``: new draws from the train templates (same phrasings, new
  slot fillings and noise), none identical to a train line.
"""

from __future__ import annotations

import json
import random
import re
from collections.abc import Iterator
from pathlib import Path

from yap_classifier.data import noise
from yap_classifier.data.templates import (
    SCREEN_CONTEXT,
    SLOTS,
    TALK_CONTEXT,
    TEMPLATES,
    Split,
    Template,
)

SEED = 20261122
DATA_DIR = Path(__file__).resolve().parent
_SLOT = re.compile(r"\{(\w+)\}")
_ALT = re.compile(r"\(([^()]*\|[^()]*)\)")

Example = dict[str, object]  # {"history": [...], "utterance": str, "label": 0|1}


def render(pattern: str, rng: random.Random) -> str:
    """Fill ``{slot}`` and ``(a|b)`` until none are left."""
    text = pattern
    while True:
        new = _ALT.sub(lambda m: rng.choice(m.group(1).split("|")), text)
        new = _SLOT.sub(lambda m: rng.choice(SLOTS[m.group(1)]), new)
        if new == text:
            return re.sub(r"\s+", " ", text).strip().replace(" ,", ",")
        text = new


def _is_fixed(pattern: str) -> bool:
    return not (_SLOT.search(pattern) or _ALT.search(pattern))


def _draws(t: Template, split: Split, n: int, rng: random.Random) -> Iterator[str]:
    """Up to ``n`` distinct noisy renderings of one template."""
    seen: set[str] = set()
    whole_slot = _SLOT.fullmatch(t.pattern)
    if whole_slot:  # a list of near-misses: draw each value about twice
        n = max(n, 2 * len(SLOTS[whole_slot.group(1)]))
    if _is_fixed(t.pattern):
        n = 3  # a hand-written line: itself plus two noisy variants
        seen.add(t.pattern)
        yield t.pattern
    for _ in range(n * 6):
        if len(seen) >= n:
            return
        text = noise.voice(render(t.pattern, rng), rng)
        if text and text not in seen:
            seen.add(text)
            yield text


def _history(pool: list[Template], label: int, rng: random.Random) -> list[str]:
    """Zero to two earlier turns from the same split, mostly of the other
    label, so the model learns that the current utterance, not the history,
    decides ordinary examples."""
    k = rng.choices([0, 1, 2], weights=[45, 38, 17])[0]
    turns = []
    for _ in range(k):
        want = 1 - label if rng.random() < 0.7 else label
        turns.append(noise.voice(render(rng.choice([t for t in pool if t.label == want]).pattern, rng), rng))
    return turns


def _split_list(items: list[str], split: Split) -> list[str]:
    # Every fourth item is held out for test.
    return [x for i, x in enumerate(items) if (i % 4 == 3) == (split == "test")]


def followups(split: Split, n: int, rng: random.Random) -> Iterator[Example]:
    """Turns whose label depends on the earlier turns."""
    screen_ctx = _split_list(SCREEN_CONTEXT, split)
    talk_ctx = _split_list(TALK_CONTEXT, split)
    ambiguous = _split_list(SLOTS["followup_ambiguous"], split)
    screen_only = _split_list(SLOTS["followup_screen_only"], split)
    talk_only = _split_list(SLOTS["followup_talk_only"], split)
    thanks = SLOTS["thanks"]
    for i in range(n):
        kind = i % 6
        screen = kind in (0, 2, 4)
        ctx = screen_ctx if screen else talk_ctx
        history = [noise.voice(render(rng.choice(ctx), rng), rng)]
        if rng.random() < 0.3:
            history.insert(0, noise.voice(render(rng.choice(talk_ctx + screen_ctx), rng), rng))
        if kind in (0, 1):  # the same words, label from the context
            utterance, label = rng.choice(ambiguous), int(screen)
        elif kind == 2:  # only makes sense about something on screen
            utterance, label = rng.choice(screen_only), 1
        elif kind == 3:
            utterance, label = rng.choice(talk_only), 0
        elif kind == 4:  # screen context, then the user moves on
            utterance, label = rng.choice(talk_only + thanks), 0
        else:  # talk context, then a screen question
            utterance, label = render(rng.choice(screen_ctx), rng), 1
        yield {"history": history, "utterance": noise.voice(utterance, rng), "label": label}


def build(split: Split, per_template: int, n_followups: int, seed_tag: str) -> list[Example]:
    templates = [t for t in TEMPLATES if t.split == split]
    rng = random.Random(f"{SEED}:{seed_tag}:history")
    out: list[Example] = []
    for i, t in enumerate(templates):
        trng = random.Random(f"{SEED}:{seed_tag}:{i}")
        for text in _draws(t, split, per_template, trng):
            out.append({"history": _history(templates, t.label, rng), "utterance": text, "label": t.label})
    out.extend(followups(split, n_followups, random.Random(f"{SEED}:{seed_tag}:followups")))
    return out


def _key(e: Example) -> str:
    return json.dumps([e["history"], e["utterance"]])


def _dedupe(examples: list[Example], exclude: set[str]) -> list[Example]:
    out, seen = [], set(exclude)
    for e in examples:
        k = _key(e)
        if k not in seen:
            seen.add(k)
            out.append(e)
    return out


def dataset() -> dict[str, list[Example]]:
    train = _dedupe(build("train", 16, 480, "train"), set())
    train_keys = {_key(e) for e in train}
    test = _dedupe(build("test", 24, 180, "test"), train_keys)
    iid = _dedupe(build("train", 3, 60, "iid"), train_keys)
    random.Random(SEED).shuffle(train)
    return {"train": train, "test": test, "test_iid": iid}


def dumps(examples: list[Example]) -> str:
    return "".join(json.dumps(e, ensure_ascii=False) + "\n" for e in examples)


def main() -> None:
    for name, examples in dataset().items():
        path = DATA_DIR / f"{name}.jsonl"
        path.write_text(dumps(examples), encoding="utf-8")
        pos = sum(int(e["label"]) for e in examples)  # type: ignore[call-overload]
        print(f"{path.name}: {len(examples)} examples, {pos} positive")


if __name__ == "__main__":
    main()
