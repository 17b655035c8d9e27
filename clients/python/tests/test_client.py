"""nexuskv.Client against a real nexuskv-server process."""

from __future__ import annotations

import time

import grpc
import numpy as np
import pytest

from nexuskv import Client, NexusKVError
from nexuskv.local_server import LocalServer, free_port

L, H, HQ, D = 3, 2, 4, 8


def make_turn(rng: np.random.Generator, t: int, p: int = 4, dtype: str = "float32"):
    keys = [rng.standard_normal((H, t, D)).astype(dtype) for _ in range(L)]
    values = [rng.standard_normal((H, t, D)).astype(dtype) for _ in range(L)]
    probes = [rng.standard_normal((HQ, min(p, t), D)).astype(dtype) for _ in range(L)]
    return keys, values, probes


def append_session(client: Client, sid: str, lengths: list[int], dtype: str = "float32", seed=0):
    rng = np.random.default_rng(seed)
    turns = []
    roles = ["system", "user", "assistant"]
    for turn, t in enumerate(lengths):
        k, v, q = make_turn(rng, t, dtype=dtype)
        r = client.append_turn(sid, turn, k, v, q, role=roles[min(turn, 2)], model_id="test-model")
        assert r.turn == turn and r.num_turns == turn + 1 and not r.already_stored
        turns.append((k, v, q))
    return turns


@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_full_returns_exact_bytes(client, sid, dtype):
    turns = append_session(client, sid, [5, 7, 3], dtype=dtype)
    answer = client.get_cache(sid, method="full")
    assert answer.method == "full"
    assert answer.next_position == 15 and answer.original_tokens == 15
    assert answer.entries_per_layer == [15] * L
    assert answer.model.dtype == dtype and answer.model.num_query_heads == HQ
    assert [t.raw for t in answer.turns] == [True] * 3
    for layer in range(L):
        want_k = np.concatenate([k[layer] for k, _, _ in turns], axis=1)
        want_v = np.concatenate([v[layer] for _, v, _ in turns], axis=1)
        assert answer.keys[layer].dtype == np.dtype(dtype)
        assert answer.keys[layer].tobytes() == want_k.tobytes()
        assert answer.values[layer].tobytes() == want_v.tobytes()
        assert (answer.positions[layer] == np.arange(15)[None, :]).all()


def test_torch_tensors_and_bfloat16(client, sid):
    torch = pytest.importorskip("torch")
    g = torch.Generator().manual_seed(0)
    k = [torch.randn(H, 6, D, generator=g, dtype=torch.float32).to(torch.bfloat16) for _ in range(L)]
    v = [torch.randn(H, 6, D, generator=g).to(torch.bfloat16) for _ in range(L)]
    client.append_turn(sid, 0, k, v, role="user", model_id="bf16")
    answer = client.get_cache(sid, method="full")
    assert answer.model.dtype == "bfloat16"
    for layer in range(L):
        assert torch.equal(torch.from_numpy(answer.keys[layer]), k[layer].float())
        assert torch.equal(torch.from_numpy(answer.values[layer]), v[layer].float())


@pytest.mark.parametrize("method", ["h2o", "streaming_llm", "snapkv"])
@pytest.mark.parametrize("ratio", [0.5, 0.25])
def test_baselines_fit_the_budget(client, sid, method, ratio):
    lengths = [16, 24, 32, 8]
    append_session(client, sid, lengths)
    answer = client.get_cache(sid, method=method, keep_ratio=ratio, keep_recent_turns=1)
    assert answer.method == method
    assert answer.next_position == sum(lengths)
    assert len(answer.turns) == 4 and answer.turns[-1].raw
    compressed = answer.turns[:-1]
    kept = sum(t.kept_entries for t in compressed)
    assert 0 < kept <= ratio * sum(lengths[:-1]) + len(compressed)  # rounding per turn at most
    n = answer.entries_per_layer[0]
    assert n == kept + lengths[-1]
    for layer in answer.layers:
        assert layer.keys.shape == (H, answer.entries_per_layer[layer.layer], D)
        assert layer.values.shape == layer.keys.shape
        assert layer.positions.shape == layer.keys.shape[:2]
        # Positions are real token positions, increasing within each head, raw turn at the end.
        assert (np.diff(layer.positions, axis=1) > 0).all()
        assert (layer.positions[:, -lengths[-1] :] == np.arange(72, 80)).all()


