"""Three shards behind nginx on loopback, configured from deploy/ (docs/scaling.md).

The shards run build/bin/nexuskv-server (or $NEXUSKV_SERVER) with deploy/k8s/base/nexuskv.flags;
nginx runs the deployed gateway template; the CLI is build/bin/nexuskv (or $NEXUSKV_CLI). In order:
  1. two "pods" (two processes) append 30 sessions each through the gateway, then each resumes
     the other's 30 (FULL, bit for bit);
  2. every session is on exactly one shard (GetSession on each shard directly), the one nginx's
     ketama ring predicts; every per-session call in the gateway's log carried its session header;
  3. the CLI (the C++ client) puts, shows, gets and removes a session through the gateway, and
     its calls carry the header too; a 64 MiB turn of Llama-3-8B's shape passes both ways;
  4. SIGKILL one shard: its sessions answer UNAVAILABLE through the gateway; the others still
     append a turn and resume;
  5. restart it: its sessions come back bit for bit;
  6. add a fourth shard (nginx restarted with four): at most 40% of the sessions move (GetSession
     through the gateway answers NOT_FOUND), exactly those the ring predicts, and a moved session
     is a miss the worker refills from turn 0.
Prints one JSON line of measurements (`cluster-test:` prefix). Loopback only, < 90 s.

The shard ports are free ports, so the ring differs from run to run: the fourth shard takes 25%
of the key space on average, and more than 40% of the 60 sessions move in about 0.4% of runs
(simulated over 4,000 rings with deploy_config.KetamaRing).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest
from deploy_config import REPO, KetamaRing
from harness import Gateway, Shard, env_with_pythonpath, nginx_version
from session_data import append_turn, full_mismatch

from nexuskv import Client, NexusKVError

HERE = Path(__file__).resolve().parent
SESSIONS = [f"conv-{i:03d}" for i in range(60)]
PER_SESSION_METHODS = {"AppendSegment", "GetCache", "GetSession", "DeleteSession"}
TIME_LIMIT_S = 90.0


def _code(call: Callable[[], object]) -> grpc.StatusCode | None:
    try:
        call()
    except NexusKVError as e:
        return e.code
    return None


def _client(target: str) -> Client:
    # No retries: the test wants each call's own answer (UNAVAILABLE is not retried away).
    return Client(target, timeout=10.0, retries=0)


def _run_pods(action: str, gateway: str, batches: list[list[str]]) -> list[dict]:
    """Runs one pod process per batch at once; returns their JSON reports."""
    env = env_with_pythonpath(HERE)
    procs = [
        subprocess.Popen(
            [sys.executable, str(HERE / "pod.py"), action, gateway, *batch],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        for batch in batches
    ]
    reports = []
    try:
        for p in procs:
            out, err = p.communicate(timeout=60)
            assert p.returncode == 0, f"pod {action} exited {p.returncode}: {err[-2000:]}"
            reports.append(json.loads(out.strip().splitlines()[-1]))
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    return reports


def _holders(shards: list[Shard], sid: str) -> list[int]:
    """The shards that hold the session, asked directly (not through the gateway)."""
    found = []
    for shard in shards:
        with _client(shard.target) as c:
            code = _code(lambda c=c: c.session(sid))
        assert code in (None, grpc.StatusCode.NOT_FOUND), f"shard {shard.index} on {sid}: {code}"
        if code is None:
            found.append(shard.index)
    return found


CLI = Path(os.environ.get("NEXUSKV_CLI") or REPO / "build" / "bin" / "nexuskv")


def _cli(*args: str, server: str) -> str:
    out = subprocess.run(
        [str(CLI), "--server", server, *args], capture_output=True, text=True, timeout=30, check=False
    )
    assert out.returncode == 0, f"nexuskv {' '.join(args)} exited {out.returncode}: {out.stderr}"
    return out.stdout


@pytest.fixture()
def workdir() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="nexuskv-cluster-"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


def test_three_shards_behind_nginx(workdir: Path) -> None:
    start = time.monotonic()
    binary = Path(os.environ.get("NEXUSKV_SERVER") or REPO / "build" / "bin" / "nexuskv-server")
    assert binary.is_file(), f"nexuskv-server not built at {binary}"
    assert CLI.is_file(), f"the nexuskv CLI is not built at {CLI}"
    shards = [Shard(binary, workdir, i) for i in range(3)]
    gateway = Gateway(workdir)
    report: dict[str, object] = {"nginx": nginx_version(), "sessions": len(SESSIONS)}
    try:
        for shard in shards:
            shard.start()
        gateway.write_config([s.target for s in shards])
        gateway.start()
        ring = KetamaRing([s.target for s in shards])
        by_target = {s.target: s.index for s in shards}

        # 1. Two pods append 30 sessions each at once, then each resumes the other's.
        halves = [SESSIONS[:30], SESSIONS[30:]]
        appended = _run_pods("append", gateway.target, halves)
        for r in appended:
            assert not r["failed"], f"appends failed: {r['failed']}"
        resumed = _run_pods("resume", gateway.target, halves[::-1])
        for r in resumed:
            assert not r["failed"], f"resumes from the other pod failed: {r['failed']}"
        assert sorted(resumed[0]["done"] + resumed[1]["done"]) == SESSIONS
        report["t_append_resume_s"] = round(time.monotonic() - start, 1)

        # 2. One shard per session, the one the ring predicts; the header was on every call.
        placement: dict[str, int] = {}
        for sid in SESSIONS:
            holders = _holders(shards, sid)
            assert len(holders) == 1, f"{sid} is on shards {holders}"
            placement[sid] = holders[0]
            assert by_target[ring.owner(sid)] == holders[0], (
                f"{sid}: nginx put it on shard {holders[0]}, the ketama ring says "
                f"{by_target[ring.owner(sid)]}"
            )
        per_shard = [sum(1 for v in placement.values() if v == s.index) for s in shards]
        report["sessions_per_shard"] = per_shard
        assert all(n > 0 for n in per_shard), f"a shard got no session: {per_shard}"
        calls = gateway.calls()
        assert calls, "the gateway logged no call"
        for call in calls:
            if call["method"] in PER_SESSION_METHODS:
                assert call["session"] in SESSIONS, f"per-session call without its header: {call}"
                assert call["shard"] == shards[placement[call["session"]]].target, call
        logged = {c["session"] for c in calls if c["method"] == "AppendSegment"}
        assert logged == set(SESSIONS), "appends missing from the gateway log"

        # 3. The CLI (C++ client) through the gateway; its calls carry the header too.
        cli_sid = "cli-session-1"
        turn_file = workdir / "cli-turn0.safetensors"
        _cli("demo-turn", "--out", str(turn_file), "--layers", "2", "--kv-heads", "2",
             "--query-heads", "4", "--head-dim", "16", "--tokens", "9", "--dtype", "float16",
             "--seed", "7", server=gateway.target)  # fmt: skip
        _cli("put", cli_sid, "--turn", "0", "--file", str(turn_file), server=gateway.target)
        _cli("show", cli_sid, server=gateway.target)
        _cli("get", cli_sid, "--method", "full", "--json", server=gateway.target)
        cli_holders = _holders(shards, cli_sid)
        assert cli_holders == [by_target[ring.owner(cli_sid)]], f"CLI session on {cli_holders}"
        _cli("rm", cli_sid, server=gateway.target)
        cli_calls = [c for c in gateway.calls() if c["session"] == cli_sid]
        assert {"AppendSegment", "GetSession", "GetCache", "DeleteSession"} <= {
            c["method"] for c in cli_calls
        }, f"CLI calls in the gateway log: {cli_calls}"
        for call in gateway.calls():
            if call["method"] in PER_SESSION_METHODS:
                assert call["session"], f"a per-session call without the header: {call}"
        assert _holders(shards, cli_sid) == []

        # 3b. A turn of Llama-3-8B's shape (32 layers, 8 kv heads, 512 tokens, D 128: 64 MiB in
        # 2 MiB layer messages) passes the gateway both ways, bit for bit.
        rng = np.random.default_rng(3)
        big = rng.standard_normal((2, 32, 8, 512, 128)).astype(np.float16)
        with Client(gateway.target, timeout=60.0, retries=0) as kv:
            t = time.monotonic()
            kv.append_turn("llama-turn", 0, list(big[0]), list(big[1]), model_id="llama-3-8b-shape")
            answer = kv.get_cache("llama-turn", method="full")
            report["llama_turn_64MiB_append_get_s"] = round(time.monotonic() - t, 2)
            for layer in answer.layers:
                assert layer.keys.tobytes() == big[0, layer.layer].tobytes(), layer.layer
                assert layer.values.tobytes() == big[1, layer.layer].tobytes(), layer.layer
            kv.delete("llama-turn")
        del big, answer

        # 4. SIGKILL one shard: its sessions are UNAVAILABLE, the others keep working.
        victim = shards[max(range(3), key=lambda i: per_shard[i])]
        victim.kill()
        down = [s for s in SESSIONS if placement[s] == victim.index]
        up = [s for s in SESSIONS if placement[s] != victim.index]
        with _client(gateway.target) as kv:
            for sid in down:
                assert _code(lambda sid=sid: kv.session(sid)) == grpc.StatusCode.UNAVAILABLE, sid
                assert _code(lambda sid=sid: kv.get_cache(sid, method="full")) == (
                    grpc.StatusCode.UNAVAILABLE
                ), sid
            assert _code(lambda: append_turn(kv, down[0], 2)) == grpc.StatusCode.UNAVAILABLE
            for sid in up:
                append_turn(kv, sid, 2)
                assert full_mismatch(kv.get_cache(sid, method="full"), sid, 3) is None, sid
        report["killed_shard_sessions"] = len(down)

        # 5. Restart it on its data: its sessions come back bit for bit.
        victim.start()
        with _client(gateway.target) as kv:
            for sid in down:
                assert full_mismatch(kv.get_cache(sid, method="full"), sid, 2) is None, sid

        # 6. A fourth shard: about 1/4 of the sessions move, as misses, exactly those predicted.
        shards.append(Shard(binary, workdir, 3).start())
        gateway.stop()
        gateway.write_config([s.target for s in shards])
        gateway.start()
        ring4 = KetamaRing([s.target for s in shards])
        moved = []
        with _client(gateway.target) as kv:
            for sid in SESSIONS:
                code = _code(lambda sid=sid: kv.session(sid))
                assert code in (None, grpc.StatusCode.NOT_FOUND), f"{sid}: {code}"
                if code == grpc.StatusCode.NOT_FOUND:
                    moved.append(sid)
            predicted = [s for s in SESSIONS if ring4.owner(s) == shards[3].target]
            assert moved == predicted, "nginx moved other sessions than the ketama ring predicts"
            fraction = len(moved) / len(SESSIONS)
            report["moved_on_fourth_shard"] = len(moved)
            report["moved_fraction"] = round(fraction, 3)
            # The share of the key space the new shard took, from the same ring (what a large
            # number of sessions would show; 60 sessions sample it).
            keys = [f"k{i}" for i in range(20000)]
            report["ring_share_of_fourth_shard"] = round(
                sum(ring4.owner(k) == shards[3].target for k in keys) / len(keys), 3
            )
            assert 0 < fraction <= 0.40, f"{len(moved)} of {len(SESSIONS)} sessions moved"
            for sid in SESSIONS:
                if sid not in moved:
                    assert _holders([shards[placement[sid]]], sid) == [placement[sid]]
            if moved:
                # A moved session is a miss: turn 1 finds no session, the worker refills from 0.
                sid = moved[0]
                assert _code(lambda: append_turn(kv, sid, 1)) == grpc.StatusCode.FAILED_PRECONDITION
                append_turn(kv, sid, 0)
                assert full_mismatch(kv.get_cache(sid, method="full"), sid, 1) is None
                assert sorted(_holders(shards, sid)) == sorted([placement[sid], 3]), (
                    "the refilled session lives on the new shard; the old copy is an orphan"
                )
        elapsed = time.monotonic() - start
        report["total_s"] = round(elapsed, 1)
        print("cluster-test: " + json.dumps(report))
        if path := os.environ.get("NEXUSKV_CLUSTER_REPORT"):
            Path(path).write_text(json.dumps(report) + "\n")
        assert elapsed < TIME_LIMIT_S, f"the cluster test took {elapsed:.0f} s (limit {TIME_LIMIT_S:.0f})"
    finally:
        gateway.stop()
        for shard in shards:
            shard.stop()
