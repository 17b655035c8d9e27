"""NVIDIA kvpress presses on the same prefill the harness already runs.

kvpress applies a press from a forward hook on every attention layer during the context prefill:
BasePress.forward_hook reads the layer's fresh keys/values and calls
`press.compress(module, hidden_states, keys, values, attentions, kwargs)`, then writes the result back
into the cache. Compressing layer l changes only the cache, never the hidden states the prefill
passes on to layer l+1, so one prefill can serve every press: `capture()` installs one hook that
calls each press's own `compress` with exactly the arguments kvpress would pass, keeps each result,
and leaves the cache whole. The harness then continues each compressed history exactly like a
nexuskv answer (same raw last user turn, same positions, same teacher-forced reply).

Presses whose scoring reads attention weights (ObservedAttentionPress) need them from the prefill;
`needs_attentions` tells the harness to run that prefill with weights (nexuskv.hf.attention_weights).
KVzipPress is not a compress()-style press: it replays the context 2-3 more times; it runs through
kvpress's own context manager on a separate prefill (see `kvzip_compress`).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import torch

# name -> (kvpress class name, constructor kwargs besides compression_ratio)
PRESSES: dict[str, tuple[str, dict[str, Any]]] = {
    "kvpress:streaming_llm": ("StreamingLLMPress", {"n_sink": 4}),
    "kvpress:snapkv": ("SnapKVPress", {"window_size": 64, "kernel_size": 5}),
    "kvpress:expected_attention": ("ExpectedAttentionPress", {}),
    "kvpress:observed_attention": ("ObservedAttentionPress", {}),
    "kvpress:tova": ("TOVAPress", {}),
    "kvpress:kvzip": ("KVzipPress", {}),
}
NEEDS_ATTENTIONS = {"kvpress:observed_attention"}
SEPARATE_PREFILL = {"kvpress:kvzip"}


def make(name: str, keep_ratio: float) -> Any:
    import kvpress

    cls_name, kwargs = PRESSES[name]
    return getattr(kvpress, cls_name)(compression_ratio=1.0 - keep_ratio, **kwargs)


@dataclass
class Capture:
    """Per (press name, keep_ratio): per layer compressed keys/values [H, n, D]; errors by key."""

    presses: dict[tuple[str, float], Any]
    keys: dict[tuple[str, float], list[torch.Tensor]] = field(default_factory=dict)
    values: dict[tuple[str, float], list[torch.Tensor]] = field(default_factory=dict)
    errors: dict[tuple[str, float], str] = field(default_factory=dict)


@contextlib.contextmanager
def capture(model: Any, presses: dict[tuple[str, float], Any]) -> Iterator[Capture]:
    """Hooks every attention layer for ONE prefill forward run inside the block (starting at
    position 0, like kvpress): each press compresses each layer's fresh KV; the cache is untouched."""
    from kvpress.presses.base_press import is_prefilling
    from kvpress.utils import extract_keys_and_values

    result = Capture(presses)
    for press in presses.values():
        press.post_init_from_model(model)

    def hook(module: Any, _inputs: Any, kwargs: dict, output: Any) -> Any:
        hidden_states = kwargs["hidden_states"]
        cache = kwargs["past_key_values"]
        if not is_prefilling(kwargs["cache_position"], hidden_states.shape[1]):
            return output
        keys, values = extract_keys_and_values(cache, module.layer_idx)
        for key, press in presses.items():
            if key in result.errors:
                continue
            try:
                k, v = press.compress(module, hidden_states, keys, values, output[1], kwargs)
            except Exception as e:  # a press that cannot run on this model/input: say why
                result.errors[key] = f"{type(e).__name__}: {e}"
                continue
            result.keys.setdefault(key, []).append(k[0].detach().clone())
            result.values.setdefault(key, []).append(v[0].detach().clone())
        return output

    handles = []
    for layer in model.model.layers:
        layer.self_attn.rotary_emb = model.model.rotary_emb  # as BasePress.__call__ does
        handles.append(layer.self_attn.register_forward_hook(hook, with_kwargs=True))
    try:
        yield result
    finally:
        for h in handles:
            h.remove()


def kvzip_compress(
    model: Any, history_ids: torch.Tensor, keep_ratios: tuple[float, ...]
) -> dict[float, tuple[list[torch.Tensor], list[torch.Tensor], list[torch.Tensor]]]:
    """KVzip through kvpress's own context manager on a fresh prefill of the history.

    KVzip's scores (from context reconstruction) do not depend on the ratio, so they are computed
    once and kvpress's own eviction step (KVzipPress.compress_post) runs once per keep_ratio.
    kvpress implements KVzip as "fake compression": the cache keeps every entry and each attention
    module gets `masked_key_indices` (batch, head, position) that kvpress's attention patch turns
    into keys no query attends to. The same is expressed here as a -inf bias on those entries, and
    the indices are cleared so they cannot leak into later forwards. Returns, per keep_ratio, per
    layer keys, values [H, T, D] and bias [H, T] (0 kept, -inf evicted); KVzip spreads the budget
    unevenly over layers and heads.
    """
    import kvpress
    from transformers import DynamicCache

    class _KVzipScores(kvpress.KVzipPress):  # keeps the scores for the other ratios
        def compress_post(self, model: Any) -> None:
            self.saved_scores = self.score_val.clone()
            super().compress_post(model)

    press = _KVzipScores(compression_ratio=1.0 - keep_ratios[0], **PRESSES["kvpress:kvzip"][1])
    cache = DynamicCache()
    modules = [layer.self_attn for layer in model.model.layers]
    out = {}
    try:
        with torch.no_grad(), press(model):
            model(input_ids=history_ids, past_key_values=cache, use_cache=True, logits_to_keep=1)
        keys = [layer.keys[0].clone() for layer in cache.layers]
        values = [layer.values[0].clone() for layer in cache.layers]
        for ratio in keep_ratios:
            press.compression_ratio = 1.0 - ratio
            press.score_val = press.saved_scores.clone()
            kvpress.KVzipPress.compress_post(press, model)
            bias = []
            for k, module in zip(keys, modules, strict=True):
                b = torch.zeros(k.shape[0], k.shape[1])
                masked = getattr(module, "masked_key_indices", None)
                if masked is not None:
                    batch_idx, head_idx, seq_idx = masked
                    rows = batch_idx == 0
                    b[head_idx[rows], seq_idx[rows]] = float("-inf")
                bias.append(b)
                module.masked_key_indices = None
            out[ratio] = (keys, values, bias)
    finally:
        for module in modules:
            module.masked_key_indices = None
    return out
