"""Hugging Face transformers integration: turns out of a DynamicCache, caches back from the tier.

    from nexuskv import Client, hf

    hf.prepare_model(model)                       # registers the "nexuskv" attention function
    with hf.record_queries() as rec:              # post-rotary queries, for probes
        out = model(ids, past_key_values=cache)
    keys, values = hf.turn_kv(cache, start, end)  # per layer [H, T, D]
    probes, offsets = rec.spread(start, end, 32)  # per layer [Hq, P, D]: 32 queries across the turn
    client.append_turn(sid, turn, keys, values, probes, probe_offsets=offsets, role="user",
                       model_id="smollm2-135m")

    answer = client.get_cache(sid, keep_ratio=0.2, keep_recent_turns=1)
    resumed = hf.cache_from_answer(answer)        # a DynamicCache the model continues from
    logits = hf.forward(model, new_ids, resumed)  # positions next_position.., bias applied

Why a registered attention function: a compressed answer is not a prefix of the conversation. Its
entries sit at non-contiguous positions (the new tokens still go at next_position), layers may hold
different entry counts, and SONIC entries carry a log-weight bias b so that attention is
softmax(q.k/sqrt(D) + b). transformers' built-in attention adds no per-key bias, and its causal mask
assumes cache index == position. The "nexuskv" attention function (registered with
transformers.AttentionInterface, mask creation as sdpa) behaves exactly like sdpa for ordinary
caches, and for a NexusCache builds the mask itself (every cached entry visible, causal among new
tokens) and adds the bias. prepare_model() also installs a pre-forward hook that gives new tokens
position ids next_position + i whenever the cache is a NexusCache, so plain model(...) calls are
right; HF generate() is not supported on a NexusCache (it assumes input_ids cover the cache): use
greedy_generate().

Written against the transformers >= 4.56 cache API (Cache.layers[i].keys / .values, [B, H, T, D]);
tested with the version pinned in scripts/python-env.sh. Caches are batch size 1, except
stack_caches(), which batches several resumed caches for one forward.
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from transformers import DynamicCache

from .types import CacheAnswer

ATTENTION = "nexuskv"

_TORCH_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


# -- reading a DynamicCache ------------------------------------------------------------------------


def _layer_kv(cache: Any, layer: int) -> tuple[torch.Tensor, torch.Tensor]:
    if hasattr(cache, "layers"):  # transformers >= 4.56
        return cache.layers[layer].keys, cache.layers[layer].values
    return cache.key_cache[layer], cache.value_cache[layer]  # older releases


def num_layers(cache: Any) -> int:
    return len(cache.layers) if hasattr(cache, "layers") else len(cache.key_cache)


def turn_kv(cache: Any, start: int, end: int) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Keys and values of cache entries [start, end) of batch row 0: per layer [H, T, D].

    For a cache built by prefill, entry index == token position, so [start, end) is one turn's
    tokens. Keys are post-rotary, as the cache holds them.
    """
    keys, values = [], []
    for layer in range(num_layers(cache)):
        k, v = _layer_kv(cache, layer)
        if end > k.shape[-2]:
            raise ValueError(f"layer {layer} holds {k.shape[-2]} entries, asked for [{start}, {end})")
        keys.append(k[0, :, start:end, :].contiguous())
        values.append(v[0, :, start:end, :].contiguous())
    return keys, values


# -- query recording (probe queries) ---------------------------------------------------------------


@dataclass
class QueryRecorder:
    """Post-rotary queries seen by the "nexuskv" attention function, per layer [Hq, Q, D].

    Queries of successive forward calls are concatenated along Q, so after prefilling a
    conversation, column i is the query of the i-th token fed while recording.
    """

    queries: dict[int, list[torch.Tensor]] = field(default_factory=dict)

    def record(self, layer: int, query: torch.Tensor) -> None:
        self.queries.setdefault(layer, []).append(query[0].detach())

    def layer(self, layer: int) -> torch.Tensor:
        parts = self.queries[layer]
        if len(parts) > 1:
            self.queries[layer] = [torch.cat(parts, dim=1)]
        return self.queries[layer][0]

    def probes(self, start: int, end: int) -> list[torch.Tensor]:
        """Recorded queries [start, end) (indices into the recorded tokens), per layer [Hq, P, D]."""
        return [self.layer(i)[:, start:end, :].contiguous() for i in self._layers()]

    def spread(self, start: int, end: int, count: int) -> tuple[list[torch.Tensor], list[int]]:
        """min(count, end - start) recorded queries spread evenly over [start, end), first and last
        included: per layer [Hq, P, D], and their offsets in the turn (for append_turn's
        probe_offsets). The probes to send with the turn [start, end).

        Queries from the whole turn show the fit what the turn's tokens are asked, better than the
        turn's last queries alone (docs/experiments/sonic-allocation.md, "Probe placement", measures both)."""
        if end <= start:
            raise ValueError(f"empty range [{start}, {end})")
        p = min(count, end - start)
        if p < 1:
            raise ValueError(f"count must be positive, got {count}")
        index = torch.linspace(start, end - 1, p).round().long()
        probes = [self.layer(i)[:, index, :].contiguous() for i in self._layers()]
        return probes, [int(i) - start for i in index]

    def _layers(self) -> list[int]:
        if not self.queries:
            raise RuntimeError(
                "no queries recorded: call hf.prepare_model(model) so the model runs the "
                f"{ATTENTION!r} attention function"
            )
        return sorted(self.queries)