def test_max_tokens_budget(client, sid):
    append_session(client, sid, [20, 20, 20])
    answer = client.get_cache(sid, method="streaming_llm", max_tokens=25)
    assert max(answer.entries_per_layer) <= 25


def test_budget_below_one_entry_per_layer_names_the_smallest(client, sid):
    append_session(client, sid, [10, 10])
    # L x H x 2 x D x 4 bytes = 384 bytes per entry in every layer and kv head.
    with pytest.raises(NexusKVError) as e:
        client.get_cache(sid, method="h2o", max_bytes=10)
    assert e.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert "the smallest max_bytes is 384" in e.value.details
    assert client.get_cache(sid, method="h2o", max_bytes=384).entries_per_layer == [1, 1, 1]
    with pytest.raises(NexusKVError) as e:
        client.get_cache(sid, method="streaming_llm", keep_ratio=0.01)
    assert e.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert "the smallest keep_ratio that keeps one is 0.05" in e.value.details


def test_sessions_session_delete(client, sid):
    append_session(client, sid, [4, 4])
    info = client.session(sid)
    assert info.num_turns == 2 and info.total_tokens == 8 and info.next_position == 8
    assert [t.first_position for t in info.turns] == [0, 4]
    assert info.model is not None and info.model.model_id == "test-model"
    for t in info.turns:  # compression runs in the background: any state but failed
        assert set(t.fits) == {"sonic", "h2o", "snapkv"}
        assert set(t.fits.values()) <= {"pending", "stored"} and t.fit_errors == {}
    client.get_cache(sid, method="sonic", keep_ratio=0.5)  # reads (so stores) both SONIC fits
    assert [t.fits["sonic"] for t in client.session(sid).turns] == ["stored", "stored"]
    listed = [s.session_id for s in client.sessions(prefix=sid)]
    assert listed == [sid]
    result = client.delete(sid)
    assert result.deleted_turns == 2 and result.freed_bytes > 0
    with pytest.raises(NexusKVError) as e:
        client.session(sid)
    assert e.value.code == grpc.StatusCode.NOT_FOUND


def test_sessions_pages(client, sid):
    for i in range(5):
        append_session(client, f"{sid}-{i}", [2])
    ids = [s.session_id for s in client.sessions(prefix=sid + "-", page_size=2)]
    assert ids == [f"{sid}-{i}" for i in range(5)]


def test_retried_append_is_a_noop_and_conflict_is_refused(client, sid):
    rng = np.random.default_rng(1)
    k, v, q = make_turn(rng, 5)
    client.append_turn(sid, 0, k, v, q, role="user", model_id="m")
    again = client.append_turn(sid, 0, k, v, q, role="user", model_id="m")
    assert again.already_stored and again.num_turns == 1
    k2 = [x.copy() for x in k]
    k2[0][0, 0, 0] += 1.0
    with pytest.raises(NexusKVError) as e:
        client.append_turn(sid, 0, k2, v, q, role="user", model_id="m")
    assert e.value.code == grpc.StatusCode.ALREADY_EXISTS


