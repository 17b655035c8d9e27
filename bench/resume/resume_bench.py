"""Resume a 2048-token ShareGPT conversation from the tier against re-prefilling it (issue 16).

    scripts/python-env.sh && cmake --build build --target nexuskv-server
    .venv/bin/python bench/resume/resume_bench.py                  # 2048 tokens, median of 5
    .venv/bin/python bench/resume/resume_bench.py --repeats 1 --max-tokens 512   # a smoke run
    (or .venv/bin/python -m bench.resume.resume_bench ... from the repository root)

One process, SmolLM2-135M-Instruct on the CPU (eval.model), a private nexuskv-server unless --server:
1. Pod A prefills the conversation (bench/resume/long_dialogue.py picks it) one message at a time and
   appends each to the tier as soon as it is prefilled, exactly as the eval and examples/resume_demo.py
   do: keys/values of the message, 32 probe queries spread over it, hf.turn_scores token scores.
2. Pod B (a fresh Client and a freshly loaded model; nothing of pod A's cache) gets a follow-up
   question (--question) and answers it on every path, the paths interleaved (rotated each round),
   --warmup untimed rounds first, then --repeats timed ones:
     reprefill     transcript + question in one forward on an empty DynamicCache (logits of the last
                   position only), the first token, then --decode-tokens more;
     full          GetCache(method=full) + hf.cache_from_answer + the question's forward, then decode;
     sonic@R       GetCache(method=sonic, keep_ratio=R, keep_recent_turns=1: the last reply raw, the
                   ratio applies to the history, as the eval asks) + the same.
   TTFT is wall time from the question's arrival to the first answer token chosen: for the tier paths
   getcache_s (the RPC, its stream and decoding to numpy) + convert_s (numpy to a NexusCache) +
   forward_s (the question through the model and the argmax). Decode tokens/s is --decode-tokens
   greedy single-token forwards on the cache the answer started from (no stop at end-of-turn, so
   every path decodes the same number of steps).
3. Prints the table (medians) and writes --out: the machine (nproc, load average at start and end,
   git commit), the conversation, every sample (warm-up ones flagged) and each path's medians. Each
   sample's cpu_s is this process's CPU time, server_cpu_s the private server's (all threads) over
   the sample: on a shared machine they say what wall time cannot.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import shlex
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

# Before torch loads: spinning OpenMP threads make a loaded 2-core box several times slower.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))  # eval.* and bench.resume.* when run as a script

from eval import model as model_mod  # noqa: E402 (first: sets HF_HUB_OFFLINE before transformers)

QUESTION = "Please summarize our conversation so far in three sentences."


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--max-tokens", type=int, default=2048, help="transcript length target (tokens)")
    p.add_argument("--slack", type=int, default=128, help="the cut may fall this far below the target")
    p.add_argument("--seed", type=int, default=0, help="ShareGPT record order (as eval.dialogues)")
    p.add_argument("--repeats", type=int, default=5, help="timed rounds (medians over them)")
    p.add_argument("--warmup", type=int, default=1, help="untimed rounds first")
    p.add_argument("--ratios", default="0.5,0.2", help="SONIC keep ratios")
    p.add_argument("--decode-tokens", type=int, default=64)
    p.add_argument("--probes", type=int, default=32, help="probe queries per message")
    p.add_argument("--question", default=QUESTION)
    p.add_argument("--server", help="host:port of a running nexuskv server (default: start one)")
    p.add_argument("--server-binary", default=None, help="default $NEXUSKV_SERVER or build/bin/")
    p.add_argument("--out", default="eval-out/resume-bench/results.json")
    p.add_argument("--model-cache", default="eval-out/model-cache")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    args = p.parse_args(argv)
    if args.repeats < 1 or args.warmup < 0 or args.decode_tokens < 1:
        p.error("need --repeats >= 1, --warmup >= 0 and --decode-tokens >= 1")
    return args


def machine() -> dict[str, Any]:
    def git(*args: str) -> str:
        with contextlib.suppress(OSError, subprocess.CalledProcessError):
            return subprocess.check_output(["git", *args], cwd=REPO, text=True).strip()
        return "unknown"

    cpu = "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    return {
        "nproc": len(os.sched_getaffinity(0)),
        "cpu": cpu,
        "platform": platform.platform(),
        "python": platform.python_version(),
        "git_commit": git("rev-parse", "HEAD"),
        "git_dirty": git("status", "--porcelain", "--untracked-files=no") not in ("", "unknown"),
    }


def cpu_seconds(pid: int | None) -> float:
    """User + system CPU seconds of a process, all threads (nan when unknown)."""
    if pid is None:
        return float("nan")
    with contextlib.suppress(OSError, IndexError, ValueError):
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return float("nan")


# -- pod A ------------------------------------------------------------------------------------------


def offload(lm: Any, kv: Any, sid: str, segments: list[Any], probes: int) -> dict[str, float]:
    """Prefills the conversation one message at a time, appending each to the tier as it ends, as
    examples/resume_demo.py's pod A does. Returns the seconds spent per step."""
    import torch
    from transformers import DynamicCache

    from nexuskv import hf

    model = lm.model
    repeat_ids = lm.tokenizer.encode(hf.REPEAT_PROMPT, add_special_tokens=False)
    cache = DynamicCache()
    spent = {"prefill_s": 0.0, "scores_s": 0.0, "append_s": 0.0}
    for turn, seg in enumerate(segments):
        first = cache.get_seq_length()
        t0 = time.perf_counter()
        with torch.no_grad(), hf.record_queries() as rec:
            model(input_ids=torch.tensor([seg.ids]), past_key_values=cache, logits_to_keep=1)
        t1 = time.perf_counter()
        scores = hf.turn_scores(model, cache, seg.ids, repeat_ids)
        t2 = time.perf_counter()
        keys, values = hf.turn_kv(cache, first, first + len(seg.ids))
        spread, offsets = rec.spread(0, len(seg.ids), probes)
        kv.append_turn(
            sid,
            turn,
            keys,
            values,
            spread,
            role=seg.role,
            model_id=lm.model_id,
            first_position=first,
            probe_offsets=offsets,
            token_scores=scores,
        )
        t3 = time.perf_counter()
        spent["prefill_s"] += t1 - t0
        spent["scores_s"] += t2 - t1
        spent["append_s"] += t3 - t2
    return spent


