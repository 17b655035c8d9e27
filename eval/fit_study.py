"""Does a least-squares fit of the answer's entries help? A study of Attention-Matching-style Nexus fits.

SONIC's scored answer keeps the best exact tokens of the history plus merged entries (a run's
score-weighted mean key and value, bias log(run length)). Attention Matching (arXiv 2602.16284)
keeps the keys and fits the rest for a set of reference queries: each entry's weight w = e^b by
non-negative least squares so that the compact cache carries the history's attention mass, then the
values by ridge least squares so that it gives the history's attention output. This study takes
the real server's answer at each ratio, refits it in Python with several reference sets, and
teacher-forces the reply exactly as eval.run does; the entries and their count do not change, so
every row holds the same memory as `base`.

Reference rows (each query of a kv head's group, attending causally: a query sees the history
tokens before it):
  turn-probes  32 queries spread over each turn of the prefix: what a worker sends and the tier
               stores today.
  recon-32     32 per turn of the queries of hf.turn_scores' repeat pass (as each turn ends, the
               repeat prompt and the turn again): what a worker could send instead, same wire cost.
  recon        all of those repeat queries: as many rows as the turn has tokens, for every query
               head (three times the turn's keys for SmolLM2), too many to send.
  reply        the teacher-forced reply's own queries: the oracle, which no tier has.
Fits:
  all          every history entry: NNLS biases (target: each row's history mass), then values
               (target: each row's history output), ridge 0.1 x mean diagonal towards the old ones.
  merged       only the merged entries, to the evicted tokens' share of each row's mass and output
               (kept tokens stay exact).

  .venv/bin/python -m eval.fit_study --skip 25 --dialogues 10 --out eval-out/fit-study

docs/experiments/sonic-fit-study.md has the results.
"""

from __future__ import annotations

import argparse
import copy
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from transformers import DynamicCache

from eval.protocol import ASSISTANT_HEADER, compare, scores_per_turn
from nexuskv import Client, hf

ROWS = ("turn-probes", "recon-32", "recon", "reply")
FITS = ("all", "merged")
PROBES = 32
RIDGE = 0.1
NNLS_STEPS = 300


def nnls(a: torch.Tensor, target: torch.Tensor, w0: torch.Tensor, steps: int = NNLS_STEPS) -> torch.Tensor:
    """argmin_{w >= 0} |a w - target|^2 + mu |w - w0|^2 (mu = 1e-3 x mean diagonal of a^T a), by
    accelerated projected gradient (FISTA) from w0."""
    g = a.T @ a
    n = g.shape[0]
    mu = 1e-3 * torch.trace(g) / n + 1e-300
    g = g + mu * torch.eye(n, dtype=g.dtype)
    h = a.T @ target + mu * w0
    step = 1.0 / torch.linalg.eigvalsh(g)[-1]
    w, y, t = w0.clone(), w0.clone(), 1.0
    for _ in range(steps):
        w_next = torch.clamp(y - step * (g @ y - h), min=0)
        t_next = (1 + (1 + 4 * t * t) ** 0.5) / 2
        y = w_next + (t - 1) / t_next * (w_next - w)
        w, t = w_next, t_next
    return w


def ridge(b: torch.Tensor, target: torch.Tensor, x0: torch.Tensor, strength: float = RIDGE) -> torch.Tensor:
    """argmin_x |b x - target|^2 + lam |x - x0|^2, lam = strength x mean diagonal of b^T b."""
    g = b.T @ b
    n = g.shape[0]
    lam = strength * torch.trace(g) / n + 1e-300
    return torch.linalg.solve(g + lam * torch.eye(n, dtype=g.dtype), b.T @ target + lam * x0)


