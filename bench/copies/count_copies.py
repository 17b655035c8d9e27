#!/usr/bin/env python3
"""Copies per payload byte on the server's hot paths (issue 16), counted with memcount.so.

    .venv/bin/python bench/copies/count_copies.py --server_bin=build/bin/nexuskv-server \
        --out=/tmp/copies [--min_bytes=64] [--calls=5]

Starts the server with memcount.so preloaded (built here with gcc when missing), appends one
session of 16 turns x 256 tokens (SmolLM2-135M shapes: 30 layers, 3 kv heads, 9 query heads,
head_dim 64, float16, 8 probes, token scores) through the Python client, then makes --calls
GetCache calls of FULL and then of SONIC keep 0.2 (keep_recent_turns 1, a scored answer), and
dumps the server's copy table after each phase. Prints, per phase, the bytes copied per payload
byte by where the copy happens (the stack's frames, resolved with addr2line / nm -D), and the
SHA-256 of each answer (keys, values, bias, positions) so that two servers' answers can be
compared byte for byte. The payload is the appended keys and values (append) or the answer's
keys and values times --calls (GetCache). Copies below --min_bytes are not counted.
"""

import argparse
import bisect
import collections
import hashlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time

import numpy as np

import nexuskv

HERE = os.path.dirname(os.path.abspath(__file__))

# (phase, label, predicate on the ' < '-joined frame names, innermost first); first match wins.
RULES = [
    ("append", "proto parse: gRPC slices -> request strings", lambda s, f: "LayerChunk::_InternalParse" in s),
    (
        "append",
        "WriteBatch re-copied as it grows",
        lambda s, f: "WriteBatchInternal::Put" in s and f[0].endswith("char_traits<char>::copy"),
    ),
    ("append", "WriteBatch::Put", lambda s, f: "WriteBatchInternal::Put" in s),
    ("append", "RocksDB: WAL write buffer", lambda s, f: "log::Writer" in s),
    ("append", "RocksDB: memtable insert", lambda s, f: "MemTable::Add" in s),
    ("append", "RocksDB: flush to blob file (background)", lambda s, f: "BlobFileBuilder" in s),
    ("append", "RocksDB: flush to SST (background)", lambda s, f: "BlockBasedTableBuilder" in s),
    (
        "get",
        "plan: token scores and Selection::Make",
        lambda s, f: "LoadTokenScores" in s or "Selection::Make" in s,
    ),
    ("get", "RocksDB: blob file read -> BlobContents", lambda s, f: "UncompressBlobIfNeeded" in s),
    ("get", "RocksDB: memtable value -> result", lambda s, f: "MemTable" in s),
    ("get", "Get(std::string*): RocksDB's buffer -> string", lambda s, f: "RocksDbStore::ReadTensor" in s),
    (
        "get",
        "scored: kept stored row -> answer entries",
        lambda s, f: "BuildAnswerTurn" in s or "GatherAnswerRow" in s,
    ),
    (
        "get",
        "Interleave re-copied as the layer grows",
        lambda s, f: "CacheAssembly::BuildLayer" in s and len(f) > 1 and "_M_append" in f[1],
    ),
    (
        "get",
        "Interleave: turn block -> layer message",
        lambda s, f: "CacheAssembly::BuildLayer" in s or "CacheAssembly::Interleave" in s,
    ),
    ("get", "serialize: layer message -> gRPC slices", lambda s, f: "_InternalSerialize" in s),
]


def resolve(dumps):
    """Maps (file, offset) of every frame to 'lib:function'."""
    frames = collections.defaultdict(set)
    for dump in dumps:
        for _, _, stack in dump:
            for fn, off in stack:
                frames[fn].add(off)
    names = {}
    for fn, offs in frames.items():
        offs = sorted(offs)
        out = subprocess.run(
            ["addr2line", "-f", "-C", "-e", fn] + [hex(o - 1) for o in offs], capture_output=True, text=True
        ).stdout.splitlines()
        dynsyms = None
        for i, o in enumerate(offs):
            name = out[2 * i] if 2 * i < len(out) else "??"
            if name == "??":  # stripped library: the nearest exported symbol
                if dynsyms is None:
                    nm = subprocess.run(
                        ["nm", "-D", "-C", "--defined-only", fn], capture_output=True, text=True
                    ).stdout
                    dynsyms = sorted(
                        (int(p[0], 16), p[2])
                        for p in (line.split(" ", 2) for line in nm.splitlines())
                        if len(p) == 3 and p[1] in "TtWw"
                    )
                j = bisect.bisect_right(dynsyms, (o, "\uffff")) - 1
                name = dynsyms[j][1] if j >= 0 else "??"
            names[(fn, o)] = os.path.basename(fn) + ":" + re.sub(r"\(.*", "", name)
    return names


