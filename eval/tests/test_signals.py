"""eval.signals: the selection rules the study compares (the study itself runs the real model)."""

import math

import pytest
import torch

from eval.signals import SINKS, keep_masks, merged_rest, padding


def test_head_scope_keeps_the_same_count_everywhere_and_the_sinks():
    torch.manual_seed(0)
    layer_scores = [torch.rand(2, 40) for _ in range(3)]
    keep = keep_masks(layer_scores, (3, 2, 40), 0.25, "head")
    for layer, k in zip(layer_scores, keep, strict=True):
        assert k.sum(1).tolist() == [10, 10]
        assert k[:, :SINKS].all()
        for h in range(2):  # the rest are the best scored
            rest = layer[h, SINKS:]
            kept = rest[k[h, SINKS:]]
            assert kept.min() >= rest[~k[h, SINKS:]].max()


def test_global_scope_spends_the_budget_where_the_scores_are():
    layer_scores = [torch.zeros(2, 40) for _ in range(2)]
    layer_scores[1][0, 10:30] = 1.0  # one head of one layer reads 20 tokens, the rest read nothing
    keep = keep_masks(layer_scores, (2, 2, 40), 0.25, "global")
    assert sum(int(k.sum()) for k in keep) == 4 * 10  # the same total as the head scope
    assert keep[1][0, 10:30].all()
    assert all(k[:, :SINKS].all() for k in keep)


def test_layer_scope_gives_each_layer_its_global_share_evenly_over_its_heads():
    layer_scores = [torch.zeros(2, 40) for _ in range(2)]
    layer_scores[1][0, 10:30] = 1.0
    layer_scores[1][1, 30:40] = 0.5
    keep = keep_masks(layer_scores, (2, 2, 40), 0.25, "layer")
    glob = keep_masks(layer_scores, (2, 2, 40), 0.25, "global")
    for layer in range(2):
        want = max(SINKS, round(int(glob[layer].sum()) / 2))
        assert keep[layer].sum(1).tolist() == [want, want]
        assert keep[layer][:, :SINKS].all()
    assert keep[1][0, 10:30].sum() > 0


def test_merged_rest_stands_for_the_evicted_runs():
    torch.manual_seed(2)
    keys, values = torch.randn(1, 6, 4), torch.randn(1, 6, 4)
    keep = torch.tensor([[True, False, False, True, False, False]])
    weight = torch.tensor([[1.0, 1.0, 3.0, 1.0, 2.0, 2.0]])
    k, v, b = merged_rest(keys, values, weight, keep, 2)
    # evicted 1, 2, 4, 5 in two runs: (1, 2) weighted 1:3 and (4, 5) weighted 1:1
    assert k[0, 0] == pytest.approx(0.25 * keys[0, 1] + 0.75 * keys[0, 2], abs=1e-6)
    assert v[0, 1] == pytest.approx(0.5 * values[0, 4] + 0.5 * values[0, 5], abs=1e-6)
    assert b[0].tolist() == pytest.approx([math.log(2), math.log(2)])
    k, v, b = merged_rest(keys, values, weight, torch.ones(1, 6, dtype=torch.bool), 2)
    assert torch.isinf(b).all()  # nothing evicted: unused entries no query can attend to


def test_merged_rest_with_a_run_length_merges_only_the_best_evicted():
    torch.manual_seed(3)
    keys, values = torch.randn(1, 8, 4), torch.randn(1, 8, 4)
    keep = torch.tensor([[True, False, False, False, True, False, False, False]])
    weight = torch.tensor([[9.0, 5.0, 0.1, 4.0, 9.0, 0.2, 3.0, 0.3]])
    k, v, b = merged_rest(keys, values, weight, keep, 2, run=1)
    # the two best evicted are 1 (5.0) and 3 (4.0): one entry each, in token order, bias log 1
    assert torch.allclose(k[0], keys[0, [1, 3]]) and torch.allclose(v[0], values[0, [1, 3]])
    assert b[0].tolist() == [0.0, 0.0]
    k, v, b = merged_rest(keys, values, weight, keep, 2, run=2)
    # the four best evicted are 1, 3, 6 and 7 (0.3): runs (1, 3) and (6, 7); 2 and 5 stay evicted
    assert k[0, 1] == pytest.approx((3.0 * keys[0, 6] + 0.3 * keys[0, 7]) / 3.3, abs=1e-5)
    assert b[0].tolist() == pytest.approx([math.log(2), math.log(2)])


def test_recent_keeps_the_sinks_and_the_newest():
    keep = keep_masks(None, (1, 2, 40), 0.25, "head")[0]
    assert keep[:, :SINKS].all() and keep[:, 34:].all() and not keep[:, SINKS:34].any()


def test_an_unknown_scope_is_refused():
    with pytest.raises(ValueError, match="unknown scope"):
        keep_masks([torch.rand(1, 8)], (1, 1, 8), 0.5, "turn")


def test_padding_is_the_fullest_head_over_the_mean():
    even = [torch.ones(2, 8, dtype=torch.bool)]
    assert padding(even) == 1.0
    uneven = [torch.zeros(2, 8, dtype=torch.bool), torch.ones(2, 8, dtype=torch.bool)]
    uneven[0][0, :6] = True
    uneven[0][1, :2] = True  # layer 0: heads keep 6 and 2 -> padded to 6 each
    assert padding(uneven) == (6 + 8) / (4 + 8)
