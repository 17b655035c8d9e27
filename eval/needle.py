"""The needle set: a fact planted in the first user turn, asked about in the last one.

Each needle item reuses a real selected dialogue: the fact is prepended to its first user message,
its final user/assistant pair is replaced by a question about the fact and the answer sentence,
and the answer VALUE's tokens (the digits, the name...) are scored: their log-probability under each
method, and whether greedy decoding would produce every one of them. The fact sits in turn 1, which
every compressing configuration compresses (only the question turn is kept raw).
"""

from __future__ import annotations

import random
from typing import Any

from eval.dialogues import Dialogue, render_segments
from eval.protocol import ASSISTANT_HEADER, Item

_NAMES = ["Bartholomew", "Ingrid", "Zephyrine", "Octavia", "Leopold", "Marisol", "Thaddeus", "Rosalind"]
_CITIES = ["Valparaiso", "Reykjavik", "Timbuktu", "Ulaanbaatar", "Tbilisi", "Winnipeg", "Gdansk"]
_COLORS = ["teal", "maroon", "lavender", "ochre", "crimson", "turquoise", "indigo"]
_WORDS = ["falcon", "harbor", "meadow", "quartz", "saffron", "tundra", "violet", "walnut"]

# (fact, question, answer prefix, value generator)
_FACTS: list[tuple[str, str, str, Any]] = [
    (
        "My locker code is {v}.",
        "What is my locker code?",
        "Your locker code is",
        lambda r: f"{r.randrange(1000, 10000)}",
    ),
    ("My cat's name is {v}.", "What is my cat's name?", "Your cat's name is", lambda r: r.choice(_NAMES)),
    (
        "I was born in {v}.",
        "In which city was I born?",
        "You were born in",
        lambda r: r.choice(_CITIES),
    ),
    (
        "My favorite color is {v}.",
        "What is my favorite color?",
        "Your favorite color is",
        lambda r: r.choice(_COLORS),
    ),
    (
        "The password of the staging server is {v}.",
        "What is the password of the staging server?",
        "The password of the staging server is",
        lambda r: f"{r.choice(_WORDS)}{r.randrange(10, 100)}",
    ),
]


def _encode(tokenizer: Any, text: str) -> list[int]:
    return list(tokenizer.encode(text, add_special_tokens=False))


def make_items(
    tokenizer: Any, bases: list[Dialogue], n: int, *, seed: int = 1, max_tokens: int = 2048
) -> list[Item]:
    rng = random.Random(seed)
    items: list[Item] = []
    for base in bases:
        if len(items) == n:
            break
        turns = [(s.role, s.text) for s in base.segments if s.role != "system"]
        turns = turns[:-2]  # drop the final user/assistant pair
        if sum(r == "user" for r, _ in turns) < 2:
            continue
        fact, question, prefix, gen = _FACTS[len(items) % len(_FACTS)]
        value = gen(rng)
        turns[0] = ("user", f"Before we start: {fact.format(v=value)}\n\n{turns[0][1]}")
        answer = f"{prefix} {value}."
        turns += [("user", f"Quick question: {question}"), ("assistant", answer)]
        try:
            segments = render_segments(tokenizer, turns)
        except ValueError:
            continue
        d = Dialogue(id=f"needle-{base.id}", segments=segments, meta={"value": value, "fact": fact})
        if d.num_tokens > max_tokens:
            continue
        # The value's tokens within the reply (after the 3 header tokens).
        header = ASSISTANT_HEADER
        skip = len(_encode(tokenizer, header))
        before = _encode(tokenizer, header + prefix)
        upto = _encode(tokenizer, header + f"{prefix} {value}")
        reply = segments[-1].ids
        if reply[: len(upto)] != upto or upto[: len(before)] != before:
            continue
        span = (len(before) - skip, len(upto) - skip)
        items.append(Item(dialogue=d, value_span=span, kind="needle"))
    return items