# -- pod B ------------------------------------------------------------------------------------------


def answer(model: Any, ids: list[int], cache: Any, decode_tokens: int) -> tuple[float, float, list[int]]:
    """ids through the model on `cache` (extended in place), the first token, then decode_tokens more,
    greedy. Returns (seconds to the first token, seconds of the decode steps, tokens).

    Not hf.greedy_generate: it keeps the logits of every input position, which for a re-prefill is
    the LM head over the whole transcript, work no server does before its first token."""
    import torch

    t0 = time.perf_counter()
    with torch.no_grad():
        out = model(input_ids=torch.tensor([ids]), past_key_values=cache, use_cache=True, logits_to_keep=1)
        tokens = [int(out.logits[0, -1].argmax())]
        first_s = time.perf_counter() - t0
        for _ in range(decode_tokens):
            out = model(input_ids=torch.tensor([[tokens[-1]]]), past_key_values=cache, use_cache=True)
            tokens.append(int(out.logits[0, -1].argmax()))
    return first_s, time.perf_counter() - t0 - first_s, tokens


def reprefill_sample(model: Any, history: list[int], question: list[int], decode: int) -> dict[str, Any]:
    from transformers import DynamicCache

    cpu0 = time.process_time()
    first_s, decode_s, tokens = answer(model, history + question, DynamicCache(), decode)
    return {
        "ttft_s": first_s,
        "forward_s": first_s,
        "decode_s": decode_s,
        "entries": len(history),
        "cpu_s": time.process_time() - cpu0,
        "tokens": tokens,
    }