_RECORDER: contextvars.ContextVar[QueryRecorder | None] = contextvars.ContextVar(
    "nexuskv_recorder", default=None
)


@contextlib.contextmanager
def record_queries() -> Iterator[QueryRecorder]:
    """Records the post-rotary queries of every forward run inside the block (this thread)."""
    recorder = QueryRecorder()
    token = _RECORDER.set(recorder)
    try:
        yield recorder
    finally:
        _RECORDER.reset(token)


# -- a cache built from a GetCache answer ----------------------------------------------------------


class NexusCache(DynamicCache):
    """A DynamicCache holding a GetCache answer, plus what plain caches lack: a per-entry bias per
    layer ([H, N] for the answer's N entries, or [B, H, N] when stacked; tokens appended later get
    none) and the position of the next token (next_position), which exceeds the entry count once a
    session is compressed."""

    def __init__(self, next_position: int, bias: Sequence[torch.Tensor | None]) -> None:
        super().__init__()
        self.next_position = int(next_position)
        self.bias: list[torch.Tensor | None] = list(bias)
        self.initial_length = 0  # entries of layer 0 at build time

    def update(
        self,
        key_states: torch.Tensor,
        value_states: torch.Tensor,
        layer_idx: int,
        cache_kwargs: dict[str, Any] | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        keys, values = super().update(key_states, value_states, layer_idx, cache_kwargs)
        _ACTIVE.set((self, layer_idx, keys))
        return keys, values

    def position_offset(self) -> int:
        """position of a new token = cache index (layer 0) + position_offset()."""
        return self.next_position - self.initial_length


_ACTIVE: contextvars.ContextVar[tuple[NexusCache, int, torch.Tensor] | None] = contextvars.ContextVar(
    "nexuskv_active_cache", default=None
)


def cache_from_answer(
    answer: CacheAnswer,
    *,
    device: torch.device | str = "cpu",
    dtype: torch.dtype | None = None,
    use_bias: bool = True,
) -> NexusCache:
    """A NexusCache the model continues from at answer.next_position.

    Args:
        dtype: tensor dtype of the cache; default the answer's dtype (bfloat16 answers arrive
            widened to float32 and are narrowed back).
        use_bias: False drops the answer's bias (to measure what it contributes).
    """
    if dtype is None:
        dtype = _TORCH_DTYPES[answer.model.dtype]
    bias: list[torch.Tensor | None] = []
    for layer in answer.layers:
        b = layer.bias if (use_bias and answer.has_bias) else None
        bias.append(torch.from_numpy(b).to(device=device, dtype=torch.float32) if b is not None else None)
    cache = NexusCache(answer.next_position, bias)
    for i, layer in enumerate(answer.layers):
        k = torch.from_numpy(layer.keys).to(device=device, dtype=dtype)[None]
        v = torch.from_numpy(layer.values).to(device=device, dtype=dtype)[None]
        DynamicCache.update(cache, k, v, i)
    cache.initial_length = answer.entries_per_layer[0] if answer.entries_per_layer else 0
    _ACTIVE.set(None)
    return cache


def cache_from_tensors(
    keys: Sequence[torch.Tensor],
    values: Sequence[torch.Tensor],
    next_position: int,
    bias: Sequence[torch.Tensor | None] | None = None,
) -> NexusCache:
    """A NexusCache from per-layer [H, N, D] tensors (and optional [H, N] float32 bias)."""
    cache = NexusCache(next_position, bias if bias is not None else [None] * len(keys))
    for i, (k, v) in enumerate(zip(keys, values, strict=True)):
        DynamicCache.update(cache, k[None], v[None], i)
    cache.initial_length = int(keys[0].shape[-2]) if keys else 0
    return cache


def stack_caches(caches: Sequence[NexusCache]) -> NexusCache:
    """One batched NexusCache (row i = caches[i]) so that several resumed caches continue the same
    new tokens in one forward. Rows shorter than the longest are padded with entries whose bias is
    -inf (never attended). Every cache must have the same next_position and layer count."""
    if not caches:
        raise ValueError("no caches to stack")
    next_position = caches[0].next_position
    if any(c.next_position != next_position for c in caches):
        raise ValueError("stacked caches must share next_position (the new tokens' positions)")
    layers = num_layers(caches[0])
    keys_out, values_out, bias_out = [], [], []
    for layer in range(layers):
        ks = [_layer_kv(c, layer)[0][0] for c in caches]  # [H, N_i, D]
        vs = [_layer_kv(c, layer)[1][0] for c in caches]
        h, _, d = ks[0].shape
        n = max(k.shape[1] for k in ks)
        k_pad = ks[0].new_zeros(len(caches), h, n, d)
        v_pad = vs[0].new_zeros(len(caches), h, n, d)
        b_pad = torch.full((len(caches), h, n), float("-inf"), device=ks[0].device)
        for i, (k, v, c) in enumerate(zip(ks, vs, caches, strict=True)):
            m = k.shape[1]
            k_pad[i, :, :m], v_pad[i, :, :m] = k, v
            b = c.bias[layer] if layer < len(c.bias) else None
            b_pad[i, :, :m] = 0.0 if b is None else b[..., :m]
        keys_out.append(k_pad)
        values_out.append(v_pad)
        bias_out.append(b_pad)
    stacked = NexusCache(next_position, bias_out)
    for layer in range(layers):
        DynamicCache.update(stacked, keys_out[layer], values_out[layer], layer)
    stacked.initial_length = int(keys_out[0].shape[-2]) if keys_out else 0
    _ACTIVE.set(None)
    return stacked


# -- the registered attention function -------------------------------------------------------------


def _repeat_kv(x: torch.Tensor, groups: int) -> torch.Tensor:
    """[B, H, T, D] -> [B, H*groups, T, D]; query head h uses kv head h // groups (as transformers)."""
    if groups == 1:
        return x
    b, h, t, d = x.shape
    return x[:, :, None].expand(b, h, groups, t, d).reshape(b, h * groups, t, d)


_WEIGHTS: contextvars.ContextVar[bool] = contextvars.ContextVar("nexuskv_weights", default=False)


@contextlib.contextmanager
def attention_weights() -> Iterator[None]:
    """Inside the block the "nexuskv" attention function also returns attention probabilities
    (as transformers' eager attention does; needed by scorers that read them). Slower."""
    token = _WEIGHTS.set(True)
    try:
        yield
    finally:
        _WEIGHTS.reset(token)


def _eager(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    mask: torch.Tensor | None,
    scaling: float | None,
    groups: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """softmax(q.k * scaling + mask) v with an additive float mask (or bool keep-mask, or None =
    causal aligned to the last key), returning (output [B, Q, Hq, D], probabilities)."""
    scale = scaling if scaling is not None else query.shape[-1] ** -0.5
    scores = torch.matmul(query, _repeat_kv(key, groups).transpose(2, 3)) * scale
    q_len, k_len = query.shape[2], key.shape[2]
    if mask is None:
        if q_len > 1:
            causal = torch.ones(q_len, k_len, dtype=torch.bool, device=query.device).triu(k_len - q_len + 1)
            scores = scores.masked_fill(causal, float("-inf"))
    elif mask.dtype == torch.bool:
        scores = scores.masked_fill(~mask, float("-inf"))
    else:
        scores = scores + mask
    probs = torch.softmax(scores, dim=-1, dtype=torch.float32).to(query.dtype)
    out = torch.matmul(probs, _repeat_kv(value, groups))
    return out.transpose(1, 2).contiguous(), probs


def attention_forward(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    dropout: float = 0.0,
    scaling: float | None = None,
    **kwargs: Any,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """transformers attention interface: sdpa, plus the NexusCache mask and per-key bias."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    layer = int(getattr(module, "layer_idx", -1))
    recorder = _RECORDER.get()
    if recorder is not None:
        recorder.record(layer, query)
    heads = query.shape[1]
    groups = heads // key.shape[1]
    active = _ACTIVE.get()
    if active is None or active[1] != layer or active[2] is not key:
        if _WEIGHTS.get():
            return _eager(query, key, value, attention_mask, scaling, groups)
        return sdpa_attention_forward(
            module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, **kwargs
        )
    cache = active[0]
    batch, q_len, k_len = query.shape[0], query.shape[2], key.shape[2]
    cached = k_len - q_len  # entries before this call's tokens: all visible
    mask = torch.zeros(batch, heads, q_len, k_len, dtype=query.dtype, device=query.device)
    if q_len > 1:
        causal = torch.ones(q_len, q_len, dtype=torch.bool, device=query.device).triu(1)
        mask[..., cached:] = mask[..., cached:].masked_fill(causal, float("-inf"))
    bias = cache.bias[layer] if layer < len(cache.bias) else None
    if bias is not None:
        b = bias if bias.dim() == 3 else bias[None]  # [B or 1, H, N]
        n = b.shape[-1]
        mask[..., :n] += b.to(query.dtype).repeat_interleave(groups, dim=1)[:, :, None, :]
    if _WEIGHTS.get():
        return _eager(query, key, value, mask, scaling, groups)
    out = torch.nn.functional.scaled_dot_product_attention(
        query,
        _repeat_kv(key, groups),
        _repeat_kv(value, groups),
        attn_mask=mask,
        dropout_p=dropout,
        scale=scaling,
    )
    return out.transpose(1, 2).contiguous(), None


def register() -> None:
    """Registers the "nexuskv" attention function (and sdpa mask creation) with transformers."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    AttentionInterface.register(ATTENTION, attention_forward)
    AttentionMaskInterface.register(ATTENTION, sdpa_mask)


def _position_hook(_module: torch.nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
    cache = kwargs.get("past_key_values")
    if not isinstance(cache, NexusCache):
        return args, kwargs
    x = kwargs.get("input_ids")
    if x is None:
        x = kwargs.get("inputs_embeds")
    if x is None and args:
        x = args[0]
    if x is None:
        return args, kwargs
    past = cache.get_seq_length()
    q_len = x.shape[1]
    kwargs["position_ids"] = (
        torch.arange(q_len, device=x.device) + past + cache.position_offset()
    ).unsqueeze(0)
    kwargs["cache_position"] = torch.arange(past, past + q_len, device=x.device)
    return args, kwargs


def prepare_model(model: Any) -> Any:
    """Switches `model` to the "nexuskv" attention function and installs the position hook.

    Idempotent. The model then computes exactly what sdpa computes on ordinary caches.
    """
    register()
    model.set_attn_implementation(ATTENTION)
    base = model.get_decoder() if hasattr(model, "get_decoder") else model.model
    if not getattr(base, "_nexuskv_position_hook", False):
        base.register_forward_pre_hook(_position_hook, with_kwargs=True)
        base._nexuskv_position_hook = True
    return model


def forward(model: Any, input_ids: torch.Tensor, cache: Any) -> torch.Tensor:
    """Runs new tokens [1, Q] on `cache` (extended in place); returns logits [1, Q, vocab].

    Positions are next_position.. for a NexusCache (see prepare_model), cache length.. otherwise.
    """
    if isinstance(cache, NexusCache) and not getattr(
        model.get_decoder() if hasattr(model, "get_decoder") else model.model,
        "_nexuskv_position_hook",
        False,
    ):
        raise RuntimeError("call nexuskv.hf.prepare_model(model) before running on a NexusCache")
    with torch.no_grad():
        return model(input_ids=input_ids, past_key_values=cache, use_cache=True).logits


# -- token scores for append_turn ------------------------------------------------------------------

REPEAT_PROMPT = "\n\nRepeat the previous context exactly.\n\n"


def max_attention(
    queries: torch.Tensor,
    keys: torch.Tensor,
    positions: torch.Tensor | None = None,
    rows_per_step: int = 512,
) -> torch.Tensor:
    """Per kv head and key, the largest softmax weight any query of the head's group gives it:
    queries [Hq, R, D], keys [H, T, D] -> [H, T] float32 (scale 1/sqrt(D)). positions None: every
    query sees all T keys. positions [R] (absolute, keys at 0..T-1): query r sees keys 0..positions[r],
    the causal softmax a model computes."""
    hq, r, d = queries.shape
    h, t, _ = keys.shape
    group = hq // h
    grouped = queries.float().reshape(h, group * r, d)
    rows = None if positions is None else positions.reshape(r).repeat(group)  # row order of `grouped`
    k = keys.float()
    out = torch.zeros(h, t)
    for i in range(0, grouped.shape[1], rows_per_step):
        logits = torch.einsum("hrd,htd->hrt", grouped[:, i : i + rows_per_step], k) / d**0.5
        if rows is not None:
            hidden = torch.arange(t)[None, :] > rows[i : i + rows_per_step, None]
            logits = logits.masked_fill(hidden[None], float("-inf"))
        out = torch.maximum(out, torch.softmax(logits, -1).amax(1))
    return out


def turn_scores(
    model: Any, cache: Any, turn_ids: Sequence[int], prompt_ids: Sequence[int]
) -> list[torch.Tensor]:
    """Token scores for append_turn(token_scores=) of the turn that just ended: its turn_ids are the
    cache's last len(turn_ids) positions. Feeds prompt_ids (the tokens of REPEAT_PROMPT, say) and the
    turn again, records the repeat's queries, and crops the cache back. Each token of the turn is
    scored, per kv head, by the largest attention weight a query of the repeat gives it (the model's
    own causal softmax, over the cache, the prompt and the repeat so far: KVzip's reconstruction
    signal, for one turn at the cost of one more prefill of its length), times the cache's length.
    The factor puts turns scored on caches of different lengths on one scale: a weight of 0.01 means
    more among 2000 keys than among 200. Returns per layer [H, T] float32.

    docs/experiments/sonic-signal-study.md measures it: as good as KVzip's whole-context repeat, far
    ahead of probe or prefill attention, and the calibration is worth as much as the signal's form."""
    length = cache.get_seq_length()
    t = len(turn_ids)
    if t == 0 or t > length:
        raise ValueError(f"the cache holds {length} positions; a turn of {t} tokens cannot end there")
    device = next(model.parameters()).device
    try:
        with torch.no_grad(), record_queries() as rec:
            model(
                input_ids=torch.tensor([list(prompt_ids) + list(turn_ids)], device=device),
                past_key_values=cache,
                use_cache=True,
                logits_to_keep=1,
            )
        positions = length + len(prompt_ids) + torch.arange(t)
        out = []
        for i in range(num_layers(cache)):
            keys, _ = _layer_kv(cache, i)
            queries = rec.layer(i)[:, len(prompt_ids) :]
            weights = max_attention(queries.cpu(), keys[0].cpu(), positions)
            out.append(weights[:, length - t : length] * length)
        return out
    finally:
        cache.crop(length)


def prefill_scores(cache: Any, queries: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """Token scores from the turn's own prefill, with no extra forward: the turn that just ended is
    the cache's last T positions and queries are its prefill's post-rotary queries, per layer
    [Hq, T, D] (record_queries() around the prefill, QueryRecorder.probes of the turn). Each token
    is scored, per kv head, by the largest causal attention weight a later query of the same turn
    gives it, times the cache's length, like turn_scores. Cheaper than turn_scores (one attention
    per layer instead of a prefill of the turn) and a worse signal: a token is judged by the turn
    that wrote it, not by a reader (docs/experiments/sonic-signal-study.md, "prefill")."""
    length = cache.get_seq_length()
    if len(queries) != num_layers(cache):
        raise ValueError(f"queries has {len(queries)} layers, the cache {num_layers(cache)}")
    t = queries[0].shape[1]
    if t == 0 or t > length:
        raise ValueError(f"the cache holds {length} positions; a turn of {t} tokens cannot end there")
    positions = length - t + torch.arange(t)
    out = []
    for i, q in enumerate(queries):
        keys, _ = _layer_kv(cache, i)
        weights = max_attention(q.cpu(), keys[0, :, :length].cpu(), positions)
        out.append(weights[:, length - t : length] * length)
    return out


def greedy_generate(
    model: Any,
    input_ids: torch.Tensor,
    cache: Any,
    max_new_tokens: int,
    eos_token_id: int | Sequence[int] | None = None,
) -> tuple[list[int], float]:
    """Greedy decoding from `cache`: feeds input_ids [1, Q], then one token at a time.

    Returns (new token ids, seconds to the first new token).
    """
    import time

    stop = {eos_token_id} if isinstance(eos_token_id, int) else set(eos_token_id or ())
    start = time.perf_counter()
    logits = forward(model, input_ids, cache)
    out: list[int] = []
    first_token_s = 0.0
    for _ in range(max_new_tokens):
        token = int(logits[0, -1].argmax())
        if not out:
            first_token_s = time.perf_counter() - start
        out.append(token)
        if token in stop:
            break
        logits = forward(model, torch.tensor([[token]], device=input_ids.device), cache)
    return out, first_token_s
