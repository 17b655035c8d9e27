"""One table from several nexuskv_load --json_out files, with issue 16's goals checked.

    .venv/bin/python bench/load/summarize_load.py /tmp/tables/c*.json

Rows are grouped by mix (unscored, scored) and sorted by clients. Per row: calls/s, errors, and
p50/p99 of append, FULL GetCache and SONIC GetCache. The goals, per mix, for each run with 4x the
clients of another run of that mix (32 against 8): SONIC p99 within 3x of FULL p99; FULL and
append p99 within 8x of their figures at a quarter of the clients; no error.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

OPS = (("append", "append"), ("get_cache_full", "full"), ("get_cache_sonic", "sonic"))


def load(paths: list[str]) -> list[dict]:
    runs = [json.loads(Path(p).read_text()) for p in paths]
    for run in runs:
        run.setdefault(
            "mix", "unscored"
        )  # Files written before the scored mix existed.
    return sorted(runs, key=lambda r: (r["mix"] != "unscored", r["mix"], r["clients"]))


def p99(run: dict, op: str) -> float:
    return run["ops"][op]["p99_ms"]


def goals(run: dict, by_clients: dict[int, dict]) -> list[str]:
    checks = []
    sonic, full = p99(run, "get_cache_sonic"), p99(run, "get_cache_full")
    if full > 0:
        ratio = sonic / full
        checks.append(f"sonic/full p99 {ratio:.2f}x {'ok' if ratio <= 3 else 'MISSED'}")
    base = by_clients.get(run["clients"] // 4)
    if base is not None and run["clients"] % 4 == 0:
        for op, short in (("get_cache_full", "full"), ("append", "append")):
            if p99(base, op) > 0:
                ratio = p99(run, op) / p99(base, op)
                verdict = "ok" if ratio <= 8 else "MISSED"
                checks.append(
                    f"{short} p99 {ratio:.2f}x of {base['clients']} clients {verdict}"
                )
    checks.append("no error" if run["errors"] == 0 else f"{run['errors']} ERRORS")
    return checks


def main() -> None:
    runs = load(sys.argv[1:])
    if not runs:
        raise SystemExit("summarize_load: give nexuskv_load JSON files")
    header = f"{'mix':9} {'clients':>7} {'calls/s':>8} {'errors':>6}"
    for _, short in OPS:
        header += f" {short + ' p50':>11} {short + ' p99':>11}"
    print(header)
    for run in runs:
        line = (
            f"{run['mix']:9} {run['clients']:7d} {run['calls_per_s']:8.1f} "
            f"{run['errors']:6d}"
        )
        for op, _ in OPS:
            line += (
                f" {run['ops'][op]['p50_ms']:11.1f} {run['ops'][op]['p99_ms']:11.1f}"
            )
        print(line)
    print("goals (latencies in ms above):")
    for run in runs:
        by_clients = {r["clients"]: r for r in runs if r["mix"] == run["mix"]}
        print(f"  {run['mix']} {run['clients']}: " + "; ".join(goals(run, by_clients)))


if __name__ == "__main__":
    main()
