"""The first ShareGPT conversation that reaches a token target, cut at a turn boundary just below it.

The records are visited in eval.dialogues' order (random.Random(seed) shuffle of the wheel's records)
with its filters (strict human/gpt alternation, English), rendered with SmolLM2's chat template one
segment per message (eval.dialogues.render_segments: the template's system message first), and cut
after the last assistant reply whose end falls in [target - slack, target] tokens. A conversation
without such a boundary is skipped, so the transcript always ends with a reply, as a conversation a
worker offloads does.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any

from eval.dialogues import Segment, _turns, is_english, load_records, render_segments

# Rendering every message of a long record is wasted work: stop after this many characters per
# target token (English ShareGPT text runs at about 4 characters per token, code at about 3).
_CHARS_PER_TOKEN_CAP = 8


@dataclass
class LongDialogue:
    record: int  # index of the record in the wheel's file
    id: str  # its ShareGPT id
    segments: list[Segment]  # system message, then user/assistant alternating, ending with a reply
    turns: list[tuple[str, str]]  # (role, text) of the messages kept, without the system message

    @property
    def num_tokens(self) -> int:
        return sum(len(s.ids) for s in self.segments)


def first_long_dialogue(tokenizer: Any, target: int, slack: int, seed: int = 0) -> LongDialogue:
    """The first conversation (in seed order) with a reply ending in [target - slack, target] tokens.

    Raises LookupError when no record has one."""
    if not 0 <= slack < target:
        raise ValueError(f"need 0 <= slack < target, got slack {slack}, target {target}")
    records = load_records()
    order = list(range(len(records)))
    random.Random(seed).shuffle(order)
    for idx in order:
        turns = _turns(records[idx])
        if turns is None:
            continue
        head: list[tuple[str, str]] = []
        chars = 0
        for role, text in turns:
            head.append((role, text))
            chars += len(text)
            if chars > target * _CHARS_PER_TOKEN_CAP:
                break
        if not is_english(" ".join(t for _, t in head)):
            continue
        try:
            segments = render_segments(tokenizer, head)
        except ValueError:
            continue
        offset = len(segments) - len(head)  # 1 when the template added a system message
        end, cut = 0, None
        for i, seg in enumerate(segments):
            end += len(seg.ids)
            if end > target:
                break
            if seg.role == "assistant" and end >= target - slack:
                cut = i + 1
        if cut is None:
            continue
        return LongDialogue(
            record=idx,
            id=str(records[idx].get("id", idx)),
            segments=segments[:cut],
            turns=head[: cut - offset],
        )
    raise LookupError(f"no ShareGPT conversation has a reply ending in [{target - slack}, {target}] tokens")
