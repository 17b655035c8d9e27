"""Aggregation and output: results JSON, a markdown table, a PNG plot of quality against keep_ratio."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

# wire: entries the answer sends for the history (padding included) over the entries it keeps.
# held: the history's share the engine holds once it loads the answer (kept_ratio x wire): the
# memory a method is compared at.
METRICS = ("kl", "top1", "dnll", "kept_ratio", "wire", "held")


def held_of(result: dict[str, Any]) -> float:
    """A result's held fraction; runs from before "held" was recorded give kept_ratio x wire."""
    if "held" in result:
        return result["held"]
    return result.get("kept_ratio", math.nan) * result.get("wire", 1.0)


def _mean_se(xs: list[float]) -> tuple[float, float]:
    if not xs:
        return math.nan, math.nan
    m = sum(xs) / len(xs)
    if len(xs) < 2:
        return m, math.nan
    var = sum((x - m) ** 2 for x in xs) / (len(xs) - 1)
    return m, math.sqrt(var / len(xs))


def summarize(records: list[dict[str, Any]], keys: list[str]) -> dict[str, Any]:
    """Per config: mean and standard error of each metric over dialogues; needle aggregates."""
    out: dict[str, Any] = {}
    dialogues = [r for r in records if r["kind"] == "dialogue"]
    needles = [r for r in records if r["kind"] == "needle"]
    for key in keys:
        row: dict[str, Any] = {}
        got = [r["results"][key] for r in dialogues if "kl" in r["results"].get(key, {})]
        errors = [r["results"][key]["error"] for r in records if "error" in r["results"].get(key, {})]
        row["n"] = len(got)
        for m in METRICS:
            values = [held_of(g) for g in got] if m == "held" else [g[m] for g in got if m in g]
            mean, se = _mean_se(values)
            row[m], row[f"{m}_se"] = mean, se
        if got:
            row["max_abs_logprob_diff"] = max(g["max_abs_logprob_diff"] for g in got)
        ned = [(r["results"][key], r["reference"]) for r in needles if "kl" in r["results"].get(key, {})]
        row["needle_n"] = len(ned)
        if ned:
            row["needle_logp"] = sum(g["needle_logp"] for g, _ in ned) / len(ned)
            row["needle_dlogp"] = sum(g["needle_logp"] - ref["needle_logp"] for g, ref in ned) / len(ned)
            row["needle_hit"] = sum(g["needle_hit"] for g, _ in ned) / len(ned)
        if errors:
            row["errors"] = len(errors)
            row["first_error"] = errors[0]
        out[key] = row
    refs = [r["reference"] for r in needles]
    if refs:
        out["_needle_reference"] = {
            "needle_logp": sum(r["needle_logp"] for r in refs) / len(refs),
            "needle_hit": sum(r["needle_hit"] for r in refs) / len(refs),
            "needle_n": len(refs),
        }
    return out


def _fmt(x: float, digits: int = 3, se: float | None = None) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "-"
    s = f"{x:.{digits}f}"
    if se is not None and not math.isnan(se):
        s += f" ± {se:.{digits}f}"
    return s


def markdown_table(results: dict[str, Any]) -> str:
    summary = results["summary"]
    unavailable: dict[str, str] = results.get("unavailable", {})
    press_errors: dict[str, str] = results.get("press_errors", {})
    ref = summary.get("_needle_reference")
    lines = [
        "| method | keep_ratio | kept | held | KL(full‖method) ↓ | top-1 agree ↑ | ΔNLL ↓ "
        "| needle log p (Δ) | needle hit | n |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    if ref:
        lines.append(
            f"| full context (reference) | 1 | 1.000 | 1.000 | 0 | 1 | 0 | {_fmt(ref['needle_logp'], 2)} "
            f"| {_fmt(ref['needle_hit'], 2)} | {results.get('num_dialogues', '-')} |"
        )
    for key in results["config_keys"]:
        name, _, ratio = key.partition("@")
        base = "sonic" if name == "sonic-nobias" else name
        row = summary.get(key, {})
        why = unavailable.get(base) or press_errors.get(name)
        if why and not row.get("n"):
            lines.append(f"| {name} | {ratio or 1} | - | - | not available: {why[:90]} | | | | | 0 |")
            continue
        needle = "-"
        if row.get("needle_n"):
            needle = f"{_fmt(row['needle_logp'], 2)} ({row['needle_dlogp']:+.2f})"
        lines.append(
            f"| {name} | {ratio or 1} | {_fmt(row.get('kept_ratio', math.nan))} "
            f"| {_fmt(row.get('held', math.nan))} "
            f"| {_fmt(row.get('kl', math.nan), 4, row.get('kl_se'))} "
            f"| {_fmt(row.get('top1', math.nan), 3, row.get('top1_se'))} "
            f"| {_fmt(row.get('dnll', math.nan), 4, row.get('dnll_se'))} | {needle} "
            f"| {_fmt(row['needle_hit'], 2) if row.get('needle_n') else '-'} | {row.get('n', 0)} |"
        )
    return "\n".join(lines) + "\n"


def draw(results: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    summary = results["summary"]
    series: dict[str, list[tuple[float, dict[str, Any]]]] = {}
    for key in results["config_keys"]:
        name, _, ratio = key.partition("@")
        row = summary.get(key, {})
        if not ratio or not row.get("n"):
            continue
        # Placed at the memory the engine holds, not at the ratio asked for.
        held = row.get("held", math.nan)
        series.setdefault(name, []).append((float(ratio) if math.isnan(held) else held, row))
    fig, axes = plt.subplots(1, 3, figsize=(19, 5))
    panels = (
        ("kl", "mean KL(full ‖ method)", True),
        ("top1", "top-1 agreement", False),
        ("dnll", "ΔNLL of the reply (nats/token)", False),
    )
    for ax, (metric, label, log) in zip(axes, panels, strict=True):
        for name, pts in sorted(series.items()):
            pts.sort()
            xs = [p[0] for p in pts]
            ys = [p[1][metric] for p in pts]
            es = [p[1].get(f"{metric}_se", 0.0) for p in pts]
            style = "-o" if not name.startswith("kvpress:") else "--s"
            n = min(p[1]["n"] for p in pts)
            ax.errorbar(xs, ys, yerr=es, fmt=style, label=f"{name} (n={n})", capsize=3)
        ax.set_xlabel("held fraction of the history (measured from each answer)")
        ax.set_ylabel(label)
        if log:
            ax.set_yscale("log")
        ax.grid(True, alpha=0.3)
    axes[-1].legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.02, 1.0))
    fig.suptitle(
        f"SmolLM2-135M-Instruct, {results.get('num_dialogues')} ShareGPT dialogues, "
        f"last user turn raw, reply teacher-forced ({results['config']['reply_tokens']} tokens)"
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write(results: dict[str, Any], out_dir: Path, *, plot: bool = True) -> dict[str, Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {
        "json": out_dir / "results.json",
        "table": out_dir / "table.md",
        "plot": out_dir / "plot.png",
    }
    paths["json"].write_text(json.dumps(results, indent=1, default=float))
    paths["table"].write_text(markdown_table(results))
    if plot:
        draw(results, paths["plot"])
    return paths