def test_probe_offsets_say_where_the_probes_are(client, sid):
    rng = np.random.default_rng(2)
    k, v, q = make_turn(rng, 12)  # 4 probes
    with pytest.raises(ValueError, match="3 probe_offsets for 4"):
        client.append_turn(sid, 0, k, v, q, role="user", model_id="m", probe_offsets=[0, 5, 11])
    with pytest.raises(NexusKVError) as e:
        client.append_turn(sid, 0, k, v, q, role="user", model_id="m", probe_offsets=[0, 5, 5, 11])
    assert e.value.code == grpc.StatusCode.INVALID_ARGUMENT and "strictly ascending" in e.value.details
    client.append_turn(sid, 0, k, v, q, role="user", model_id="m", probe_offsets=[0, 4, 8, 11])
    k2, v2, q2 = make_turn(rng, 6)
    client.append_turn(sid, 1, k2, v2, q2, role="assistant", model_id="m")
    for method in ("sonic", "h2o", "snapkv"):
        answer = client.get_cache(sid, method=method, keep_ratio=0.5)
        assert answer.original_tokens == 18


def test_errors_carry_status_codes(client, sid):
    with pytest.raises(NexusKVError) as e:
        client.get_cache("no-such-session", method="full")
    assert e.value.code == grpc.StatusCode.NOT_FOUND
    assert e.value.rpc == "GetCache"

    rng = np.random.default_rng(2)
    k, v, q = make_turn(rng, 4)
    # A gap in turns.
    with pytest.raises(NexusKVError) as e:
        client.append_turn(sid, 3, k, v, q, role="user", model_id="m", first_position=0)
    assert e.value.code == grpc.StatusCode.FAILED_PRECONDITION
    # A non-finite value.
    bad = [x.copy() for x in k]
    bad[1][0, 0, 0] = np.nan
    with pytest.raises(NexusKVError) as e:
        client.append_turn(sid, 0, bad, v, q, role="user", model_id="m")
    assert e.value.code == grpc.StatusCode.INVALID_ARGUMENT
    # A bad session id.
    with pytest.raises(NexusKVError) as e:
        client.append_turn("bad id!", 0, k, v, q, role="user", model_id="m")
    assert e.value.code == grpc.StatusCode.INVALID_ARGUMENT
    # A model spec that differs from the session's.
    client.append_turn(sid, 0, k, v, q, role="user", model_id="m")
    k3, v3, q3 = make_turn(rng, 4, dtype="float16")
    with pytest.raises(NexusKVError) as e:
        client.append_turn(sid, 1, k3, v3, q3, role="user", model_id="m")
    assert e.value.code == grpc.StatusCode.FAILED_PRECONDITION
    # A keep_ratio outside (0, 1].
    with pytest.raises(NexusKVError) as e:
        client.get_cache(sid, method="h2o", keep_ratio=1.5)
    assert e.value.code == grpc.StatusCode.INVALID_ARGUMENT
    # A refused request changed nothing.
    assert client.session(sid).num_turns == 1


def test_client_side_argument_checks(client):
    with pytest.raises(ValueError):
        client.get_cache("x", method="h2o")  # no budget
    with pytest.raises(ValueError):
        client.get_cache("x", method="h2o", keep_ratio=0.5, max_tokens=3)
    with pytest.raises(ValueError):
        client.get_cache("x", method="nope", keep_ratio=0.5)


def test_sonic_answers_or_is_unimplemented(client, sid):
    append_session(client, sid, [16, 16, 8])
    try:
        answer = client.get_cache(sid, method="sonic", keep_ratio=0.25, keep_recent_turns=1)
    except NexusKVError as e:
        assert e.code == grpc.StatusCode.UNIMPLEMENTED
        return
    assert answer.method == "sonic" and answer.next_position == 40
    assert answer.turns[-1].raw and answer.entries_per_layer[0] <= 8 + 0.25 * 32 + 2
    if answer.has_bias:
        assert all(b is not None and np.isfinite(b).all() for b in answer.bias)
    nobias = client.get_cache(sid, method="sonic", keep_ratio=0.25, keep_recent_turns=1, bias=False)
    assert not nobias.has_bias and all(b is None for b in nobias.bias)


