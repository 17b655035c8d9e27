#!/usr/bin/env python3
"""Server CPU time per call (user + system, from /proc/PID/stat) of the copies workload, for
comparing server binaries on a shared machine where wall-clock latency is too noisy.

    .venv/bin/python bench/copies/server_cpu.py --server_bin=A --server_bin=B [--rounds=3]

For each round and each binary in turn (alternating): a fresh server (--sync_writes=true
--precompute_fits=false), 16 turns x 256 tokens appended as in count_copies.py, then --calls
GetCache calls of FULL and --calls of SONIC keep 0.2 (keep_recent_turns 1, scored). Prints per
binary the median over rounds of the server's CPU ms per appended MB of keys and values and per
GetCache call, and the median wall ms per call (client included).
"""

import argparse
import os
import shutil
import signal
import socket
import statistics
import subprocess
import tempfile
import time

import numpy as np

import nexuskv

TICK = os.sysconf("SC_CLK_TCK")


def cpu_ms(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) * 1000.0 / TICK  # utime + stime


def run(server_bin, calls):
    data = tempfile.mkdtemp(prefix="nexuskv_cpu.")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = subprocess.Popen(
        [
            server_bin,
            f"--listen=127.0.0.1:{port}",
            f"--data_dir={data}",
            "--sync_writes=true",
            "--log_level=warning",
            "--precompute_fits=false",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    out = {}
    try:
        start = time.time()
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if time.time() - start > 120:
                    raise
                time.sleep(0.2)
        client = nexuskv.Client(f"127.0.0.1:{port}")
        layers, heads, query_heads, d, tokens, probes = 30, 3, 9, 64, 256, 8
        rng = np.random.default_rng(1)
        turns = []
        for _ in range(16):
            turns.append(
                (
                    [rng.standard_normal((heads, tokens, d)).astype(np.float16) for _ in range(layers)],
                    [rng.standard_normal((heads, tokens, d)).astype(np.float16) for _ in range(layers)],
                    [rng.standard_normal((query_heads, probes, d)).astype(np.float16) for _ in range(layers)],
                    [rng.random((heads, tokens)).astype(np.float32) for _ in range(layers)],
                )
            )
        appended = sum(a.nbytes for k, v, _, _ in turns for a in k + v)
        before = cpu_ms(server.pid)
        for t, (k, v, q, scores) in enumerate(turns):
            client.append_turn(
                "s", t, k, v, q, num_query_heads=query_heads, token_scores=scores, model_id="smollm2-135m"
            )
        out["append cpu ms/MB"] = (cpu_ms(server.pid) - before) / (appended / 1e6)
        for name, kw in [
            ("full", {"method": "full"}),
            ("sonic", {"method": "sonic", "keep_ratio": 0.2, "keep_recent_turns": 1}),
        ]:
            client.get_cache("s", **kw)  # warm-up
            walls = []
            before = cpu_ms(server.pid)
            for _ in range(calls):
                t0 = time.perf_counter()
                client.get_cache("s", **kw)
                walls.append((time.perf_counter() - t0) * 1000)
            out[f"{name} cpu ms/call"] = (cpu_ms(server.pid) - before) / calls
            out[f"{name} wall ms p50"] = statistics.median(walls)
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=120)
        shutil.rmtree(data, ignore_errors=True)
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--server_bin", action="append", required=True)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--calls", type=int, default=20)
    args = ap.parse_args()
    results = {b: [] for b in args.server_bin}
    for r in range(args.rounds):
        for b in args.server_bin:
            with open("/proc/loadavg") as f:
                load = f.read().split()[0]
            results[b].append(run(b, args.calls))
            print(
                f"round {r + 1} {b} (load before {load}): "
                + ", ".join(f"{k} {v:.1f}" for k, v in results[b][-1].items()),
                flush=True,
            )
    for b, runs in results.items():
        print(
            f"median of {args.rounds}: {b}: "
            + ", ".join(f"{k} {statistics.median(x[k] for x in runs):.1f}" for k in runs[0])
        )


if __name__ == "__main__":
    main()
