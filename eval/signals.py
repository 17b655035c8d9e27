"""Which signal picks the KV a reply will read? A study, on the same dialogues and reference as eval.run.

Every method that evicts or merges ranks the history's tokens by some signal, and spends a budget
either evenly over (layer, kv head) or unevenly. This study holds everything else fixed and varies
only those two choices: it keeps a subset of the history's exact KV (the rest masked with a -inf
bias, the session's first 4 tokens always kept), and teacher-forces the reply exactly as eval.run
does. The signals, each a per-(layer, kv head, token) score, the max over query rows and the
query heads of the group of the softmax over the history's keys:

  recent          no score: the sinks and the newest tokens (StreamingLLM's choice).
  newest-probes   32 queries spread over the last user turn: what SONIC's lookahead reads.
  turn-probes     32 queries spread over each history turn: what the tier stores (causal).
  prefill         every query of the history's own prefill (causal): ObservedAttention's input.
  recon-32        32 per turn of the queries of a second pass that repeats the history after
                  "Repeat the previous context exactly." (KVzip's reconstruction, sampled).
  recon           all of those reconstruction queries: KVzip's signal.
  reply           the reply's own queries: the oracle, which no method has.

Scopes: "head" keeps the same number of tokens in every (layer, kv head); "global" ranks every
(layer, kv head, token) together, as KVzip does. docs/sonic.md discusses the results.

  .venv/bin/python -m eval.signals --skip 25 --dialogues 16 --out eval-out/signals
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path
from typing import Any

import torch

SINKS = 4
PROBES = 32
RECON_PROMPT = "\n\nRepeat the previous context exactly.\n\n"
SIGNALS = ("recent", "newest-probes", "turn-probes", "prefill", "recon-32", "recon", "reply")
SCOPES = ("head", "global")


def scores(queries: torch.Tensor, keys: torch.Tensor, positions: torch.Tensor | None = None) -> torch.Tensor:
    """Per kv head and key, the max attention any row gives it: queries [Hq, P, D], keys [H, T, D] ->
    [H, T]. positions [P] (absolute, keys at 0..T-1) applies a causal mask; None: every row sees
    every key."""
    hq, p, d = queries.shape
    h, t, _ = keys.shape
    grouped = queries.float().reshape(h, (hq // h) * p, d)
    logits = torch.einsum("hpd,htd->hpt", grouped, keys.float()) / math.sqrt(d)
    if positions is not None:
        hidden = torch.arange(t)[None, :] > positions.repeat(hq // h)[:, None]
        logits = logits.masked_fill(hidden[None], float("-inf"))
    return torch.softmax(logits, -1).amax(1)


def keep_masks(
    layer_scores: list[torch.Tensor] | None, shape: tuple[int, int, int], ratio: float, scope: str
):
    """Per layer a bool [H, T] of the kept tokens: max(SINKS, round(ratio*T)) per (layer, kv head) on
    average, the first SINKS always. layer_scores None keeps the newest."""
    layers, h, t = shape
    n = max(SINKS, min(t, round(ratio * t)))
    if layer_scores is None:
        keep = torch.zeros(layers, h, t, dtype=torch.bool)
        keep[:, :, :SINKS] = True
        keep[:, :, t - (n - SINKS) :] = True
        return list(keep)
    s = torch.stack(layer_scores).clone()
    s[:, :, :SINKS] = float("inf")
    if scope == "head":
        index = s.topk(n, -1).indices
        keep = torch.zeros(layers, h, t, dtype=torch.bool).scatter_(2, index, True)
    elif scope == "global":
        keep = torch.zeros(layers * h * t, dtype=torch.bool)
        keep[s.reshape(-1).topk(n * h * layers).indices] = True
        keep = keep.reshape(layers, h, t)
    else:
        raise ValueError(f"unknown scope {scope!r}; use one of {SCOPES}")
    return list(keep)


def spread(start: int, end: int, count: int = PROBES) -> torch.Tensor:
    """The same indices hf.QueryRecorder.spread picks."""
    return torch.linspace(start, end - 1, min(count, end - start)).round().long()


def study(lm: Any, item: Any, ratios: tuple[float, ...], reply_tokens: int = 128) -> dict[str, float]:
    """KL(full || kept) of the reply for every signal, scope and ratio: {'signal/scope@ratio': kl}."""
    from transformers import DynamicCache

    from eval.protocol import ASSISTANT_HEADER, compare
    from nexuskv import hf

    model, tok = lm.model, lm.tokenizer
    segs = item.dialogue.segments
    history, last_user, final = segs[:-2], segs[-2], segs[-1]
    hist_ids = [i for s in history for i in s.ids]
    t, prefix = len(hist_ids), len(hist_ids) + len(last_user.ids)
    header = len(tok.encode(ASSISTANT_HEADER, add_special_tokens=False))
    reply = min(reply_tokens, len(final.ids) - header)
    forced = torch.tensor([final.ids[: header + reply]])
    cache = DynamicCache()
    with torch.no_grad(), hf.record_queries() as rec:
        model(input_ids=torch.tensor([hist_ids]), past_key_values=cache, use_cache=True, logits_to_keep=1)
        out = model(
            input_ids=torch.cat([torch.tensor([last_user.ids]), forced[:, :-1]], 1),
            past_key_values=cache,
            use_cache=True,
            logits_to_keep=reply,
        )
    ref = torch.log_softmax(out.logits[0].float(), -1)
    cache.crop(prefix)
    keys, values = hf.turn_kv(cache, 0, prefix)
    hist_keys = [k[:, :t] for k in keys]
    recon_prompt = tok.encode(RECON_PROMPT, add_special_tokens=False)
    with torch.no_grad(), hf.record_queries() as rec2:
        model(input_ids=torch.tensor([hist_ids + recon_prompt + hist_ids]), use_cache=False, logits_to_keep=1)
    turn_index, start = [], 0
    for s in history:
        turn_index.append(spread(start, start + len(s.ids)))
        start += len(s.ids)
    per_turn = torch.cat(turn_index)
    recon_start = t + len(recon_prompt)
    n_layers = len(keys)

    def signal(name: str) -> list[torch.Tensor] | None:
        if name == "recent":
            return None
        out = []
        for i in range(n_layers):
            k = hist_keys[i]
            if name == "newest-probes":
                out.append(scores(rec.layer(i)[:, spread(t, prefix)], k))
            elif name == "turn-probes":
                out.append(scores(rec.layer(i)[:, per_turn], k, per_turn))
            elif name == "prefill":
                out.append(scores(rec.layer(i)[:, :t], k, torch.arange(t)))
            elif name == "recon-32":
                out.append(scores(rec2.layer(i)[:, recon_start + per_turn], k))
            elif name == "recon":
                out.append(scores(rec2.layer(i)[:, recon_start : recon_start + t], k))
            elif name == "reply":
                out.append(scores(rec.layer(i)[:, prefix : prefix + reply], k))
            else:
                raise ValueError(name)
        return out

    pending = []
    shape = (n_layers, *hist_keys[0].shape[:2])
    for name in SIGNALS:
        sig = signal(name)
        for scope in ("head",) if sig is None else SCOPES:
            for ratio in ratios:
                bias = []
                for keep in keep_masks(sig, shape, ratio, scope):
                    b = torch.zeros(keep.shape[0], prefix)
                    b[:, :t][~keep] = float("-inf")
                    bias.append(b)
                label = name if sig is None else f"{name}/{scope}"
                pending.append((f"{label}@{ratio:g}", hf.cache_from_tensors(keys, values, prefix, bias=bias)))
    results = {}
    for i in range(0, len(pending), 8):
        chunk = pending[i : i + 8]
        with torch.no_grad():
            logits = hf.forward(
                model, forced[:, :-1].expand(len(chunk), -1), hf.stack_caches([c for _, c in chunk])
            )
        logp = torch.log_softmax(logits[:, -reply:].float(), -1)
        for row, (key, _) in enumerate(chunk):
            results[key] = compare(ref, logp[row], forced[0, header:], None)["kl"]
    return results


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--dialogues", type=int, default=16)
    p.add_argument("--skip", type=int, default=25)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--max-tokens", type=int, default=2048)
    p.add_argument("--ratios", default="0.5,0.2")
    p.add_argument("--model-cache", default="eval-out/model-cache")
    p.add_argument("--out", default="eval-out/signals")
    args = p.parse_args(argv)

    from eval import dialogues
    from eval import model as model_mod
    from eval.protocol import Item

    ratios = tuple(float(r) for r in args.ratios.split(","))
    lm = model_mod.load(args.model_cache)
    selected = dialogues.select(
        lm.tokenizer, args.skip + args.dialogues, seed=args.seed, max_tokens=args.max_tokens
    )[args.skip :]
    started = time.perf_counter()
    per_item = []
    for n, d in enumerate(selected):
        per_item.append({"id": d.id, "kl": study(lm, Item(dialogue=d), ratios)})
        print(f"[{n + 1}/{len(selected)}] {d.id} {time.perf_counter() - started:.0f}s", flush=True)
    keys = list(per_item[0]["kl"])
    mean = {k: sum(it["kl"][k] for it in per_item) / len(per_item) for k in keys}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    result = {
        "args": vars(args),
        "mean_kl": mean,
        "items": per_item,
        "seconds": time.perf_counter() - started,
    }
    (out / "signals.json").write_text(json.dumps(result, indent=1))
    labels = sorted({k.rpartition("@")[0] for k in keys}, key=lambda s: keys.index(f"{s}@{ratios[0]:g}"))
    print("| signal / scope | " + " | ".join(f"KL @ {r:g}" for r in ratios) + " |")
    print("|---|" + "---|" * len(ratios))
    for label in labels:
        print(f"| {label} | " + " | ".join(f"{mean[f'{label}@{r:g}']:.4f}" for r in ratios) + " |")
    return result


if __name__ == "__main__":
    main()