def test_unavailable_is_retried_with_backoff():
    """Nothing listens: UNAVAILABLE, retried `retries` times with growing delays, then raised."""
    port = free_port()
    with Client(f"127.0.0.1:{port}", timeout=2.0, retries=3, backoff=0.2) as c:
        start = time.monotonic()
        with pytest.raises(NexusKVError) as e:
            c.session("x")
        elapsed = time.monotonic() - start
    assert e.value.code == grpc.StatusCode.UNAVAILABLE
    # Three sleeps of at least 50% of 0.2, 0.4, 0.8 s.
    assert elapsed >= 0.5 * (0.2 + 0.4 + 0.8)


def test_retry_reaches_a_server_that_comes_up(tmp_path):
    """The server starts while the client is backing off: the call succeeds."""
    from concurrent.futures import ThreadPoolExecutor

    port = free_port()
    server = LocalServer(data_dir=tmp_path / "d", port=port, log_path=tmp_path / "log")
    with (
        Client(server.target, timeout=5.0, retries=12, backoff=0.25, max_backoff=1.0) as c,
        ThreadPoolExecutor(1) as pool,
    ):
        pending = pool.submit(lambda: list(c.sessions()))
        time.sleep(0.5)
        assert not pending.done()  # still retrying: nothing listens yet
        server.start()
        try:
            assert pending.result(timeout=30) == []
        finally:
            server.stop()


def test_not_found_is_not_retried(client):
    start = time.monotonic()
    with pytest.raises(NexusKVError) as e:
        client.delete("missing-session")
    assert e.value.code == grpc.StatusCode.NOT_FOUND
    assert time.monotonic() - start < 1.0


def test_every_call_has_a_deadline(server, sid):
    """Each RPC goes out with a timeout: the client default, or the per-call override."""
    seen: list[tuple[str, float | None]] = []
    with Client(server.target, timeout=7.0) as c:
        for rpc in ("AppendSegment", "GetCache", "GetSession", "ListSessions", "DeleteSession"):
            inner = getattr(c._stub, rpc)

            def spy(*args, _inner=inner, _rpc=rpc, **kwargs):
                seen.append((_rpc, kwargs.get("timeout")))
                return _inner(*args, **kwargs)

            setattr(c._stub, rpc, spy)
        rng = np.random.default_rng(3)
        k, v, q = make_turn(rng, 4)
        c.append_turn(sid, 0, k, v, q, role="user", model_id="m")
        c.get_cache(sid, method="full", timeout=3.0)
        c.session(sid)
        list(c.sessions(prefix=sid))
        c.delete(sid)
    assert seen == [
        ("AppendSegment", 7.0),
        ("GetCache", 3.0),
        ("GetSession", 7.0),
        ("ListSessions", 7.0),
        ("DeleteSession", 7.0),
    ]


@pytest.mark.parametrize("method", ["h2o", "streaming_llm", "snapkv"])
def test_selection_methods_return_stored_rows(client, sid, method):
    """Selection baselines return stored entries unchanged: each (key, value) is the one appended
    at the position the answer reports for it."""
    lengths = [12, 20, 28, 6]
    turns = append_session(client, sid, lengths, seed=5)
    answer = client.get_cache(sid, method=method, keep_ratio=0.5, keep_recent_turns=1)
    for layer in answer.layers:
        all_k = np.concatenate([k[layer.layer] for k, _, _ in turns], axis=1)
        all_v = np.concatenate([v[layer.layer] for _, v, _ in turns], axis=1)
        for h in range(H):
            pos = layer.positions[h]
            assert (layer.keys[h] == all_k[h, pos]).all(), f"layer {layer.layer} head {h} keys"
            assert (layer.values[h] == all_v[h, pos]).all(), f"layer {layer.layer} head {h} values"


