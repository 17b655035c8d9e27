"""Plots the samples of bench/load/soak.sh and says how much each moved after the warm-up.

    .venv/bin/python bench/load/plot_soak.py soak.csv soak.png --warmup_s=300

The CSV has the columns t_s, rss_kib, open_fds, data_bytes (one row per sample). The PNG has one
panel per quantity against minutes, with the warm-up shaded. For each quantity it prints the value
at the first sample after the warm-up, the last value, the lowest and highest after the warm-up,
and the change from first to last in percent: "flat after warm-up" is a small change there.
"""

from __future__ import annotations

import argparse
import csv
from pathlib import Path

PANELS = (
    ("rss_kib", "server RSS (MiB)", 1 / 1024),
    ("open_fds", "open files", 1.0),
    ("data_bytes", "data dir on disk (MiB)", 1 / 2**20),
)


def read_samples(path: Path) -> dict[str, list[float]]:
    with path.open(newline="") as f:
        rows = list(csv.DictReader(f))
    if not rows:
        raise SystemExit(f"plot_soak: no samples in {path}")
    return {key: [float(r[key]) for r in rows] for key in rows[0]}


def summarize(samples: dict[str, list[float]], warmup_s: float) -> list[str]:
    t = samples["t_s"]
    after = [i for i, x in enumerate(t) if x >= warmup_s] or [len(t) - 1]
    lines = []
    for key, label, scale in PANELS:
        values = [samples[key][i] * scale for i in after]
        first, last = values[0], values[-1]
        change = 100 * (last - first) / first if first else 0.0
        lines.append(
            f"{label}: {first:.1f} at {t[after[0]]:.0f} s, {last:.1f} at {t[-1]:.0f} s "
            f"({change:+.1f}%), range {min(values):.1f}..{max(values):.1f} after {warmup_s:.0f} s"
        )
    return lines


def plot(
    samples: dict[str, list[float]], png: Path, warmup_s: float, title: str
) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    minutes = [x / 60 for x in samples["t_s"]]
    fig, axes = plt.subplots(len(PANELS), 1, figsize=(8, 7), sharex=True)
    for ax, (key, label, scale) in zip(axes, PANELS):
        ax.plot(minutes, [v * scale for v in samples[key]], marker=".")
        ax.axvspan(0, warmup_s / 60, color="0.9", label="warm-up")
        ax.set_ylabel(label)
        ax.set_ylim(bottom=0)
        ax.grid(alpha=0.3)
    axes[0].legend(loc="lower right")
    axes[-1].set_xlabel("minutes")
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(png, dpi=100)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("csv", type=Path)
    parser.add_argument("png", type=Path)
    parser.add_argument("--warmup_s", type=float, default=300)
    parser.add_argument("--title", default="nexuskv soak")
    args = parser.parse_args()
    samples = read_samples(args.csv)
    for line in summarize(samples, args.warmup_s):
        print(line)
    plot(samples, args.png, args.warmup_s, args.title)
    print(f"plot_soak: wrote {args.png}")


if __name__ == "__main__":
    main()
