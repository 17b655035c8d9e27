"""nexuskv.hf against transformers itself, on a small random Llama with GQA (no weights needed).

The references are computed by transformers' own sdpa attention on the full, uncompressed cache;
the cache built by nexuskv.hf must reproduce them when it holds the same information.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from nexuskv import hf  # noqa: E402
from nexuskv.types import CacheAnswer, CacheLayer, ModelSpec  # noqa: E402

TOL = 2e-5


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    config = transformers.LlamaConfig(
        vocab_size=97,
        hidden_size=64,
        intermediate_size=96,
        num_hidden_layers=3,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=16,
        max_position_embeddings=512,
        attn_implementation="sdpa",
    )
    m = transformers.LlamaForCausalLM(config).eval()
    return m


@pytest.fixture(scope="module")
def reference(model):
    """A 40-token context and 6 new tokens, with sdpa logits over the full context."""
    g = torch.Generator().manual_seed(1)
    ctx = torch.randint(0, 97, (1, 40), generator=g)
    new = torch.randint(0, 97, (1, 6), generator=g)
    model.set_attn_implementation("sdpa")
    with torch.no_grad():
        cache = transformers.DynamicCache()
        model(ctx, past_key_values=cache, use_cache=True)
        full = model(torch.cat([ctx, new], 1)).logits[:, 40:]
    return ctx, new, cache, full


def _kv(cache):
    return hf.turn_kv(cache, 0, cache.get_seq_length())


def test_zero_bias_matches_sdpa(model, reference):
    ctx, new, cache, full = reference
    keys, values = _kv(cache)
    zero = [torch.zeros(k.shape[0], k.shape[1]) for k in keys]
    hf.prepare_model(model)
    resumed = hf.cache_from_tensors(keys, values, next_position=40, bias=zero)
    logits = hf.forward(model, new, resumed)
    assert torch.allclose(logits, full, atol=TOL), (logits - full).abs().max()
    # Plain caches through the registered function are sdpa, bit for bit in spirit.
    plain = transformers.DynamicCache()
    with torch.no_grad():
        model(ctx, past_key_values=plain, use_cache=True)
    assert torch.allclose(hf.forward(model, new, plain), full, atol=TOL)


def test_compressed_cache_continues_at_next_position(model, reference):
    """Dropping entries == masking them out of the full context, per kv head, with the new tokens at
    their true positions (next_position.., not cache length..)."""
    ctx, new, cache, _ = reference
    keys, values = _kv(cache)
    g = torch.Generator().manual_seed(2)
    n_keep = 17
    # A different subset per (layer, kv head), each in position order.
    keep = [[torch.randperm(40, generator=g)[:n_keep].sort().values for _ in range(k.shape[0])] for k in keys]
    ck = [torch.stack([k[h, idx] for h, idx in enumerate(kl)]) for k, kl in zip(keys, keep, strict=True)]
    cv = [torch.stack([v[h, idx] for h, idx in enumerate(kl)]) for v, kl in zip(values, keep, strict=True)]
    hf.prepare_model(model)
    resumed = hf.cache_from_tensors(ck, cv, next_position=40)
    logits = hf.forward(model, new, resumed)

    # Reference: full context, but every layer/head only sees its kept entries. A per-layer mask
    # needs a per-layer run, so compare layer 0's effect by using one subset for all layers.
    common = keep[0][0]
    ck1 = [k[:, common] for k in keys]
    cv1 = [v[:, common] for v in values]
    resumed1 = hf.cache_from_tensors(ck1, cv1, next_position=40)
    logits1 = hf.forward(model, new, resumed1)
    mask = torch.full((1, 1, 6, 46), float("-inf"))
    mask[..., common] = 0.0
    mask[..., 40:] = torch.triu(torch.full((6, 6), float("-inf")), 1)
    model.set_attn_implementation("sdpa")
    with torch.no_grad():
        full_cache = transformers.DynamicCache()
        model(ctx, past_key_values=full_cache, use_cache=True)
        ref = model(
            new,
            past_key_values=full_cache,
            attention_mask=mask,
            position_ids=torch.arange(40, 46)[None],
            cache_position=torch.arange(40, 46),
        ).logits
    hf.prepare_model(model)
    assert torch.allclose(logits1, ref, atol=TOL), (logits1 - ref).abs().max()
    # The per-head subsets answer differently from the common subset (the test can fail).
    assert not torch.allclose(logits, logits1, atol=1e-3)


def test_bias_equals_duplicated_entry(model, reference):
    """One entry with bias log 2 attends exactly like that entry stored twice with bias 0."""
    _, new, cache, full = reference
    keys, values = _kv(cache)
    hf.prepare_model(model)
    j = 7
    dup_k = [torch.cat([k, k[:, j : j + 1]], 1) for k in keys]
    dup_v = [torch.cat([v, v[:, j : j + 1]], 1) for v in values]
    dup = hf.forward(model, new, hf.cache_from_tensors(dup_k, dup_v, next_position=40))
    bias = []
    for k in keys:
        b = torch.zeros(k.shape[0], k.shape[1])
        b[:, j] = math.log(2.0)
        bias.append(b)
    biased = hf.forward(model, new, hf.cache_from_tensors(keys, values, 40, bias=bias))
    assert torch.allclose(dup, biased, atol=TOL), (dup - biased).abs().max()
    assert not torch.allclose(biased, full, atol=1e-4)  # the bias really reached attention


def test_cache_from_answer_and_greedy(model, reference):
    _, new, cache, full = reference
    keys, values = _kv(cache)
    spec = ModelSpec("tiny", 3, 2, 4, 16, "float32")
    answer = CacheAnswer(
        session_id="s",
        model=spec,
        method="full",
        entries_per_layer=[40] * 3,
        original_tokens=40,
        next_position=40,
        turns=[],
        has_bias=True,
        cache_bytes=0,
        notes="",
        layers=[
            CacheLayer(
                i,
                k.numpy(),
                v.numpy(),
                np.zeros((2, 40), np.float32),
                np.tile(np.arange(40), (2, 1)),
            )
            for i, (k, v) in enumerate(zip(keys, values, strict=True))
        ],
    )
    hf.prepare_model(model)
    resumed = hf.cache_from_answer(answer)
    assert resumed.get_seq_length() == 40
    assert torch.allclose(hf.forward(model, new, resumed), full, atol=TOL)
    tokens, ttft = hf.greedy_generate(model, new[:, :1], hf.cache_from_answer(answer), 4)
    assert len(tokens) == 4 and ttft > 0


def test_record_queries_shapes(model, reference):
    ctx, _, _, _ = reference
    hf.prepare_model(model)
    with hf.record_queries() as rec, torch.no_grad():
        model(ctx[:, :25], past_key_values=(c := transformers.DynamicCache()), use_cache=True)
        model(ctx[:, 25:], past_key_values=c, use_cache=True)
    probes = rec.probes(30, 40)
    assert len(probes) == 3 and tuple(probes[0].shape) == (4, 10, 16)
    spread, offsets = rec.spread(10, 40, 4)  # queries 10, 20, 29, 39
    assert offsets == [0, 10, 19, 29]
    assert len(spread) == 3 and tuple(spread[0].shape) == (4, 4, 16)
    for layer, got in enumerate(spread):
        full = rec.layer(sorted(rec.queries)[layer])
        assert torch.equal(got, full[:, [10, 20, 29, 39], :])
    assert tuple(rec.spread(38, 40, 32)[0][0].shape) == (4, 2, 16)  # never more than the turn has
    with pytest.raises(ValueError, match="empty"):
        rec.spread(5, 5, 4)


def test_stacked_caches_match_separate_runs(model, reference):
    """Batching resumed caches of different lengths (padding masked by -inf bias) changes nothing."""
    _, new, cache, _ = reference
    keys, values = _kv(cache)
    hf.prepare_model(model)
    g = torch.Generator().manual_seed(3)
    caches, singles = [], []
    for n_keep in (40, 23, 9):
        idx = torch.randperm(40, generator=g)[:n_keep].sort().values
        bias = [torch.randn(k.shape[0], n_keep, generator=g) * 0.3 for k in keys]
        ck = [k[:, idx] for k in keys]
        cv = [v[:, idx] for v in values]
        singles.append(hf.forward(model, new, hf.cache_from_tensors(ck, cv, 40, bias=bias)))
        caches.append(hf.cache_from_tensors(ck, cv, 40, bias=bias))
    stacked = hf.stack_caches(caches)
    logits = hf.forward(model, new.expand(3, -1), stacked)
    for i, single in enumerate(singles):
        assert torch.allclose(logits[i : i + 1], single, atol=TOL), (logits[i] - single).abs().max()


def test_attention_weights_are_eager_probabilities(model, reference):
    ctx, _, _, _ = reference
    hf.prepare_model(model)
    with torch.no_grad():
        plain = model(ctx).logits
        with hf.attention_weights():
            out = model(ctx, output_attentions=True)
    assert torch.allclose(out.logits, plain, atol=TOL)
    probs = out.attentions[0]
    assert probs.shape == (1, 4, 40, 40)
    assert torch.allclose(probs.sum(-1), torch.ones(1, 4, 40), atol=1e-5)
    assert probs[0, :, 0, 1:].abs().max() == 0  # causal


def test_max_attention_is_the_largest_weight_of_the_group():
    torch.manual_seed(3)
    q, k = torch.randn(4, 5, 8), torch.randn(2, 7, 8)
    positions = torch.tensor([2, 3, 4, 5, 6])  # query r sees keys 0..r+2
    got = hf.max_attention(q, k, rows_per_step=3)
    causal = hf.max_attention(q, k, positions, rows_per_step=3)
    want, want_causal = torch.zeros(2, 7), torch.zeros(2, 7)
    for hq in range(4):
        logits = q[hq] @ k[hq // 2].T / 8**0.5  # [5, 7]
        want[hq // 2] = torch.maximum(want[hq // 2], torch.softmax(logits, -1).amax(0))
        hidden = torch.arange(7)[None, :] > positions[:, None]
        probs = torch.softmax(logits.masked_fill(hidden, float("-inf")), -1)
        want_causal[hq // 2] = torch.maximum(want_causal[hq // 2], probs.amax(0))
    assert torch.allclose(got, want, atol=1e-6)
    assert torch.allclose(causal, want_causal, atol=1e-6)
    assert not torch.allclose(causal, want, atol=1e-3)


def test_turn_scores_are_the_repeats_attention_times_the_cache_length(model, reference):
    ctx, _, _, _ = reference
    hf.prepare_model(model)
    cache = transformers.DynamicCache()
    with torch.no_grad():
        model(ctx, past_key_values=cache, use_cache=True)
    before = _kv(cache)
    turn, prompt = ctx[0, 25:].tolist(), [5, 6, 7]
    scores = hf.turn_scores(model, cache, turn, prompt)
    assert len(scores) == 3 and tuple(scores[0].shape) == (2, 15)
    assert cache.get_seq_length() == 40
    after = _kv(cache)
    assert all(torch.equal(a, b) for a, b in zip(before[0], after[0], strict=True))
    # The same repeat, with the model's own attention weights: rows of the repeated turn, columns of
    # the turn in the cache, max over the query heads of each kv head's group, times 40 positions.
    with torch.no_grad(), hf.attention_weights():
        out = model(
            torch.tensor([prompt + turn]), past_key_values=cache, use_cache=True, output_attentions=True
        )
    cache.crop(40)
    for layer, weights in enumerate(out.attentions):  # [1, 4, 18, 58]
        rows = weights[0, :, len(prompt) :, 25:40].reshape(2, 2 * 15, 15)
        assert torch.allclose(scores[layer], rows.amax(1) * 40, atol=1e-4)
    with pytest.raises(ValueError, match="cannot end there"):
        hf.turn_scores(model, cache, list(range(41)), [5])


def test_prefill_scores_are_the_turns_own_attention_times_the_cache_length(model, reference):
    ctx, _, _, _ = reference
    hf.prepare_model(model)
    cache = transformers.DynamicCache()
    with torch.no_grad(), hf.record_queries() as rec, hf.attention_weights():
        out = model(ctx, past_key_values=cache, use_cache=True, output_attentions=True)
    scores = hf.prefill_scores(cache, rec.probes(25, 40))
    assert len(scores) == 3 and tuple(scores[0].shape) == (2, 15)
    # The prefill's own weights: rows and columns of the turn (tokens 25..39), max over the query
    # heads of each kv head's group, times 40 positions.
    for layer, weights in enumerate(out.attentions):  # [1, 4, 40, 40]
        rows = weights[0, :, 25:40, 25:40].reshape(2, 2 * 15, 15)
        assert torch.allclose(scores[layer], rows.amax(1) * 40, atol=1e-4)
    with pytest.raises(ValueError, match="cannot end there"):
        hf.prefill_scores(cache, [torch.zeros(4, 41, 8)] * 3)