def read_dumps(path):
    dumps = []
    with open(path) as f:
        lines = f.read().splitlines()
    for line in lines:
        if line.startswith("==="):
            dumps.append([])
            continue
        parts = line.split()
        stack = []
        for f in parts[3:]:
            if "+0x" in f:
                fn, off = f.rsplit("+0x", 1)
                stack.append((fn, int(off, 16)))
        dumps[-1].append((int(parts[1]), int(parts[2]), stack))
    return dumps


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--server_bin", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--min_bytes", type=int, default=64)
    ap.add_argument("--calls", type=int, default=5)
    args = ap.parse_args()
    os.makedirs(args.out, exist_ok=True)
    lib = os.path.join(args.out, "memcount.so")
    subprocess.run(
        ["gcc", "-O2", "-fPIC", "-shared", "-o", lib, os.path.join(HERE, "memcount.c"), "-ldl", "-lpthread"],
        check=True,
    )
    data = os.path.join(args.out, "data")
    shutil.rmtree(data, ignore_errors=True)
    table = os.path.join(args.out, "memcount.txt")
    if os.path.exists(table):
        os.remove(table)
    env = dict(os.environ, LD_PRELOAD=lib, MEMCOUNT_OUT=table, MEMCOUNT_MIN=str(args.min_bytes))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    log = open(os.path.join(args.out, "server.log"), "w")  # noqa: SIM115 (closed in finally)
    server = subprocess.Popen(
        [
            args.server_bin,
            f"--listen=127.0.0.1:{port}",
            f"--data_dir={data}",
            "--sync_writes=true",
            "--log_level=warning",
            "--precompute_fits=false",
        ],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
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

        def dump():
            time.sleep(0.5)
            server.send_signal(signal.SIGUSR1)
            time.sleep(0.5)

        layers, heads, query_heads, d, tokens, probes, turns = 30, 3, 9, 64, 256, 8, 16
        rng = np.random.default_rng(1)
        appended = 0
        for t in range(turns):
            k = [rng.standard_normal((heads, tokens, d)).astype(np.float16) for _ in range(layers)]
            v = [rng.standard_normal((heads, tokens, d)).astype(np.float16) for _ in range(layers)]
            q = [rng.standard_normal((query_heads, probes, d)).astype(np.float16) for _ in range(layers)]
            scores = [rng.random((heads, tokens)).astype(np.float32) for _ in range(layers)]
            appended += sum(a.nbytes for a in k + v)
            client.append_turn(
                "s", t, k, v, q, num_query_heads=query_heads, token_scores=scores, model_id="smollm2-135m"
            )
        dump()
        payload = {"append": appended}
        digests = {}
        for name, kw in [
            ("full", {"method": "full"}),
            ("sonic", {"method": "sonic", "keep_ratio": 0.2, "keep_recent_turns": 1}),
        ]:
            for _ in range(args.calls):
                answer = client.get_cache("s", **kw)
            h = hashlib.sha256()
            for layer in answer.layers:
                for a in (layer.keys, layer.values, layer.bias, layer.positions):
                    if a is not None:
                        h.update(np.ascontiguousarray(a).tobytes())
            digests[name] = h.hexdigest()
            payload[name] = args.calls * sum(x.keys.nbytes + x.values.nbytes for x in answer.layers)
            dump()
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=120)
        log.close()

    dumps = read_dumps(table)
    names = resolve(dumps)
    result = {"digests": digests, "payload_bytes": payload, "copies_per_byte": {}}
    for phase, rows in zip(["append", "full", "sonic"], dumps, strict=False):
        per = collections.Counter()
        for nbytes, _, stack in rows:
            frames = [names[f] for f in stack]
            joined = " < ".join(frames)
            for rule_phase, label, pred in RULES:
                if (rule_phase == "append") == (phase == "append") and pred(joined, frames):
                    per[label] += nbytes
                    break
            else:
                per["other"] += nbytes
        result["copies_per_byte"][phase] = {k: round(v / payload[phase], 3) for k, v in per.most_common()}
        print(
            f"{phase}: {payload[phase] / 1e6:.1f} MB of keys and values; copies per byte "
            f"(calls of at least {args.min_bytes} bytes): "
            f"{sum(per.values()) / payload[phase]:.2f}"
        )
        for label, nbytes in per.most_common():
            print(f"  {nbytes / payload[phase]:6.3f}  {label}")
        if phase in digests:
            print(f"  answer sha256 {digests[phase]}")
    with open(os.path.join(args.out, "copies.json"), "w") as f:
        json.dump(result, f, indent=1)


if __name__ == "__main__":
    sys.exit(main())
