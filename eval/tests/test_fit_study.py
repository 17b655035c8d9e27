"""eval.fit_study: the least-squares fits the study compares (the study itself runs the real model)."""

import math

import torch

from eval.fit_study import nnls, refit_head
from eval.worker_cost import summary


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
    s = summary(rows)
    assert s["turns"] == 3 and s["prefill_s"] == 4.0
    assert s["repeat_s_median_ratio"] == 1.0 and s["repeat_s_total_ratio"] == 1.0
    assert math.isclose(s["prefill_scores_s_median_ratio"], 0.2)
    assert math.isclose(s["prefill_scores_s_total_ratio"], 0.2)
