"""Which signal picks the KV a reply will read? A study, on the same dialogues and reference as eval.run.

Every method that evicts or merges ranks the history's tokens by some signal, and spends a budget
either evenly over (layer, kv head) or unevenly. This study holds everything else fixed and varies
only those two choices: it keeps a subset of the history's exact KV (the rest masked with a -inf
bias, the session's first 4 tokens always kept), and teacher-forces the reply exactly as eval.run
does. The signals, each a per-(layer, kv head, token) score, the max over query rows and the
query heads of the group of the softmax the model computes (causal; in the repeats, over the
history, the prompt and the repeat so far, as KVzip scores):

  recent          no score: the sinks and the newest tokens (StreamingLLM's choice).
  newest-probes   32 queries spread over the last user turn: what SONIC's lookahead reads.
  turn-probes     32 queries spread over each history turn: what the tier stores (causal).
  prefill         every query of the history's own prefill (causal): ObservedAttention's input.
  recon-32        32 per turn of the queries of a second pass that repeats the history after
                  "Repeat the previous context exactly." (KVzip's reconstruction, sampled).
  recon-turn      hf.turn_scores: as each turn ends, the same prompt and that turn again continue
                  the cache; the repeat's queries score that turn, times the cache's length (what a
                  worker sends with each turn, at the cost of one extra prefill of the turn's length).
  recon-turn-uncal  the same without the factor: turns scored on shorter caches rank higher.
  recon           all of those reconstruction queries: KVzip's signal.
  reply           the reply's own queries: the oracle, which no method has.

Scopes: "head" keeps the same number of tokens in every (layer, kv head); "global" ranks every
(layer, kv head, token) together, as KVzip does; "layer" gives each layer its share of the global
ranking but the same count in each of its heads (what an answer of [H, N] per layer carries
without padding). "+merged" rows spend 5% of the budget (--merge-share) on entries that stand
for each head's evicted tokens (merged_rest) and the rest as "global"; "+merged16" rows merge only
the best scored of them, in runs of at most 16 (--merge-run; merged_rest with run=16), and drop
the rest, as the server does. docs/experiments/sonic-signal-study.md discusses the results.

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

from nexuskv import hf

SINKS = 4
PROBES = 32
SIGNALS = (
    "recent",
    "newest-probes",
    "turn-probes",
    "prefill",
    "recon-32",
    "recon-turn-uncal",
    "recon-turn",
    "recon",
    "reply",
)
SCOPES = ("head", "layer", "global")
MERGED = (
    "recon-turn",
    "recon",
    "reply",
)  # also: global, with MERGE_SHARE of the budget merging the evicted rest
MERGE_SHARE = 0.05
NEAR_RUN = 16  # "+merged16": runs of at most this many of the best scored evicted tokens


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
    elif scope in ("global", "layer"):
        keep = torch.zeros(layers * h * t, dtype=torch.bool)
        keep[s.reshape(-1).topk(n * h * layers).indices] = True
        keep = keep.reshape(layers, h, t)
        if scope == "layer":  # each layer's share of the global ranking, the same in each of its heads
            for layer in range(layers):
                n_layer = max(SINKS, min(t, round(int(keep[layer].sum()) / h)))
                index = s[layer].topk(n_layer, -1).indices
                keep[layer] = torch.zeros(h, t, dtype=torch.bool).scatter_(1, index, True)
    else:
        raise ValueError(f"unknown scope {scope!r}; use one of {SCOPES}")
    return list(keep)


def merged_rest(
    keys: torch.Tensor,
    values: torch.Tensor,
    weight: torch.Tensor,
    keep: torch.Tensor,
    m: int,
    run: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """m entries per kv head that stand for its evicted tokens: keys, values [H, T, D], weight and
    keep [H, T] -> keys, values [H, m, D] and bias [H, m]. run None: all the evicted tokens, in order,
    are cut into m runs. run R: only the m*R evicted tokens of highest weight, in order, cut into
    runs of R (the rest stay evicted). Each entry is its run's weight-averaged key and value, with
    bias log(run length), so it carries the run's count (a crude Nexus token: no fit). Unused
    entries get bias -inf."""
    h, _, d = keys.shape
    out_k, out_v = torch.zeros(h, m, d), torch.zeros(h, m, d)
    out_b = torch.full((h, m), float("-inf"))
    for head in range(h):
        evicted = (~keep[head]).nonzero()[:, 0]
        if m == 0 or len(evicted) == 0:
            continue
        if run is None:
            runs = torch.tensor_split(evicted, min(m, len(evicted)))
        else:
            best = weight[head, evicted].argsort(descending=True, stable=True)[: m * run]
            runs = torch.split(evicted[best].sort().values, run)
        for j, run_tokens in enumerate(runs):
            w = weight[head, run_tokens].double() + 1e-12
            w = (w / w.sum()).float()[:, None]
            out_k[head, j] = (w * keys[head, run_tokens].float()).sum(0)
            out_v[head, j] = (w * values[head, run_tokens].float()).sum(0)
            out_b[head, j] = math.log(len(run_tokens))
    return out_k, out_v, out_b


def padding(keep: list[torch.Tensor]) -> float:
    """What an answer of [H, N] per layer costs over the entries kept: every head of a layer padded
    to its fullest head, sum over layers of max over heads / sum of the mean (1: no padding)."""
    counts = torch.stack([k.sum(1) for k in keep]).double()  # [L, H]
    return float(counts.amax(1).sum() / counts.mean(1).sum())


def spread(start: int, end: int, count: int = PROBES) -> torch.Tensor:
    """The same indices hf.QueryRecorder.spread picks."""
    return torch.linspace(start, end - 1, min(count, end - start)).round().long()


def study(
    lm: Any,
    item: Any,
    ratios: tuple[float, ...],
    reply_tokens: int = 128,
    signals: tuple[str, ...] = SIGNALS,
    scopes: tuple[str, ...] = SCOPES,
    merge_share: float = MERGE_SHARE,
    near_run: int = NEAR_RUN,
) -> dict[str, float]:
    """For every signal, scope and ratio, KL(full || kept) of the reply and the padding an [H, N]
    answer would need: {'signal/scope@ratio': {'kl': ..., 'padding': ...}}."""
    from transformers import DynamicCache

    from eval.protocol import ASSISTANT_HEADER, compare, scores_per_turn

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
    recon_prompt = tok.encode(hf.REPEAT_PROMPT, add_special_tokens=False)
    turn_index, ends, start = [], [], 0
    for s in history:
        turn_index.append(spread(start, start + len(s.ids)))
        start += len(s.ids)
        ends.append(start)
    per_turn = torch.cat(turn_index)
    recon_start = t + len(recon_prompt)
    n_layers = len(keys)
    repeats: dict[str, Any] = {}  # the repeat passes, run only for the signals that read them

    def whole_repeat() -> tuple[Any, list[torch.Tensor]]:
        """The pass that repeats the whole history: its recorded queries and every layer's keys."""
        if "whole" not in repeats:
            recon_cache = DynamicCache()
            with torch.no_grad(), hf.record_queries() as rec2:
                model(
                    input_ids=torch.tensor([hist_ids + recon_prompt + hist_ids]),
                    past_key_values=recon_cache,
                    use_cache=True,
                    logits_to_keep=1,
                )
            repeats["whole"] = rec2, hf.turn_kv(recon_cache, 0, recon_cache.get_seq_length())[0]
        return repeats["whole"]

    def repeat_scores(layer: int, rows: torch.Tensor) -> torch.Tensor:
        """The whole-history repeat's rows (offsets into the repeated history) scoring the history."""
        rec2, recon_keys = whole_repeat()
        queries = rec2.layer(layer)[:, recon_start + rows]
        return hf.max_attention(queries, recon_keys[layer], recon_start + rows)[:, :t]

    def turn_repeats() -> list[list[torch.Tensor]]:
        """recon-turn: what the eval sends with each turn (hf.turn_scores as each turn ends)."""
        if "turns" not in repeats:
            repeats["turns"] = scores_per_turn(model, cache, [s.ids for s in history], recon_prompt)
        return repeats["turns"]

    def signal(name: str) -> list[torch.Tensor] | None:
        if name == "recent":
            return None
        out = []
        for i in range(n_layers):
            k = hist_keys[i]
            if name == "newest-probes":
                out.append(hf.max_attention(rec.layer(i)[:, spread(t, prefix)], k))
            elif name == "turn-probes":
                out.append(hf.max_attention(rec.layer(i)[:, per_turn], k, per_turn))
            elif name == "prefill":
                out.append(hf.max_attention(rec.layer(i)[:, :t], k, torch.arange(t)))
            elif name == "recon-32":
                out.append(repeat_scores(i, per_turn))
            elif name == "recon":
                out.append(repeat_scores(i, torch.arange(t)))
            elif name == "recon-turn":
                out.append(torch.cat([turn[i] for turn in turn_repeats()], 1))
            elif name == "recon-turn-uncal":  # turn_scores without its factor, the cache's length
                unscaled = [turn[i] / end for turn, end in zip(turn_repeats(), ends, strict=True)]
                out.append(torch.cat(unscaled, 1))
            elif name == "reply":
                out.append(hf.max_attention(rec.layer(i)[:, prefix : prefix + reply], k))
            else:
                raise ValueError(name)
        return out

    pending = []
    shape = (n_layers, *hist_keys[0].shape[:2])
    for name in signals:
        sig = signal(name)
        rows = [("head", 0.0, None)] if sig is None else [(scope, 0.0, None) for scope in scopes]
        if name in MERGED and "global" in scopes:
            rows += [("global", merge_share, None), ("global", merge_share, near_run)]
        for scope, share, run in rows:
            for ratio in ratios:
                keep = keep_masks(sig, shape, ratio * (1 - share), scope)
                m = round(share * ratio * t)
                layer_k, layer_v, bias = [], [], []
                for layer, kept in enumerate(keep):
                    b = torch.zeros(kept.shape[0], prefix)
                    b[:, :t][~kept] = float("-inf")
                    k, v = keys[layer], values[layer]
                    if m:
                        mk, mv, mb = merged_rest(hist_keys[layer], v[:, :t], sig[layer], kept, m, run)
                        k, v, b = torch.cat([k, mk], 1), torch.cat([v, mv], 1), torch.cat([b, mb], 1)
                    layer_k.append(k)
                    layer_v.append(v)
                    bias.append(b)
                merged = "" if not m else "+merged" if run is None else f"+merged{run}"
                label = name if sig is None else f"{name}/{scope}{merged}"
                cache_k = hf.cache_from_tensors(layer_k, layer_v, prefix, bias=bias)
                pending.append((f"{label}@{ratio:g}", cache_k, padding(keep)))
    results = {}
    for i in range(0, len(pending), 8):
        chunk = pending[i : i + 8]
        with torch.no_grad():
            logits = hf.forward(
                model, forced[:, :-1].expand(len(chunk), -1), hf.stack_caches([c for _, c, _ in chunk])
            )
        logp = torch.log_softmax(logits[:, -reply:].float(), -1)
        for row, (key, _, pad) in enumerate(chunk):
            results[key] = {"kl": compare(ref, logp[row], forced[0, header:], None)["kl"], "padding": pad}
    return results


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--dialogues", type=int, default=16)
    p.add_argument("--skip", type=int, default=25)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--max-tokens", type=int, default=2048)
    p.add_argument("--ratios", default="0.5,0.2")
    p.add_argument("--signals", default=",".join(SIGNALS), help="a subset of " + ",".join(SIGNALS))
    p.add_argument("--scopes", default=",".join(SCOPES), help="a subset of " + ",".join(SCOPES))
    p.add_argument("--merge-share", type=float, default=MERGE_SHARE, help="budget share of +merged rows")
    p.add_argument("--merge-run", type=int, default=NEAR_RUN, help="run length of the +mergedR rows")
    p.add_argument("--model-cache", default="eval-out/model-cache")
    p.add_argument("--out", default="eval-out/signals")
    args = p.parse_args(argv)

    from eval import dialogues
    from eval import model as model_mod
    from eval.protocol import Item

    ratios = tuple(float(r) for r in args.ratios.split(","))
    signals, scopes = tuple(args.signals.split(",")), tuple(args.scopes.split(","))
    for name, given, known in (("signal", signals, SIGNALS), ("scope", scopes, SCOPES)):
        if unknown := set(given) - set(known):
            p.error(f"unknown {name} {sorted(unknown)}; use some of {','.join(known)}")
    lm = model_mod.load(args.model_cache)
    selected = dialogues.select(
        lm.tokenizer, args.skip + args.dialogues, seed=args.seed, max_tokens=args.max_tokens
    )[args.skip :]
    started = time.perf_counter()
    per_item = []
    for n, d in enumerate(selected):
        results = study(
            lm,
            Item(dialogue=d),
            ratios,
            signals=signals,
            scopes=scopes,
            merge_share=args.merge_share,
            near_run=args.merge_run,
        )
        per_item.append({"id": d.id, "results": results})
        print(f"[{n + 1}/{len(selected)}] {d.id} {time.perf_counter() - started:.0f}s", flush=True)
    keys = list(per_item[0]["results"])
    mean = {
        k: {m: sum(it["results"][k][m] for it in per_item) / len(per_item) for m in ("kl", "padding")}
        for k in keys
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    result = {
        "args": vars(args),
        "mean": mean,
        "items": per_item,
        "seconds": time.perf_counter() - started,
    }
    (out / "signals.json").write_text(json.dumps(result, indent=1))
    labels = sorted({k.rpartition("@")[0] for k in keys}, key=lambda s: keys.index(f"{s}@{ratios[0]:g}"))
    print(
        "| signal / scope | "
        + " | ".join(f"KL @ {r:g}" for r in ratios)
        + " | "
        + " | ".join(f"padding @ {r:g}" for r in ratios)
        + " |"
    )
    print("|---|" + "---|" * (2 * len(ratios)))
    for label in labels:
        row = [f"{mean[f'{label}@{r:g}']['kl']:.4f}" for r in ratios]
        row += [f"{mean[f'{label}@{r:g}']['padding']:.2f}" for r in ratios]
        print(f"| {label} | " + " | ".join(row) + " |")
    return result


if __name__ == "__main__":
    main()
