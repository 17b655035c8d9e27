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
  draft        the queries of a draft reply: the worker greedy-decodes the reply's length on the
               served answer (the assistant header, then its own tokens) and sends those queries
               back for a refit, a second round trip. Self-generated queries: anyone can have
               them, one draft decode later. Two more rows use them to pick instead of fit:
               draft-pick is the server's answer at the same budget with the draft appended as a
               raw turn whose probes are all its queries (so the question's share,
               --lookahead_share, is picked by the draft), the draft's entries then taken off;
               draft-pick-all refits that answer to the draft's queries. draft2-all: a second
               draft on the answer refit to the first, and the answer refit to its queries.
               draft-choose: draft-all or draft-pick, whichever reproduces the history's
               attention better (history_error) for the draft's odd rows, draft-all fitted to
               its even rows for the comparison.
Fits:
  all          every history entry: NNLS biases (target: each row's history mass), then values
               (target: each row's history output), ridge 0.1 x mean diagonal towards the old ones.
  merged       only the merged entries, to the evicted tokens' share of each row's mass and output
               (kept tokens stay exact).

  .venv/bin/python -m eval.fit_study --skip 25 --dialogues 10 --out eval-out/fit-study
  .venv/bin/python -m eval.fit_study --rows draft,reply ...   # a subset of the rows
  .venv/bin/python -m eval.fit_study --summary A/results.json B/results.json   # runs' tables, pooled
  .venv/bin/python -m eval.fit_study --pick-flags=--lookahead_share=0.5 ...   # draft-pick's server

docs/experiments/sonic-fit-study.md has the results.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from transformers import DynamicCache

from eval.protocol import ASSISTANT_HEADER, compare, scores_per_turn
from nexuskv import Client, hf

ROWS = ("turn-probes", "recon-32", "recon", "reply", "draft")
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


def refitted(
    answer: Any,
    cache: Any,
    history_len: int,
    rows: list[torch.Tensor],
    horizon: torch.Tensor,
    fit: str,
) -> Any:
    """The answer (a CacheAnswer) with every kv head's history entries refit to rows[layer]
    [Hq, R, D]; keys, positions and counts unchanged."""
    k_full, v_full = hf.turn_kv(cache, 0, history_len)
    layers = []
    for li, layer in enumerate(answer.layers):
        bias, values = layer.bias.copy(), layer.values.copy()
        heads = layer.keys.shape[0]
        group = rows[li].shape[0] // heads
        for h in range(heads):
            mine = _history_entries(layer, h, history_len)
            if not mine.any():
                continue
            entries = {
                "keys": torch.from_numpy(layer.keys[h])[mine],
                "values": torch.from_numpy(layer.values[h])[mine],
                "bias": torch.from_numpy(layer.bias[h])[mine],
                "positions": torch.from_numpy(layer.positions[h])[mine],
            }
            q = rows[li][h * group : (h + 1) * group].reshape(-1, layer.keys.shape[2])
            nb, nv = refit_head(k_full[li][h], v_full[li][h], q, horizon.repeat(group), entries, fit)
            idx = np.nonzero(mine.numpy())[0]
            bias[h, idx], values[h, idx] = nb.numpy(), nv.numpy()
        layers.append(dataclasses.replace(layer, bias=bias, values=values))
    return dataclasses.replace(answer, layers=layers)


def _history_entries(layer: Any, head: int, history_len: int) -> torch.Tensor:
    pos = torch.from_numpy(layer.positions[head])
    return (pos >= 0) & (pos < history_len) & torch.isfinite(torch.from_numpy(layer.bias[head]))


def history_error(answer: Any, cache: Any, history_len: int, rows: list[torch.Tensor]) -> float:
    """How far the answer's history entries are from the history for queries rows[layer]
    [Hq, R, D] that see all of it: per row, |sum_j e^(q.k_j/sqrt(D) + b_j) v_j - sum_i
    e^(q.k_i/sqrt(D)) v_i|^2 / |sum_i ...|^2 (the unnormalized output, so mass and output both
    count), averaged over rows, heads and layers. Needs no reply: the draft's rows will do."""
    k_full, v_full = hf.turn_kv(cache, 0, history_len)
    errors = []
    for li, layer in enumerate(answer.layers):
        heads, d = layer.keys.shape[0], layer.keys.shape[2]
        group = rows[li].shape[0] // heads
        for h in range(heads):
            q = rows[li][h * group : (h + 1) * group].reshape(-1, d).double()
            logits = q @ k_full[li][h].double().T / d**0.5
            top = logits.max(1, keepdim=True).values
            want = torch.exp(logits - top) @ v_full[li][h].double()
            mine = _history_entries(layer, h, history_len)
            k = torch.from_numpy(layer.keys[h])[mine].double()
            v = torch.from_numpy(layer.values[h])[mine].double()
            b = torch.from_numpy(layer.bias[h])[mine].double()
            got = torch.exp(q @ k.T / d**0.5 + b[None, :] - top) @ v
            errors.append(((got - want).square().sum(1) / want.square().sum(1).clamp(min=1e-300)).mean())
    return float(torch.stack(errors).mean())


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


def draft(
    model: Any, cache: hf.NexusCache, header: torch.Tensor, length: int
) -> tuple[list[torch.Tensor], list[torch.Tensor], list[torch.Tensor]]:
    """A draft reply on `cache` (extended in place): the assistant header, then `length` greedy
    tokens. Its queries, keys and values per layer ([Hq or H, header + length - 1, D]; the last
    token is never fed)."""
    with hf.record_queries() as rec:
        hf.greedy_generate(model, header, cache, length)
    fed = header.shape[1] + length - 1
    # Layers of a scored answer hold different counts: the draft is each layer's last `fed`.
    layers = range(hf.num_layers(cache))
    keys = [cache.layers[li].keys[0, :, -fed:].contiguous() for li in layers]
    values = [cache.layers[li].values[0, :, -fed:].contiguous() for li in layers]
    return rec.probes(0, fed), keys, values


def without_tail(answer: Any, tail: int, next_position: int) -> Any:
    """The answer less its last `tail` entries per layer, which must be the raw tokens at
    next_position .. next_position + tail - 1 in every kv head (a turn appended only to steer)."""
    layers = []
    for layer in answer.layers:
        want = np.arange(next_position, next_position + tail)
        if not (layer.positions[:, -tail:] == want).all():
            raise ValueError(f"layer {layer.layer}: the last {tail} entries are not the steering turn")
        layers.append(
            dataclasses.replace(
                layer,
                keys=layer.keys[:, :-tail],
                values=layer.values[:, :-tail],
                bias=None if layer.bias is None else layer.bias[:, :-tail],
                positions=layer.positions[:, :-tail],
            )
        )
    return dataclasses.replace(
        answer,
        layers=layers,
        next_position=next_position,
        entries_per_layer=[n - tail for n in answer.entries_per_layer],
    )


def evaluate(
    lm: Any,
    client: Client,
    index: int,
    dialogue: Any,
    ratios: list[float],
    names: Sequence[str] = ROWS,
    span: tuple[int, int] | None = None,
    draft_tokens: int = 0,
    picker: Client | None = None,
) -> dict[str, Any]:
    """One dialogue: KL of every row against full context; with a needle item's value span, the
    value's log p and hit per row too (key "full": full context's own). draft_tokens: the drafts'
    length (0: the reply's). picker: the server that answers draft-pick (default: client's)."""
    picker = picker or client
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
    start, probe_rows, appends = 0, [], []
    for turn, seg in enumerate(segs[:-1]):
        end = start + len(seg.ids)
        keys, values = hf.turn_kv(cache, start, end)
        probes, offsets = rec.spread(start, end, PROBES)
        probe_rows.append((probes, torch.tensor(offsets) + start + 1))  # a query sees itself
        appends.append(
            dict(
                turn=turn,
                keys=keys,
                values=values,
                probe_queries=probes,
                role=seg.role,
                model_id=lm.model_id,
                first_position=start,
                probe_offsets=offsets,
                token_scores=scores[turn],
            )
        )
        start = end
    for a in appends:
        client.append_turn(sid, **a)
    rows: dict[str, tuple[list[torch.Tensor], torch.Tensor]] = {}
    if "turn-probes" in names:
        rows["turn-probes"] = _stack(probe_rows)
    if "recon-32" in names or "recon" in names:
        recon = repeat_queries(model, cache, turns, repeat_ids)
        if "recon-32" in names:
            rows["recon-32"] = _stack(
                [
                    (
                        [q[:, _spread(q.shape[1], PROBES)] for q in qs],
                        torch.full((min(PROBES, qs[0].shape[1]),), end),
                    )
                    for qs, end in recon
                ]
            )
        if "recon" in names:
            rows["recon"] = _stack([(qs, torch.full((qs[0].shape[1],), end)) for qs, end in recon])
    if "reply" in names:
        rows["reply"] = (
            rec.probes(prefix_len, prefix_len + forced_in.shape[1]),
            torch.full((forced_in.shape[1],), hist_len),
        )
    results: dict[str, float] = {}
    held: dict[str, list[int]] = {}
    needle: dict[str, dict[str, float]] = {}
    draft_s: dict[str, float] = {}  # seconds to decode the first draft, per ratio
    errors: dict[str, dict[str, float]] = {}  # history_error on held-out draft rows, per ratio
    choice: dict[str, str] = {}  # the row draft-choose took, per ratio
    for ratio in ratios:
        answer = client.get_cache(sid, method="sonic", keep_ratio=ratio, keep_recent_turns=1, bias=True)
        caches = {f"base@{ratio:g}": hf.cache_from_answer(answer)}
        if "draft" in names:
            t0 = time.perf_counter()
            q, dk, dv = draft(
                model, hf.cache_from_answer(answer), forced_in[:, :header], draft_tokens or reply
            )
            draft_s[f"{ratio:g}"] = time.perf_counter() - t0
            rows["draft"] = (q, torch.full((q[0].shape[1],), hist_len))
            # A second draft, on the answer refit to the first one's queries; the answer refit to it.
            refit = hf.cache_from_answer(refitted(answer, cache, hist_len, q, rows["draft"][1], "all"))
            q2, _, _ = draft(model, refit, forced_in[:, :header], draft_tokens or reply)
            caches[f"draft2-all@{ratio:g}"] = hf.cache_from_answer(
                refitted(answer, cache, hist_len, q2, torch.full((q2[0].shape[1],), hist_len), "all")
            )
            # The same budget again, its question's share picked by the draft's queries: the draft
            # goes in as one more raw turn whose probes are all its queries, then comes off.
            steered = f"{sid}-draft-{ratio:g}"
            for a in appends:
                picker.append_turn(steered, **a)
            picker.append_turn(
                steered,
                len(appends),
                dk,
                dv,
                q,
                role="assistant",
                model_id=lm.model_id,
                first_position=prefix_len,
            )
            picked = picker.get_cache(
                steered, method="sonic", keep_ratio=ratio, keep_recent_turns=2, bias=True
            )
            picker.delete(steered)
            picked = without_tail(picked, q[0].shape[1], prefix_len)
            caches[f"draft-pick@{ratio:g}"] = hf.cache_from_answer(picked)
            caches[f"draft-pick-all@{ratio:g}"] = hf.cache_from_answer(
                refitted(picked, cache, hist_len, q, rows["draft"][1], "all")
            )
            held[f"draft-pick@{ratio:g}"] = picked.entries_per_layer
            # Choose between draft-all and draft-pick by the history's attention for held-out draft
            # rows: draft-all fitted to the even rows, both judged on the odd ones.
            even, odd = [x[:, 0::2] for x in q], [x[:, 1::2] for x in q]
            fitted = refitted(answer, cache, hist_len, even, torch.full((even[0].shape[1],), hist_len), "all")
            errors[f"{ratio:g}"] = {
                "base": history_error(answer, cache, hist_len, odd),
                "draft-all": history_error(fitted, cache, hist_len, odd),
                "draft-pick": history_error(picked, cache, hist_len, odd),
            }
            chosen = min(("draft-all", "draft-pick"), key=errors[f"{ratio:g}"].__getitem__)
            choice[f"{ratio:g}"] = chosen
        held[f"base@{ratio:g}"] = answer.entries_per_layer
        for name, (q, horizon) in rows.items():
            for fit in FITS:
                caches[f"{name}-{fit}@{ratio:g}"] = hf.cache_from_answer(
                    refitted(answer, cache, hist_len, q, horizon, fit)
                )
        if f"{ratio:g}" in choice:
            caches[f"draft-choose@{ratio:g}"] = copy.deepcopy(caches[f"{choice[f'{ratio:g}']}@{ratio:g}"])
        for key, c in caches.items():
            logp = torch.log_softmax(hf.forward(model, forced_in, c)[0, -reply:].float(), -1)
            metrics = compare(ref, logp, targets, span)
            results[key] = metrics["kl"]
            if span is not None:
                needle[key] = {"logp": metrics["needle_logp"], "hit": metrics["needle_hit"]}
    client.delete(sid)
    record = {"index": index, "id": dialogue.id, "history_tokens": hist_len, "kl": results, "entries": held}
    if draft_s:
        record.update(draft_s=draft_s, draft_errors=errors, draft_choice=choice)
    if span is not None:
        own = compare(ref, ref, targets, span)
        record["needle"] = {"full": {"logp": own["needle_logp"], "hit": own["needle_hit"]}, **needle}
    return record


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m eval.fit_study", description=__doc__.split("\n\n")[0])
    p.add_argument("--skip", type=int, default=25)
    p.add_argument("--dialogues", type=int, default=10)
    p.add_argument(
        "--needles", type=int, default=0, help="needle items after the dialogues, as eval.run builds them"
    )
    p.add_argument("--ratios", default="0.1,0.2")
    p.add_argument("--server-binary", default="build/bin/nexuskv-server")
    p.add_argument("--server-flags", default="", help="extra server flags, space separated")
    p.add_argument("--out", default="eval-out/fit-study")
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--draft-tokens", type=int, default=0, help="tokens per draft (0: the reply's length)")
    p.add_argument(
        "--pick-flags",
        default=None,
        help="draft-pick asks a second server with these flags (e.g. a larger share)",
    )
    p.add_argument("--rows", default=",".join(ROWS), help=f"reference rows to fit, of {','.join(ROWS)}")
    p.add_argument("--summary", nargs="+", metavar="RESULTS", help="only summarize these results.json files")
    args = p.parse_args(argv)
    if args.summary:
        print(summary(merge(args.summary)))
        return
    names = args.rows.split(",")
    if unknown := set(names) - set(ROWS):
        p.error(f"unknown rows {sorted(unknown)}; choose from {','.join(ROWS)}")
    from eval import dialogues, needle
    from eval import model as model_mod
    from nexuskv.local_server import LocalServer

    if args.threads:
        torch.set_num_threads(args.threads)
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    lm = model_mod.load()
    selected = dialogues.select(
        lm.tokenizer, args.skip + args.dialogues + args.needles, seed=0, max_tokens=2048
    )[args.skip :]
    # eval.run's item sets: --skip S --dialogues N --needles M here are its items of the same flags.
    items: list[tuple[Any, tuple[int, int] | None]] = [(d, None) for d in selected[: args.dialogues]]
    items += [
        (n.dialogue, n.value_span)
        for n in needle.make_items(
            lm.tokenizer, selected[args.dialogues :] + selected[: args.dialogues], args.needles, seed=1
        )
    ]
    ratios = [float(r) for r in args.ratios.split(",")]
    server = LocalServer(
        args.server_binary, extra_args=args.server_flags.split(), log_path=out_dir / "server.log"
    ).start()
    picker = None
    if args.pick_flags is not None:
        picker = LocalServer(
            args.server_binary, extra_args=args.pick_flags.split(), log_path=out_dir / "picker.log"
        ).start()
    records = []
    try:
        client = Client(server.target)
        pick = Client(picker.target) if picker is not None else None
        for i, (d, span) in enumerate(items):
            t0 = time.perf_counter()
            records.append(
                evaluate(lm, client, args.skip + i, d, ratios, names, span, args.draft_tokens, pick)
            )
            (out_dir / "results.json").write_text(json.dumps(records, indent=1))
            kl = records[-1]["kl"]
            print(
                f"{i} {d.id} {time.perf_counter() - t0:.0f}s", " ".join(f"{k}={v:.4f}" for k, v in kl.items())
            )
    finally:
        server.stop()
        if picker is not None:
            picker.stop()
    print(summary(records))


def _paired(diff: np.ndarray, sign: int = -1) -> str:
    """mean +- s.e. of paired differences, and on how many items it is better (sign -1: lower is)."""
    se = diff.std(ddof=1) / len(diff) ** 0.5 if len(diff) > 1 else float("nan")
    return f"{diff.mean():+.4f} +- {se:.4f} (better on {int((sign * diff > 0).sum())})"


def merge(paths: list[str]) -> list[dict[str, Any]]:
    """The records of several runs' results.json, keeping the rows every record has."""
    records = [r for path in paths for r in json.loads(Path(path).read_text())]
    for part in ("kl", "needle"):
        held = [r for r in records if part in r]
        common = set.intersection(*(set(r[part]) for r in held)) if held else set()
        for r in held:
            r[part] = {k: v for k, v in r[part].items() if k in common}
    return records


def summary(records: list[dict[str, Any]]) -> str:
    """Mean and median KL per row over the dialogues and its paired difference against base at the
    same ratio; over the needle items, the value's hits and its log p against base."""
    lines = []
    plain = [r for r in records if "needle" not in r]
    if plain:
        lines += [f"| row | mean KL | median | vs base (n={len(plain)}) |", "|---|---|---|---|"]
        for key in plain[0]["kl"]:
            kl = np.array([r["kl"][key] for r in plain])
            base = np.array([r["kl"]["base@" + key.split("@")[1]] for r in plain])
            lines.append(f"| {key} | {kl.mean():.4f} | {np.median(kl):.4f} | {_paired(kl - base)} |")
    needles = [r for r in records if "needle" in r]
    if needles:
        lines += [
            "",
            f"| row | hits | value log p vs base | hits vs full context (n={len(needles)}) |",
            "|---|---|---|---|",
        ]
        full = np.array([r["needle"]["full"]["hit"] for r in needles])
        for key in needles[0]["needle"]:
            logp = np.array([r["needle"][key]["logp"] for r in needles])
            hits = np.array([r["needle"][key]["hit"] for r in needles])
            at = key.split("@")
            base = np.array([r["needle"]["base@" + at[-1]]["logp"] for r in needles]) if len(at) > 1 else None
            vs_base = _paired(logp - base, +1) if base is not None else ""
            vs_full = _paired(hits - full, +1) if base is not None else ""
            lines.append(f"| {key} | {hits.sum():.0f} | {vs_base} | {vs_full} |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
