"""Paired differences between two methods of one run, on the items where both ran.

  python -m eval.paired eval-out/merged-cal sonic kvpress:kvzip
  python -m eval.paired eval-out/signals-merge recon-turn/global+merged16 recon/global

A run is an eval.run folder (results.json) or an eval.signals folder (signals.json: KL only, every
item a dialogue).

Means over different items (KVzip runs on every 4th item only) are not comparable; the mean of
per-item differences, with its standard error, is. KL and top-1 over the dialogues, and over the
needle items (scored on the fact, not the reply) the answer value's log-probability and whether
greedy decoding recalls it, at every keep_ratio both methods have; on how many items the first
method is better, with the mean held fraction of each (the memory the engine holds,
eval.report.held_of): compare methods at the same held fraction, not the same ratio asked for.
To pair two keep_ratios (a method whose answers hold less than asked, against a press at the
fraction it holds), name them: `sonic@0.2 kvpress:snapkv@0.2`; a row without a ratio (`full`)
pairs with every ratio of the other: `sonic@0.2 full`.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path
from typing import Any

from eval.report import held_of

# (metric, item kind, lower is better)
METRICS = (
    ("kl", "dialogue", True),
    ("top1", "dialogue", False),
    ("needle_logp", "needle", False),
    ("needle_hit", "needle", False),
)


def paired(run: dict[str, Any], first: str, second: str) -> list[dict[str, Any]]:
    """One row per (keep_ratio, metric): n, both means, the mean difference first - second, its
    standard error, the items where `first` is better (lower KL; higher top-1, needle log p and
    hit), and each one's mean held fraction. `first` and `second` are methods (paired at every
    keep_ratio of `first`), method@ratio (paired at that), or a row without a ratio such as
    `full`. The two means are keyed by `first` and `second` as given."""
    keys = set(run["config_keys"])

    def ratios(label: str) -> list[str]:
        if "@" in label:
            return [label.partition("@")[2]]
        return sorted(
            {k.partition("@")[2] for k in keys if k.startswith(label + "@")}, key=float, reverse=True
        )

    def key(label: str, ratio: str) -> str:
        return label if "@" in label or label in keys else f"{label}@{ratio}"

    rows = []
    for ratio in ratios(first) or ratios(second):
        key_a, key_b = key(first, ratio), key(second, ratio)
        for metric, kind, lower_is_better in METRICS:
            pairs = []
            helds = []
            for item in run["items"]:
                results = item["results"]
                a, b = results.get(key_a), results.get(key_b)
                if item["kind"] == kind and a and b and metric in a and metric in b:
                    pairs.append((a[metric], b[metric]))
                    helds.append((held_of(a), held_of(b)))
            if len(pairs) < 2:
                continue
            n = len(pairs)
            diffs = [x - y for x, y in pairs]
            mean = sum(diffs) / n
            se = math.sqrt(sum((d - mean) ** 2 for d in diffs) / (n - 1) / n)
            better = sum(1 for d in diffs if (d < 0 if lower_is_better else d > 0))
            rows.append(
                {
                    "keep_ratio": float(ratio),
                    "metric": metric,
                    "n": n,
                    first: sum(x for x, _ in pairs) / n,
                    second: sum(y for _, y in pairs) / n,
                    "diff": mean,
                    "se": se,
                    "first_better": better,
                    "held": (sum(h for h, _ in helds) / n, sum(h for _, h in helds) / n),
                }
            )
    return rows


def load(folder: Path) -> dict[str, Any]:
    """A run as paired() reads it, from an eval.run folder or an eval.signals one."""
    if (folder / "results.json").exists():
        return json.loads((folder / "results.json").read_text())
    study = json.loads((folder / "signals.json").read_text())
    items = [{"kind": "dialogue", "results": item["results"]} for item in study["items"]]
    return {"config_keys": list(study["items"][0]["results"]) if items else [], "items": items}


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("run", help="an eval.run folder (results.json) or an eval.signals one (signals.json)")
    p.add_argument("first")
    p.add_argument("second")
    args = p.parse_args(argv)
    run = load(Path(args.run))
    rows = paired(run, args.first, args.second)
    if not rows:
        p.error(f"no item has both {args.first} and {args.second} at one keep_ratio")
    first, second = args.first, args.second
    print(f"| keep_ratio | held | metric | n | {first} | {second} | difference | {first} better |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['keep_ratio']:g} | {r['held'][0]:.3f} / {r['held'][1]:.3f} | {r['metric']} | {r['n']} "
            f"| {r[first]:.4f} | {r[second]:.4f} | {r['diff']:+.4f} ± {r['se']:.4f} "
            f"| {r['first_better']} / {r['n']} |"
        )
    return rows


if __name__ == "__main__":
    main()
