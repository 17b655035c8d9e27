"""Paired differences between two methods of one run, on the items where both ran.

  python -m eval.paired eval-out/merged-cal sonic kvpress:kvzip
  python -m eval.paired eval-out/signals-merge recon-turn/global+merged16 recon/global

A run is an eval.run folder (results.json) or an eval.signals folder (signals.json: KL only, every
item a dialogue).

Means over different items (KVzip runs on every 4th item only) are not comparable; the mean of
per-item differences, with its standard error, is. Dialogues only (needle items are scored on the
fact, not the reply): KL and top-1 at every keep_ratio both methods have, and on how many items
the first method is better, with the mean held fraction of each (the memory the engine holds,
eval.report.held_of): compare methods at the same held fraction, not the same ratio asked for.
To pair two keep_ratios (a method whose answers hold less than asked, against a press at the
fraction it holds), name them: `sonic@0.2 kvpress:snapkv@0.2`.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path
from typing import Any

from eval.report import held_of


def paired(run: dict[str, Any], first: str, second: str) -> list[dict[str, Any]]:
    """One row per (keep_ratio, metric): n, both means, the mean difference first - second, its
    standard error, the items where `first` is better (lower KL, higher top-1), and each one's mean
    held fraction. `first` and `second` are methods (paired at every keep_ratio of `first`) or
    both method@ratio (paired at those). The two means are keyed by `first` and `second` as given."""
    label_a, label_b = first, second
    if "@" in first and "@" in second:
        (first, _, ratio_a), (second, _, ratio_b) = first.partition("@"), second.partition("@")
        ratio_pairs = [(ratio_a, ratio_b)]
    else:
        ratios = {k.partition("@")[2] for k in run["config_keys"] if k.startswith(first + "@")}
        ratio_pairs = [(r, r) for r in sorted(ratios, key=float, reverse=True)]
    rows = []
    for ratio, ratio_b in ratio_pairs:
        for metric, lower_is_better in (("kl", True), ("top1", False)):
            pairs = []
            helds = []
            for item in run["items"]:
                results = item["results"]
                a, b = results.get(f"{first}@{ratio}"), results.get(f"{second}@{ratio_b}")
                if item["kind"] == "dialogue" and a and b and metric in a and metric in b:
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
                    label_a: sum(x for x, _ in pairs) / n,
                    label_b: sum(y for _, y in pairs) / n,
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
        p.error(f"no dialogue has both {args.first} and {args.second} at one keep_ratio")
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