def tier_sample(
    model: Any, kv: Any, sid: str, ratio: float | None, question: list[int], decode: int
) -> dict[str, Any]:
    from nexuskv import hf

    cpu0 = time.process_time()
    t0 = time.perf_counter()
    if ratio is None:
        got = kv.get_cache(sid, method="full")
    else:
        got = kv.get_cache(sid, method="sonic", keep_ratio=ratio, keep_recent_turns=1)
    t1 = time.perf_counter()
    cache = hf.cache_from_answer(got)
    t2 = time.perf_counter()
    first_s, decode_s, tokens = answer(model, question, cache, decode)
    history = got.turns[:-1] if ratio is not None else []
    return {
        "ttft_s": (t2 - t0) + first_s,
        "getcache_s": t1 - t0,
        "convert_s": t2 - t1,
        "forward_s": first_s,
        "decode_s": decode_s,
        "entries": statistics.fmean(got.entries_per_layer),
        "kept_history_ratio": (
            sum(t.kept_entries for t in history) / sum(t.original_tokens for t in history) if history else 1.0
        ),
        "cache_bytes": got.cache_bytes,
        "method": got.method,
        "notes": got.notes,
        "next_position": got.next_position,
        "cpu_s": time.process_time() - cpu0,
        "tokens": tokens,
    }


def summarize(samples: list[dict[str, Any]], paths: list[str], decode: int) -> dict[str, dict[str, Any]]:
    """Per path the medians of the timed samples, and their speedups against re-prefill and FULL."""
    out: dict[str, dict[str, Any]] = {}
    for path in paths:
        timed = [s for s in samples if s["path"] == path and not s["warmup"]]
        row: dict[str, Any] = {"n": len(timed), "entries": timed[0]["entries"]}
        for k in ("ttft_s", "getcache_s", "convert_s", "forward_s", "decode_s", "cpu_s", "server_cpu_s"):
            if k in timed[0]:
                row[k] = statistics.median(s[k] for s in timed)
        row["decode_tok_s"] = statistics.median(decode / s["decode_s"] for s in timed)
        for k in ("kept_history_ratio", "cache_bytes", "method", "notes"):
            if k in timed[0]:
                row[k] = timed[0][k]
        out[path] = row
    base, full = out["reprefill"], out.get("full")
    for row in out.values():
        row["ttft_speedup"] = base["ttft_s"] / row["ttft_s"]
        if full is not None:
            row["decode_vs_full"] = row["decode_tok_s"] / full["decode_tok_s"]
    return out


def agreement(a: list[int], b: list[int]) -> int:
    """Length of the common prefix of two greedy token sequences."""
    n = 0
    while n < min(len(a), len(b)) and a[n] == b[n]:
        n += 1
    return n


