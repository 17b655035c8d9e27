"""eval.fit_study: the least-squares fits the study compares (the study itself runs the real model)."""

import dataclasses
import json
import math

import numpy as np
import pytest
import torch

from eval.fit_study import history_error, merge, nnls, refit_head, summary, without_tail
from eval.worker_cost import summary as cost_summary
from nexuskv import hf
from nexuskv.types import CacheAnswer, CacheLayer


def _history(n: int = 12, d: int = 8, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, d, generator=g), torch.randn(n, d, generator=g), torch.randn(30, d, generator=g)


def test_nnls_solves_a_consistent_system_and_keeps_weights_non_negative():
    a = torch.tensor([[1.0, 0.0], [0.0, 2.0], [1.0, 1.0]], dtype=torch.float64)
    w = nnls(a, a @ torch.tensor([3.0, 0.5], dtype=torch.float64), torch.ones(2, dtype=torch.float64))
    assert torch.allclose(w, torch.tensor([3.0, 0.5], dtype=torch.float64), atol=1e-2)
    # The unconstrained optimum has a negative weight; the fit clamps it at 0.
    w = nnls(a, torch.tensor([-1.0, 2.0, 0.0], dtype=torch.float64), torch.ones(2, dtype=torch.float64))
    assert w.min() >= 0 and w[0] == 0


def test_an_answer_holding_every_token_is_left_as_it_is():
    keys, values, queries = _history()
    entries = {"keys": keys, "values": values, "bias": torch.zeros(12), "positions": torch.arange(12)}
    bias, vals = refit_head(keys, values, queries, torch.full((30,), 12), entries, "all")
    assert torch.allclose(bias, torch.zeros(12), atol=1e-3)
    assert torch.allclose(vals, values, atol=1e-3)


def test_a_merged_entry_takes_the_mass_and_mean_value_of_the_tokens_it_stands_for():
    keys, values, queries = _history()
    keys[6:] = keys[6]  # six evicted tokens with one key: one entry can stand for them exactly
    entries = {
        "keys": torch.cat([keys[:6], keys[6:7]]),
        "values": torch.cat([values[:6], torch.zeros(1, 8)]),
        "bias": torch.tensor([0.0] * 6 + [math.log(2)]),  # a run mean with the wrong mass
        "positions": torch.tensor([0, 1, 2, 3, 4, 5, 11]),
    }
    bias, vals = refit_head(keys, values, queries, torch.full((30,), 12), entries, "merged", strength=1e-9)
    assert torch.equal(bias[:6], torch.zeros(6)) and torch.equal(vals[:6], values[:6])  # exact stay
    assert math.isclose(float(bias[6]), math.log(6), abs_tol=1e-3)
    assert torch.allclose(vals[6], values[6:].mean(0), atol=1e-3)


def test_queries_only_see_the_history_before_their_horizon():
    keys, values, queries = _history()
    keys[6:] = keys[6]
    entries = {
        "keys": torch.cat([keys[:6], keys[6:7]]),
        "values": torch.cat([values[:6], torch.zeros(1, 8)]),
        "bias": torch.tensor([0.0] * 6 + [math.log(2)]),
        "positions": torch.tensor([0, 1, 2, 3, 4, 5, 11]),
    }
    # Rows that end before token 11 cannot see the merged entry: only those ending after it fit it.
    horizon = torch.tensor([6] * 20 + [12] * 10)
    bias, _ = refit_head(keys, values, queries, horizon, entries, "merged", strength=1e-9)
    assert math.isclose(float(bias[6]), math.log(6), abs_tol=1e-3)


def test_worker_cost_summary_is_ratios_to_the_turns_prefill():
    rows = [
        {"prefill_s": 1.0, "repeat_s": 1.5, "prefill_scores_s": 0.1},
        {"prefill_s": 2.0, "repeat_s": 2.0, "prefill_scores_s": 0.4},
        {"prefill_s": 1.0, "repeat_s": 0.5, "prefill_scores_s": 0.3},
    ]
    s = cost_summary(rows)
    assert s["turns"] == 3 and s["prefill_s"] == 4.0
    assert s["repeat_s_median_ratio"] == 1.0 and s["repeat_s_total_ratio"] == 1.0
    assert math.isclose(s["prefill_scores_s_median_ratio"], 0.2)
    assert math.isclose(s["prefill_scores_s_total_ratio"], 0.2)


