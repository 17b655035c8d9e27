"""Merge two runs of the same items: the second run's configurations replace or extend the first's.

  python -m eval.merge eval-out/full eval-out/full-snapkv --out eval-out/merged

Used when one method changed after a full run: rerun only that method (--methods full,<method>
--presses none, same seed and counts) and merge, rather than rerunning every press. Both runs must
hold the same items (by id and kind) with the same full-context reference; otherwise it refuses.
With --common, runs that stopped early or ran a subset (the first 75 dialogues of a run with
needles, say: --dialogues 75 --needles 0) merge on the items both hold, and only those are kept.
With --rename sonic=sonic-probes, the rerun's rows join under another name instead of replacing
the base's (the same method run another way: without token scores, say).
"""

from __future__ import annotations

import argparse
import copy
import json
import math
from pathlib import Path
from typing import Any

from eval import report


def rename(run: dict[str, Any], old: str, new: str) -> dict[str, Any]:
    """The run with method `old`'s rows ('old@ratio') called 'new@ratio'."""

    def name(key: str) -> str:
        method, at, ratio = key.partition("@")
        return f"{new}{at}{ratio}" if method == old else key

    out = copy.deepcopy(run)
    out["config_keys"] = [name(k) for k in run["config_keys"]]
    for item in out["items"]:
        item["results"] = {name(k): v for k, v in item["results"].items()}
    return out


def merge(base: dict[str, Any], override: dict[str, Any], common: bool = False) -> dict[str, Any]:
    """The base results with every configuration of `override` (except the reference `full`) taken
    from it, item by item. common: only the items both runs hold (either may be partial)."""
    items = {(i["id"], i["kind"]): i for i in override["items"]}
    base_ids = {(i["id"], i["kind"]) for i in base["items"]}
    if common:
        if not set(items) & base_ids:
            raise ValueError("the runs hold no item in common")
    elif not (base.get("complete") and override.get("complete")):
        raise ValueError("both runs must be complete (or pass --common)")
    elif set(items) != base_ids:
        raise ValueError("the runs hold different items; rerun with the same seed and counts")
    keys = [k for k in override["config_keys"] if k != "full"]
    out = copy.deepcopy(base)
    out["items"] = [i for i in out["items"] if (i["id"], i["kind"]) in items]
    for item in out["items"]:
        other = items[(item["id"], item["kind"])]
        ref, ref_other = item["results"].get("full", {}), other["results"].get("full", {})
        if not math.isclose(ref.get("nll", 0.0), ref_other.get("nll", 0.0), rel_tol=1e-4, abs_tol=1e-6):
            raise ValueError(f"item {item['id']}: the full-context references differ")
        for k in keys:
            if k in other["results"]:
                item["results"][k] = other["results"][k]
    out["config_keys"] = list(base["config_keys"]) + [k for k in keys if k not in base["config_keys"]]
    out["summary"] = report.summarize(out["items"], out["config_keys"])
    out["merged"] = {
        "configs": keys,
        "from_command": override.get("command"),
        "from_server": override.get("server"),
        "items": len(out["items"]),
    }
    kept_all = len(out["items"]) == len(base["items"]) == len(items)
    out["complete"] = bool(base.get("complete") and override.get("complete")) and kept_all
    return out


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("base", type=Path, help="folder with the first run's results.json")
    p.add_argument("override", type=Path, help="folder with the rerun's results.json")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--common", action="store_true", help="merge on the items both runs hold")
    p.add_argument("--rename", default=None, help="OLD=NEW: the rerun's method OLD joins as NEW")
    args = p.parse_args(argv)
    base = json.loads((args.base / "results.json").read_text())
    override = json.loads((args.override / "results.json").read_text())
    if args.rename:
        old, _, new = args.rename.partition("=")
        override = rename(override, old, new)
    paths = report.write(merge(base, override, args.common), args.out)
    print("wrote " + ", ".join(str(v) for v in paths.values()))


if __name__ == "__main__":
    main()
