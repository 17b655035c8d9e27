"""What token scores cost a worker: per turn, the time of each signal against the turn's own prefill.

A worker runs each turn's prefill anyway (that is what makes its KV). Sending token scores adds:
  repeat   hf.turn_scores: the repeat prompt and the turn again on the cache, then the max causal
           attention weight per kv head and token (one more prefill of the turn's length).
  prefill  hf.prefill_scores: the max causal attention weight of the turn's own prefill queries
           (recorded during the prefill), no extra forward.
Each turn of each dialogue is prefilled on the cache of the turns before it, then scored both ways;
the wall times of the three steps are recorded per turn, same process, same threads.

  .venv/bin/python -m eval.worker_cost --skip 25 --dialogues 16 --out eval-out/worker-cost
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path
from typing import Any

import torch
from transformers import DynamicCache

from nexuskv import hf


def measure(model: Any, turns: list[list[int]], repeat_ids: list[int]) -> list[dict[str, float]]:
    """Per turn: its tokens, the cache's length after it and the seconds of prefill / repeat / prefill
    scores."""
    cache = DynamicCache()
    rows = []
    for ids in turns:
        t0 = time.perf_counter()
        with torch.no_grad(), hf.record_queries() as rec:
            model(input_ids=torch.tensor([ids]), past_key_values=cache, use_cache=True, logits_to_keep=1)
        t1 = time.perf_counter()
        hf.turn_scores(model, cache, ids, repeat_ids)
        t2 = time.perf_counter()
        hf.prefill_scores(cache, rec.probes(0, len(ids)))
        t3 = time.perf_counter()
        rows.append(
            {
                "tokens": len(ids),
                "cache": cache.get_seq_length(),
                "prefill_s": t1 - t0,
                "repeat_s": t2 - t1,
                "prefill_scores_s": t3 - t2,
            }
        )
    return rows


def summary(rows: list[dict[str, float]]) -> dict[str, float]:
    """Medians of the per-turn ratios to the turn's prefill, and the ratios of the totals."""
    total = sum(r["prefill_s"] for r in rows)
    out: dict[str, float] = {"turns": len(rows), "prefill_s": total}
    for key in ("repeat_s", "prefill_scores_s"):
        out[f"{key}_median_ratio"] = statistics.median(r[key] / r["prefill_s"] for r in rows)
        out[f"{key}_total_ratio"] = sum(r[key] for r in rows) / total
    return out


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m eval.worker_cost", description=__doc__.split("\n\n")[0])
    p.add_argument("--skip", type=int, default=25)
    p.add_argument("--dialogues", type=int, default=16)
    p.add_argument("--out", default="eval-out/worker-cost")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: all cores)")
    args = p.parse_args(argv)
    from eval import dialogues
    from eval import model as model_mod

    if args.threads:
        torch.set_num_threads(args.threads)
    lm = model_mod.load()
    repeat_ids = lm.tokenizer.encode(hf.REPEAT_PROMPT, add_special_tokens=False)
    wanted = args.skip + args.dialogues
    selected = dialogues.select(lm.tokenizer, wanted, seed=0, max_tokens=2048)[args.skip :]
    rows = []
    for d in selected:
        rows += measure(lm.model, [s.ids for s in d.segments[:-1]], repeat_ids)
    result = {"summary": summary(rows), "turns": rows, "threads": torch.get_num_threads()}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(result, indent=1))
    print(json.dumps(result["summary"], indent=1))


if __name__ == "__main__":
    main()