def _answer(positions: list[list[int]], next_position: int) -> CacheAnswer:
    pos = np.array(positions, dtype=np.int64)
    h, n = pos.shape
    layer = CacheLayer(
        layer=0,
        keys=np.arange(h * n * 2, dtype=np.float32).reshape(h, n, 2),
        values=-np.arange(h * n * 2, dtype=np.float32).reshape(h, n, 2),
        bias=np.zeros((h, n), dtype=np.float32),
        positions=pos,
    )
    return CacheAnswer(
        session_id="s",
        model=None,
        method="sonic",
        entries_per_layer=[n],
        original_tokens=10,
        next_position=next_position,
        turns=[],
        has_bias=True,
        cache_bytes=0,
        notes="",
        layers=[layer],
    )


def test_a_steering_turn_comes_off_the_answer_and_nothing_else_does():
    # Two kv heads keep different history tokens, then the raw steering turn at positions 7..8.
    answer = _answer([[0, 3, 5, 7, 8], [0, 2, 6, 7, 8]], next_position=9)
    out = without_tail(answer, 2, 7)
    assert out.next_position == 7 and out.entries_per_layer == [3]
    assert out.layers[0].positions.tolist() == [[0, 3, 5], [0, 2, 6]]
    assert np.array_equal(out.layers[0].keys, answer.layers[0].keys[:, :3])
    assert np.array_equal(out.layers[0].values, answer.layers[0].values[:, :3])
    assert out.layers[0].bias.shape == (2, 3)


def test_an_answer_whose_tail_is_not_the_steering_turn_is_refused():
    answer = _answer([[0, 3, 5, 7, 8], [0, 2, 6, 8, 9]], next_position=9)
    with pytest.raises(ValueError, match="not the steering turn"):
        without_tail(answer, 2, 7)


def test_runs_pool_on_the_rows_every_record_has(tmp_path):
    a, b = tmp_path / "a.json", tmp_path / "b.json"
    a.write_text(json.dumps([{"kl": {"base@0.1": 0.2, "x@0.1": 0.1}}]))
    b.write_text(json.dumps([{"kl": {"base@0.1": 0.4, "x@0.1": 0.1, "y@0.1": 0.3}}]))
    records = merge([str(a), str(b)])
    assert [sorted(r["kl"]) for r in records] == [["base@0.1", "x@0.1"]] * 2
    table = summary(records)
    assert "| x@0.1 | 0.1000 | 0.1000 | -0.2000 +- 0.1000 (better on 2) |" in table
    assert "y@0.1" not in table


def test_history_error_is_zero_for_the_history_itself_and_grows_when_a_token_goes():
    g = torch.Generator().manual_seed(0)
    k, v = torch.randn(2, 6, 4, generator=g), torch.randn(2, 6, 4, generator=g)
    cache = hf.cache_from_tensors([k], [v], next_position=6)
    rows = [torch.randn(4, 5, 4, generator=g)]  # 4 query heads, 2 per kv head, 5 rows each
    answer = _answer([list(range(6))] * 2, next_position=6)
    layer = dataclasses.replace(answer.layers[0], keys=k.numpy(), values=v.numpy())
    whole = dataclasses.replace(answer, layers=[layer])
    assert history_error(whole, cache, 6, rows) < 1e-12
    # A merged entry with bias log 2 standing for two tokens with one key and value is exact too.
    k2, v2 = k.clone(), v.clone()
    k2[:, 5], v2[:, 5] = k2[:, 4], v2[:, 4]
    cache2 = hf.cache_from_tensors([k2], [v2], next_position=6)
    merged = dataclasses.replace(
        layer,
        keys=k2[:, :5].numpy(),
        values=v2[:, :5].numpy(),
        bias=np.array([[0, 0, 0, 0, np.log(2)]] * 2, dtype=np.float32),
        positions=np.array([[0, 1, 2, 3, 5]] * 2),
    )
    assert history_error(dataclasses.replace(answer, layers=[merged]), cache2, 6, rows) < 1e-10
    dropped = dataclasses.replace(
        layer,
        keys=k[:, :5].numpy(),
        values=v[:, :5].numpy(),
        bias=layer.bias[:, :5],
        positions=layer.positions[:, :5],
    )
    assert history_error(dataclasses.replace(answer, layers=[dropped]), cache, 6, rows) > 1e-3