def test_token_scores_spend_the_budget_where_they_are(client, sid):
    rng = np.random.default_rng(5)
    k, v, q = make_turn(rng, 20)
    scores = [np.full((H, 20), 0.01, dtype=np.float32) for _ in range(L)]
    scores[1][:, 4:16] = 1.0  # layer 1 reads 12 tokens of the turn; every other layer little
    with pytest.raises(ValueError, match=r"not \[H, T\]"):
        client.append_turn(sid, 0, k, v, q, model_id="m", token_scores=[s[:, :5] for s in scores])
    negative = [s.copy() for s in scores]
    negative[0][0, 3] = -1.0
    with pytest.raises(NexusKVError) as e:
        client.append_turn(sid, 0, k, v, q, model_id="m", token_scores=negative)
    assert e.value.code == grpc.StatusCode.INVALID_ARGUMENT and "must be >= 0" in e.value.details
    client.append_turn(sid, 0, k, v, q, model_id="m", token_scores=scores)
    k2, v2, q2 = make_turn(rng, 6)
    client.append_turn(sid, 1, k2, v2, q2, role="assistant", model_id="m", token_scores=np.ones((L, H, 6)))
    # Without bias every head of a layer holds the layer's share; layer 1 gets the most.
    even = client.get_cache(sid, method="sonic", keep_ratio=0.5, keep_recent_turns=1, bias=False)
    per_layer = [int(n) - 6 for n in even.entries_per_layer]  # the newest turn is raw
    assert per_layer[1] > per_layer[0], per_layer
    assert sum(per_layer) <= 10 * L
    # With bias each (turn, layer) holds the count its fullest head wants, every head filling it
    # with its own best tokens and merged entries: the answer holds the budget, padding included.
    answer = client.get_cache(sid, method="sonic", keep_ratio=0.5, keep_recent_turns=1)
    held = [int(n) - 6 for n in answer.entries_per_layer]
    assert held[1] > held[0], held
    assert sum(held) <= 10 * L, held
    assert client.append_turn(sid, 0, k, v, q, model_id="m", token_scores=scores).already_stored


def _append_scored(client: Client, sid: str, lengths: list[int]) -> list[tuple]:
    """Turns whose token scores fall with the position, so each head evicts its latest tokens."""
    rng = np.random.default_rng(13)
    turns, first = [], 0
    for turn, t in enumerate(lengths):
        k, v, q = make_turn(rng, t)
        pos = first + np.arange(t, dtype=np.float32)
        scores = [np.stack([(1 + 0.3 * layer + 0.1 * h) / (1 + pos) for h in range(H)]) for layer in range(L)]
        role = "user" if turn % 2 == 0 else "assistant"
        client.append_turn(sid, turn, k, v, q, role=role, model_id="m", token_scores=scores)
        turns.append((k, v))
        first += t
    return turns


def test_merged_entries_stand_for_evicted_runs_and_the_flag_turns_them_off(client, sid):
    lengths = [40, 40, 6]
    turns = _append_scored(client, sid, lengths)
    answer = client.get_cache(sid, method="sonic", keep_ratio=0.5, keep_recent_turns=1)
    merged = 0
    for layer in answer.layers:
        all_k = np.concatenate([k[layer.layer] for k, _ in turns], axis=1)
        for h in range(H):
            bias, pos = layer.bias[h], layer.positions[h]
            real = np.isfinite(bias)
            assert (np.diff(pos[real]) > 0).all(), "positions ascend, padding aside"
            raw = real & (bias == 0)
            assert (layer.keys[h][raw] == all_k[h, pos[raw]]).all(), "kept tokens are exact"
            runs = real & (bias > 0)  # merged entries: bias log(run length), at the run's last token
            assert (pos[runs] < 80).all() and not np.isin(pos[runs], pos[raw]).any()
            merged += int(runs.sum())
    assert merged > 0
    held = sum(int(n) for n in answer.entries_per_layer) - 6 * L
    assert held <= 40 * L, "merged entries and any padding are inside the budget"

    with LocalServer(extra_args=["--merge_share=0"]) as off, Client(off.target, timeout=30.0) as c:
        _append_scored(c, sid, lengths)
        answer = c.get_cache(sid, method="sonic", keep_ratio=0.5, keep_recent_turns=1)
        for layer in answer.layers:
            assert ((layer.bias == 0) | np.isneginf(layer.bias)).all()
    with pytest.raises(RuntimeError, match="merge_share must be in"):
        LocalServer(extra_args=["--merge_share=0.9"]).start()
