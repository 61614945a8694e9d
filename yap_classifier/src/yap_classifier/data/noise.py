"""Noise that makes a clean sentence sound like a speech recogniser heard it:
lowercase, no punctuation, fillers, misheard words, stutters, rambles.

Every function takes the sentence and a seeded ``random.Random`` so the data
set is reproducible byte for byte.
"""

from __future__ import annotations

import random
import re

FILLERS_START = ["um", "uh", "so", "okay so", "hey", "like", "hmm", "well", "yeah so", "uh so", "ok um", "right so", "alright"]
FILLERS_MID = ["like", "um", "uh", "you know", "i mean", "kind of", "sort of", "basically", "literally"]

# Words a recogniser commonly mishears, with what it writes instead.
MISHEARD: dict[str, list[str]] = {
    "see": ["sea", "c"],
    "screen": ["scream", "skreen", "screan", "green"],
    "this": ["dis", "the"],
    "what's": ["whats", "what is", "was"],
    "you": ["u", "ya"],
    "your": ["you're", "yor"],
    "right": ["write", "rite"],
    "there": ["their", "they're"],
    "to": ["too", "two"],
    "for": ["four"],
    "look": ["luke", "book"],
    "email": ["e mail", "emails", "female"],
    "read": ["red", "reed"],
    "page": ["paige", "age"],
    "here": ["hear"],
    "know": ["no"],
    "weather": ["whether"],
    "i'm": ["im", "i am"],
    "can": ["could", "kin"],
    "check": ["chuck", "cheque"],
    "photo": ["foto", "photos"],
    "message": ["massage", "messages"],
    "error": ["era", "arrow"],
    "click": ["clique", "klick"],
    "picture": ["pitcher", "pictures"],
    "timer": ["time her"],
    "spotify": ["spot if i", "spotty fie"],
    "alarm": ["a lorm"],
    "button": ["mutton", "bottom"],
    "website": ["web site", "webs site"],
}

RAMBLE_OPENERS = [
    "so i was at my sister's place yesterday and we were talking about a bunch of stuff and",
    "okay this is gonna sound kind of weird but",
    "i've been trying to figure this out all morning and honestly",
    "my boss keeps sending me things all day long and",
    "sorry i just got back from the gym and i'm still kind of out of breath but",
    "alright so long story short my roommate borrowed my charger again and anyway",
    "you know how i told you about the trip last week well",
    "ok so i had the longest day ever, the bus was late, the coffee machine broke and",
    "before i forget, and this is totally unrelated to what we talked about earlier,",
    "i don't know if this makes sense but",
    "so my mom called me again this morning and after that",
    "i was half asleep on the couch watching nothing in particular and then",
    "hold on let me think, yeah, okay,",
    "this is probably a dumb question but",
    "i have like five minutes before my next meeting so quickly",
]

RAMBLE_CLOSERS = [
    "because i honestly have no idea",
    "thanks a lot",
    "if that makes sense",
    "i don't know",
    "sorry i'm rambling",
    "please",
    "no rush",
    "whenever you're ready",
    "that would be great",
    "or whatever",
    "you know what i mean",
    "and yeah that's about it",
]

_PUNCT = re.compile(r"[?!.,;:\"]")


def lowercase(text: str, rng: random.Random) -> str:
    return text.lower()


def strip_punctuation(text: str, rng: random.Random) -> str:
    return re.sub(r"\s+", " ", _PUNCT.sub("", text)).strip()


def add_fillers(text: str, rng: random.Random) -> str:
    words = text.split()
    if rng.random() < 0.6:
        words.insert(0, rng.choice(FILLERS_START))
    if len(words) > 3 and rng.random() < 0.6:
        words.insert(rng.randrange(1, len(words)), rng.choice(FILLERS_MID))
    return " ".join(words)


def mishear(text: str, rng: random.Random) -> str:
    words = text.split()
    out = []
    for w in words:
        key = w.lower().strip("?!.,")
        if key in MISHEARD and rng.random() < 0.35:
            out.append(rng.choice(MISHEARD[key]))
        else:
            out.append(w)
    return " ".join(out)


def stutter(text: str, rng: random.Random) -> str:
    words = text.split()
    if len(words) < 2:
        return text
    i = rng.randrange(len(words))
    return " ".join(words[: i + 1] + [words[i]] + words[i + 1 :])


def drop_word(text: str, rng: random.Random) -> str:
    words = text.split()
    if len(words) < 5:
        return text
    del words[rng.randrange(1, len(words))]
    return " ".join(words)


def ramble(text: str, rng: random.Random) -> str:
    """A long voice turn: one to three unrelated openers, the request, a closer."""
    openers = rng.sample(RAMBLE_OPENERS, k=rng.randint(1, 3))
    parts = [*openers, text]
    if rng.random() < 0.6:
        parts.append(rng.choice(RAMBLE_CLOSERS))
    return " ".join(parts)


def voice(text: str, rng: random.Random) -> str:
    """Apply a random mix of the noises above (most turns get some)."""
    if rng.random() < 0.12:
        text = ramble(text, rng)
    if rng.random() < 0.35:
        text = add_fillers(text, rng)
    if rng.random() < 0.3:
        text = mishear(text, rng)
    if rng.random() < 0.1:
        text = stutter(text, rng)
    if rng.random() < 0.08:
        text = drop_word(text, rng)
    if rng.random() < 0.8:
        text = lowercase(text, rng)
    if rng.random() < 0.6:
        text = strip_punctuation(text, rng)
    return text