def refit_head(
    keys: torch.Tensor,
    values: torch.Tensor,
    queries: torch.Tensor,
    horizon: torch.Tensor,
    entries: dict[str, torch.Tensor],
    fit: str,
    strength: float = RIDGE,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One kv head. keys/values [N, D]: the history (token i at position i). queries [R, D]
    (post-rotary) see the history tokens before horizon [R]. entries: the answer's history entries,
    "keys", "values" [n, D], "bias", "positions" [n]. Returns the new bias and values (ridge
    `strength` towards the old values)."""
    d = keys.shape[1]
    q, k, v = queries.double(), keys.double(), values.double()
    ck, cv, cb, cpos = (entries[x] for x in ("keys", "values", "bias", "positions"))
    ck, cv, cb = ck.double(), cv.double(), cb.double()
    visible = torch.arange(k.shape[0])[None, :] < horizon[:, None]
    seen = visible.any(1)
    q, visible, horizon = q[seen], visible[seen], horizon[seen]
    logits = (q @ k.T / d**0.5).masked_fill(~visible, float("-inf"))
    top = logits.max(1).values
    e = torch.exp(logits - top[:, None])
    mass = e.sum(1)
    # Entries that are exact tokens (bias 0, key as stored); the others are merged entries.
    exact = (cb == 0) & torch.isclose(ck, k[cpos.clamp(0, k.shape[0] - 1)], atol=1e-6).all(1)
    if fit == "all":
        movable = torch.ones_like(exact)
        target_mass = torch.ones_like(mass)
        target_out = (e @ v) / mass[:, None]
    else:
        movable = ~exact
        evicted = torch.ones(k.shape[0], dtype=torch.bool)
        evicted[cpos[exact]] = False
        e_ev = e * evicted[None, :]
        target_mass = e_ev.sum(1) / mass
        target_out = (e_ev @ v) / mass[:, None]
    if not movable.any():
        return cb.float(), cv.float()
    reach = cpos[movable][None, :] < horizon[:, None]
    a = torch.exp(q @ ck[movable].T / d**0.5 - top[:, None]) * reach / mass[:, None]
    w = nnls(a, target_mass, torch.exp(cb[movable]))
    weighted = a * w[None, :]
    if fit == "all":  # the output itself: each row's weights normalized
        weighted = weighted / weighted.sum(1, keepdim=True).clamp(min=1e-300)
    new_v = ridge(weighted, target_out, cv[movable], strength)
    bias, vals = cb.clone(), cv.clone()
    bias[movable] = torch.log(w.clamp(min=1e-35))
    vals[movable] = new_v
    return bias.float(), vals.float()


def refit_answer(
    answer: Any,
    cache: Any,
    history_len: int,
    rows: list[torch.Tensor],
    horizon: torch.Tensor,
    fit: str,
) -> hf.NexusCache:
    """The answer with every kv head's history entries refit to rows[layer] [Hq, R, D]."""
    out = hf.NexusCache(answer.next_position, [None] * len(answer.layers))
    k_full, v_full = hf.turn_kv(cache, 0, history_len)
    for li, layer in enumerate(answer.layers):
        bias, values = layer.bias.copy(), layer.values.copy()
        heads = layer.keys.shape[0]
        group = rows[li].shape[0] // heads
        for h in range(heads):
            pos = torch.from_numpy(layer.positions[h])
            b = torch.from_numpy(layer.bias[h])
            mine = (pos >= 0) & (pos < history_len) & torch.isfinite(b)
            if not mine.any():
                continue
            entries = {
                "keys": torch.from_numpy(layer.keys[h])[mine],
                "values": torch.from_numpy(layer.values[h])[mine],
                "bias": b[mine],
                "positions": pos[mine],
            }
            q = rows[li][h * group : (h + 1) * group].reshape(-1, layer.keys.shape[2])
            nb, nv = refit_head(k_full[li][h], v_full[li][h], q, horizon.repeat(group), entries, fit)
            idx = np.nonzero(mine.numpy())[0]
            bias[h, idx], values[h, idx] = nb.numpy(), nv.numpy()
        out.bias[li] = torch.from_numpy(bias)
        DynamicCache.update(out, torch.from_numpy(layer.keys)[None], torch.from_numpy(values)[None], li)
    out.initial_length = answer.entries_per_layer[0]
    return out


def repeat_queries(
    model: Any, cache: Any, turns: list[list[int]], prompt_ids: list[int]
) -> list[tuple[list[torch.Tensor], int]]:
    """Per turn, the queries of hf.turn_scores' repeat pass (per layer [Hq, T, D], the prompt's
    dropped) and the turn's end: they see the history before it."""
    ends = np.cumsum([len(t) for t in turns]).tolist()
    work = copy.deepcopy(cache)
    out: list[tuple[list[torch.Tensor], int]] = [([], 0)] * len(turns)
    for i in reversed(range(len(turns))):
        work.crop(ends[i])
        with torch.no_grad(), hf.record_queries() as rec:
            model(
                input_ids=torch.tensor([prompt_ids + turns[i]]),
                past_key_values=work,
                use_cache=True,
                logits_to_keep=1,
            )
        out[i] = ([q[:, len(prompt_ids) :] for q in rec.probes(0, len(prompt_ids) + len(turns[i]))], ends[i])
        work.crop(ends[i])
    return out


def _stack(parts: list[tuple[list[torch.Tensor], torch.Tensor]]) -> tuple[list[torch.Tensor], torch.Tensor]:
    layers = len(parts[0][0])
    return [torch.cat([p[0][li] for p in parts], 1) for li in range(layers)], torch.cat([p[1] for p in parts])


def _spread(n: int, count: int) -> torch.Tensor:
    return torch.linspace(0, n - 1, min(count, n)).round().long()


def evaluate(lm: Any, client: Client, index: int, dialogue: Any, ratios: list[float]) -> dict[str, Any]:
    model, tok = lm.model, lm.tokenizer
    header = len(tok.encode(ASSISTANT_HEADER, add_special_tokens=False))
    repeat_ids = tok.encode(hf.REPEAT_PROMPT, add_special_tokens=False)
    segs = dialogue.segments
    history, last_user, final = segs[:-2], segs[-2], segs[-1]
    hist_ids = [i for s in history for i in s.ids]
    hist_len, prefix_len = len(hist_ids), len(hist_ids) + len(last_user.ids)
    reply = min(128, len(final.ids) - header)
    forced = torch.tensor([final.ids[: header + reply]])
    forced_in, targets = forced[:, :-1], forced[0, header:]
    cache = DynamicCache()
    with torch.no_grad(), hf.record_queries() as rec:
        model(input_ids=torch.tensor([hist_ids]), past_key_values=cache, use_cache=True, logits_to_keep=1)
        out = model(
            input_ids=torch.cat([torch.tensor([last_user.ids]), forced_in], 1),
            past_key_values=cache,
            use_cache=True,
            logits_to_keep=reply,
        )
    ref = torch.log_softmax(out.logits[0].float(), -1)
    cache.crop(prefix_len)
    turns = [s.ids for s in segs[:-1]]
    scores = scores_per_turn(model, cache, turns, repeat_ids)
    sid = f"fit-study-{index}-{dialogue.id}"
    start, probe_rows = 0, []
    for turn, seg in enumerate(segs[:-1]):
        end = start + len(seg.ids)
        keys, values = hf.turn_kv(cache, start, end)
        probes, offsets = rec.spread(start, end, PROBES)
        probe_rows.append((probes, torch.tensor(offsets) + start + 1))  # a query sees itself
        client.append_turn(
            sid,
            turn,
            keys,
            values,
            probes,
            role=seg.role,
            model_id=lm.model_id,
            first_position=start,
            probe_offsets=offsets,
            token_scores=scores[turn],
        )
        start = end
    recon = repeat_queries(model, cache, turns, repeat_ids)
    rows = {
        "turn-probes": _stack(probe_rows),
        "recon-32": _stack(
            [
                (
                    [q[:, _spread(q.shape[1], PROBES)] for q in qs],
                    torch.full((min(PROBES, qs[0].shape[1]),), end),
                )
                for qs, end in recon
            ]
        ),
        "recon": _stack([(qs, torch.full((qs[0].shape[1],), end)) for qs, end in recon]),
        "reply": (
            rec.probes(prefix_len, prefix_len + forced_in.shape[1]),
            torch.full((forced_in.shape[1],), hist_len),
        ),
    }
    results: dict[str, float] = {}
    for ratio in ratios:
        answer = client.get_cache(sid, method="sonic", keep_ratio=ratio, keep_recent_turns=1, bias=True)
        caches = {f"base@{ratio:g}": hf.cache_from_answer(answer)}
        for name, (q, horizon) in rows.items():
            for fit in FITS:
                caches[f"{name}-{fit}@{ratio:g}"] = refit_answer(answer, cache, hist_len, q, horizon, fit)
        for key, c in caches.items():
            logp = torch.log_softmax(hf.forward(model, forced_in, c)[0, -reply:].float(), -1)
            results[key] = compare(ref, logp, targets, None)["kl"]
    client.delete(sid)
    return {"index": index, "id": dialogue.id, "history_tokens": hist_len, "kl": results}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m eval.fit_study", description=__doc__.split("\n\n")[0])
    p.add_argument("--skip", type=int, default=25)
    p.add_argument("--dialogues", type=int, default=10)
    p.add_argument("--ratios", default="0.1,0.2")
    p.add_argument("--server-binary", default="build/bin/nexuskv-server")
    p.add_argument("--out", default="eval-out/fit-study")
    p.add_argument("--threads", type=int, default=0)
    args = p.parse_args(argv)
    from eval import dialogues
    from eval import model as model_mod
    from nexuskv.local_server import LocalServer

    if args.threads:
        torch.set_num_threads(args.threads)
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    lm = model_mod.load()
    selected = dialogues.select(lm.tokenizer, args.skip + args.dialogues, seed=0, max_tokens=2048)[
        args.skip :
    ]
    ratios = [float(r) for r in args.ratios.split(",")]
    server = LocalServer(args.server_binary, log_path=out_dir / "server.log").start()
    records = []
    try:
        client = Client(server.target)
        for i, d in enumerate(selected):
            t0 = time.perf_counter()
            records.append(evaluate(lm, client, args.skip + i, d, ratios))
            (out_dir / "results.json").write_text(json.dumps(records, indent=1))
            kl = records[-1]["kl"]
            print(
                f"{i} {d.id} {time.perf_counter() - t0:.0f}s", " ".join(f"{k}={v:.4f}" for k, v in kl.items())
            )
    finally:
        server.stop()
    print(summary(records))


def summary(records: list[dict[str, Any]]) -> str:
    """Mean KL per row and its paired difference against base at the same ratio (mean +- s.e.)."""
    lines = [f"| row | mean KL | vs base (n={len(records)}) |", "|---|---|---|"]
    for key in records[0]["kl"]:
        kl = np.array([r["kl"][key] for r in records])
        base = np.array([r["kl"]["base@" + key.split("@")[1]] for r in records])
        diff = kl - base
        se = diff.std(ddof=1) / len(diff) ** 0.5 if len(diff) > 1 else float("nan")
        lines.append(f"| {key} | {kl.mean():.4f} | {diff.mean():+.4f} +- {se:.4f} |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