def table(summary: dict[str, dict[str, Any]], decode: int) -> str:
    head = (
        f"{'path':10} {'entries/layer':>13} {'TTFT s':>8} {'vs re-prefill':>13} {'GetCache s':>10} "
        f"{'convert s':>9} {'forward s':>9} {f'decode tok/s ({decode})':>19} {'vs full':>7}"
    )
    lines = [head, "-" * len(head)]
    nan = float("nan")
    for path, r in summary.items():
        lines.append(
            f"{path:10} {r['entries']:>13.0f} {r['ttft_s']:>8.3f} {r['ttft_speedup']:>12.1f}x "
            f"{r.get('getcache_s', nan):>10.3f} {r.get('convert_s', nan):>9.3f} "
            f"{r['forward_s']:>9.3f} {r['decode_tok_s']:>19.1f} {r.get('decode_vs_full', nan):>6.2f}x"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    import torch

    from bench.resume.long_dialogue import first_long_dialogue
    from eval.dialogues import render_segments
    from eval.protocol import ASSISTANT_HEADER
    from nexuskv import Client, NexusKVError
    from nexuskv.local_server import LocalServer

    if args.threads:
        torch.set_num_threads(args.threads)
    load_start = os.getloadavg()
    started = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    ratios = [float(r) for r in args.ratios.split(",") if r]
    paths = ["reprefill", "full", *(f"sonic@{r:g}" for r in ratios)]

    lm = model_mod.load(args.model_cache)
    t0 = time.perf_counter()
    dialogue = first_long_dialogue(lm.tokenizer, args.max_tokens, args.slack, args.seed)
    select_s = time.perf_counter() - t0
    history = [i for s in dialogue.segments for i in s.ids]
    q_seg = render_segments(lm.tokenizer, [*dialogue.turns, ("user", args.question)])[-1]
    question = q_seg.ids + lm.tokenizer.encode(ASSISTANT_HEADER, add_special_tokens=False)
    print(
        f"conversation {dialogue.id} (record {dialogue.record}): {len(dialogue.segments)} messages "
        f"(system included), {dialogue.num_tokens} tokens; question {len(question)} tokens "
        f"(with the reply header); selected in {select_s:.1f}s",
        flush=True,
    )

    server = None
    target = args.server
    if target is None:
        out_dir = Path(args.out).parent
        out_dir.mkdir(parents=True, exist_ok=True)
        server = LocalServer(args.server_binary, log_path=out_dir / "server.log").start()
        target = server.target
    server_pid = server.process.pid if server is not None and server.process else None
    sid = f"resume-bench-{time.strftime('%Y%m%d%H%M%S')}"
    samples: list[dict[str, Any]] = []
    try:
        with Client(target, timeout=300.0) as kv:
            pod_a = offload(lm, kv, sid, dialogue.segments, args.probes)
            info = kv.session(sid)
            print(
                f"pod A: {info.num_turns} turns, {info.total_tokens} tokens appended "
                + ", ".join(f"{k} {v:.1f}" for k, v in pod_a.items()),
                flush=True,
            )
        del lm  # pod B: a fresh model and a fresh client
        lm = model_mod.load(args.model_cache)
        model = lm.model
        with Client(target, timeout=300.0) as kv:
            for rnd in range(args.warmup + args.repeats):
                warm = rnd < args.warmup
                for k in range(len(paths)):
                    path = paths[(rnd + k) % len(paths)]
                    srv0 = cpu_seconds(server_pid)
                    if path == "reprefill":
                        s = reprefill_sample(model, history, question, args.decode_tokens)
                    else:
                        ratio = None if path == "full" else float(path.split("@")[1])
                        s = tier_sample(model, kv, sid, ratio, question, args.decode_tokens)
                    s.update(path=path, round=rnd, warmup=warm, server_cpu_s=cpu_seconds(server_pid) - srv0)
                    samples.append(s)
                    print(
                        f"{'warm-up' if warm else 'round'} {rnd}: {path:10} TTFT {s['ttft_s']:.3f}s "
                        f"decode {args.decode_tokens / s['decode_s']:.1f} tok/s, "
                        f"server cpu {s['server_cpu_s']:.2f}s",
                        flush=True,
                    )
            with contextlib.suppress(NexusKVError):
                kv.delete(sid)
    finally:
        if server is not None:
            server.stop()

    summary = summarize(samples, paths, args.decode_tokens)
    ref = next(s["tokens"] for s in samples if s["path"] == "reprefill")
    for path in paths:
        tokens = next(s["tokens"] for s in samples if s["path"] == path)
        summary[path]["tokens_agreeing_with_reprefill"] = agreement(ref, tokens)
        summary[path]["answer"] = lm.tokenizer.decode(tokens)
    results = {
        "command": "python bench/resume/resume_bench.py " + " ".join(map(shlex.quote, argv or sys.argv[1:])),
        "started": started,
        "machine": {
            **machine(),
            "torch_threads": torch.get_num_threads(),
            "loadavg_start": load_start,
            "loadavg_end": os.getloadavg(),
        },
        "model": lm.model_id,
        "conversation": {
            "id": dialogue.id,
            "record": dialogue.record,
            "seed": args.seed,
            "messages": len(dialogue.segments),
            "tokens": dialogue.num_tokens,
            "question": args.question,
            "question_tokens": len(question),
        },
        "config": {k: v for k, v in vars(args).items() if k not in ("out",)},
        "pod_a": pod_a,
        "summary": summary,
        "samples": samples,
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=1))

    m = results["machine"]
    print(
        f"\n{dialogue.num_tokens}-token transcript, {len(question)}-token question, median of "
        f"{args.repeats}; nproc {m['nproc']}, load {m['loadavg_start'][0]:.2f} -> {m['loadavg_end'][0]:.2f}, "
        f"{m['git_commit'][:7]}{' (dirty)' if m['git_dirty'] else ''}\n"
    )
    print(table(summary, args.decode_tokens))
    print(
        f"greedy tokens (of {args.decode_tokens + 1}) agreeing with re-prefill: "
        + ", ".join(f"{p} {summary[p]['tokens_agreeing_with_reprefill']}" for p in paths[1:])
    )
    for path in paths[1:]:
        r = summary[path]
        if "streaming" in r.get("notes", "").lower():
            print(f"warning: {path} was served with a fallback: {r['notes']}")
    print(f"\nwrote {out}")
    return results


if __name__ == "__main__":
    main()
