"""The evaluation protocol for one dialogue (docs/quality.md has the prose version).

Segments s_0..s_n (s_0 the system message, s_n the final assistant reply, s_{n-1} the last user turn):
  1. Prefill s_0..s_{n-2} (the history) on a DynamicCache, recording post-rotary queries (probes) and
     letting every kvpress press compress each layer's fresh KV (eval.presses.capture).
  2. Prefill s_{n-1} plus the teacher-forced reply: the reply's log-probs with full context are the
     reference. Crop the cache back to the prefix s_0..s_{n-1}.
  3. Append every prefix segment to nexuskv (float32 keys/values [H, T, D] per layer, probes = P of
     the segment's queries spread evenly over it, or its last P with probe_placement "last"), one
     turn per segment, with token scores (hf.turn_scores: a repeat of the segment on the cache as
     it ends; or hf.prefill_scores: the segment's own prefill attention) unless token_scores is off.
  4. For each method and keep_ratio: GetCache(keep_ratio, keep_recent_turns=1), so the last user turn
     comes back raw and the ratio applies to the history; build the cache with nexuskv.hf and
     teacher-force the same reply at positions next_position..
  5. For each kvpress press and keep_ratio: its compressed history plus the same raw last user turn,
     continued exactly like step 4.
  6. Metrics against the reference over the reply's first R tokens: mean per-token
     KL(full || method), top-1 agreement, mean NLL change; for needle dialogues also the answer
     value's log-probability and whether greedy decoding would reproduce it.
"""

from __future__ import annotations

import contextlib
import copy
import re
import time
from dataclasses import dataclass
from typing import Any

import grpc
import torch
from transformers import DynamicCache

from eval import presses as kvp
from eval.dialogues import Dialogue
from eval.model import LoadedModel
from nexuskv import Client, NexusKVError, hf

SERVER_METHODS = ("full", "sonic", "h2o", "streaming_llm", "snapkv")
DEFAULT_PRESSES = (
    "kvpress:streaming_llm",
    "kvpress:snapkv",
    "kvpress:expected_attention",
    "kvpress:observed_attention",
    "kvpress:kvzip",
)
ASSISTANT_HEADER = "<|im_start|>assistant\n"  # how the chat template opens a reply


@dataclass
class EvalConfig:
    ratios: tuple[float, ...] = (0.5, 0.2)
    methods: tuple[str, ...] = SERVER_METHODS
    presses: tuple[str, ...] = DEFAULT_PRESSES
    reply_tokens: int = 128
    probes: int = 32
    probe_placement: str = "spread"  # "spread": evenly over the segment; "last": its last queries
    keep_recent_turns: int = 1
    sonic_nobias: bool = True  # also SONIC with bias_mode NONE: what the bias contributes
    token_scores: bool = True  # each turn sent with token scores
    # "repeat": hf.turn_scores (one more prefill of the turn); "prefill": hf.prefill_scores (the
    # turn's own prefill attention, no extra forward).
    token_signal: str = "repeat"
    kvzip_every: int = 1  # KVzip (2-3 extra prefills) on every k-th dialogue only
    batch: int = 8  # resumed caches continued per forward
    # Other servers (a build or flags under test), by name: each gets the same appends and its
    # SONIC rows are "sonic:NAME@ratio", paired with the main server's on identical inputs.
    variants: tuple[str, ...] = ()


@dataclass
class Item:
    """A dialogue to evaluate; needle items also name the answer value's tokens in the reply."""

    dialogue: Dialogue
    value_span: tuple[int, int] | None = None  # [start, end) within the reply tokens
    kind: str = "dialogue"


def config_keys(cfg: EvalConfig) -> list[str]:
    """Every row of the results, in table order: 'method@ratio' ('full' alone)."""
    keys = []
    for m in cfg.methods:
        if m == "full":
            keys.append("full")
            continue
        for r in cfg.ratios:
            keys.append(f"{m}@{r:g}")
            if m == "sonic" and cfg.sonic_nobias:
                keys.append(f"sonic-nobias@{r:g}")
        if m == "sonic":
            keys.extend(f"sonic:{v}@{r:g}" for v in cfg.variants for r in cfg.ratios)
    for p in cfg.presses:
        keys.extend(f"{p}@{r:g}" for r in cfg.ratios)
    return keys


def compare(
    ref: torch.Tensor, logp: torch.Tensor, targets: torch.Tensor, span: tuple[int, int] | None
) -> dict[str, float]:
    """Metrics of log-probs logp [R, V] against the reference ref [R, V] (both log_softmax)."""
    ref64, lp64 = ref.double(), logp.double()
    kl = (ref64.exp() * (ref64 - lp64)).sum(-1)
    top1 = (ref.argmax(-1) == logp.argmax(-1)).double()
    nll_ref = -ref64.gather(1, targets[:, None])[:, 0]
    nll = -lp64.gather(1, targets[:, None])[:, 0]
    out = {
        "kl": float(kl.mean()),
        "top1": float(top1.mean()),
        "dnll": float((nll - nll_ref).mean()),
        "nll": float(nll.mean()),
        "max_abs_logprob_diff": float((ref64 - lp64).abs().max()),
    }
    if span is not None:
        a, b = span
        out["needle_logp"] = float(-nll[a:b].sum())
        out["needle_hit"] = float(bool((logp[a:b].argmax(-1) == targets[a:b]).all()))
    return out


def scores_per_turn(
    model: Any,
    cache: Any,
    turns: list[list[int]],
    prompt_ids: list[int],
    recorder: hf.QueryRecorder | None = None,
) -> list[list[torch.Tensor]]:
    """Token scores of every turn, as a worker gets them when each turn ends: turns are the ids of
    consecutive segments from position 0, all in `cache`, which is left as it was. hf.turn_scores
    (a repeat of each turn), or with `recorder` (the prefill's queries from position 0)
    hf.prefill_scores. One copy of the cache, walked from the newest turn back (each crop only
    drops what later turns used)."""
    ends = [sum(len(t) for t in turns[: i + 1]) for i in range(len(turns))]
    work = copy.deepcopy(cache)
    out: list[list[torch.Tensor]] = [[] for _ in turns]
    for i in reversed(range(len(turns))):
        work.crop(ends[i])
        if recorder is None:
            out[i] = hf.turn_scores(model, work, turns[i], prompt_ids)
        else:
            out[i] = hf.prefill_scores(work, recorder.probes(ends[i] - len(turns[i]), ends[i]))
    return out


def session_id(run_id: str, index: int, dialogue_id: str) -> str:
    return re.sub(r"[^A-Za-z0-9.:-]", "-", f"eval-{run_id}-{index}-{dialogue_id}")[:128]


class Evaluator:
    def __init__(
        self,
        lm: LoadedModel,
        client: Client,
        cfg: EvalConfig,
        run_id: str,
        variants: dict[str, Client] | None = None,
    ) -> None:
        self.lm = lm
        self.model = lm.model
        self.client = client
        # Every server by row prefix: "" the main one, then each of cfg.variants.
        self.clients = {"": client, **(variants or {})}
        if set(self.clients) - {""} != set(cfg.variants):
            raise ValueError(f"variant clients {sorted(self.clients)[1:]} != cfg.variants {cfg.variants}")
        self.cfg = cfg
        self.run_id = run_id
        self.unavailable: dict[str, str] = {}  # method -> why (UNIMPLEMENTED and the like)
        self.press_errors: dict[str, str] = {}
        config = self.model.config
        self.num_layers = config.num_hidden_layers
        self.header_len = len(lm.tokenizer.encode(ASSISTANT_HEADER, add_special_tokens=False))
        self.repeat_ids = lm.tokenizer.encode(hf.REPEAT_PROMPT, add_special_tokens=False)

    # -- one dialogue ---------------------------------------------------------------------------

    def evaluate(self, index: int, item: Item) -> dict[str, Any]:
        cfg = self.cfg
        segs = item.dialogue.segments
        history, last_user, final = segs[:-2], segs[-2], segs[-1]
        hist_ids = [i for s in history for i in s.ids]
        hist_len, prefix_len = len(hist_ids), len(hist_ids) + len(last_user.ids)
        header = self.header_len
        reply = min(cfg.reply_tokens, len(final.ids) - header)
        forced = torch.tensor([final.ids[: header + reply]])
        forced_in = forced[:, :-1]
        targets = forced[0, header:]
        timings: dict[str, float] = {}
        cpu0 = time.process_time()
        record: dict[str, Any] = {
            "index": index,
            "id": item.dialogue.id,
            "kind": item.kind,
            "segments": len(segs),
            "prefix_tokens": prefix_len,
            "history_tokens": hist_len,
            "reply_tokens": reply,
            "results": {},
        }

        # 1-2: prefill with probes and press capture; reference log-probs.
        press_keys = {
            (p, r): kvp.make(p, r)
            for p in cfg.presses
            if p not in kvp.SEPARATE_PREFILL and p not in self.press_errors
            for r in cfg.ratios
        }
        want_weights = any(p in kvp.NEEDS_ATTENTIONS for p, _ in press_keys)
        t0 = time.perf_counter()
        cache = DynamicCache()
        with torch.no_grad(), hf.record_queries() as rec:
            with kvp.capture(self.model, press_keys) as cap:
                weights = hf.attention_weights() if want_weights else contextlib.nullcontext()
                with weights:
                    self.model(
                        input_ids=torch.tensor([hist_ids]),
                        past_key_values=cache,
                        use_cache=True,
                        logits_to_keep=1,
                    )
            out = self.model(
                input_ids=torch.cat([torch.tensor([last_user.ids]), forced_in], 1),
                past_key_values=cache,
                use_cache=True,
                logits_to_keep=reply,
            )
        ref = torch.log_softmax(out.logits[0].float(), -1)
        record["reference"] = compare(ref, ref, targets, item.value_span)
        cache.crop(prefix_len)
        timings["prefill_s"] = time.perf_counter() - t0

        # 3: offload every prefix segment.
        t0 = time.perf_counter()
        sid = session_id(self.run_id, index, item.dialogue.id)
        start = 0
        turn_scores = (
            scores_per_turn(
                self.model,
                cache,
                [s.ids for s in segs[:-1]],
                self.repeat_ids,
                recorder=rec if cfg.token_signal == "prefill" else None,
            )
            if cfg.token_scores
            else None
        )
        timings["scores_s"] = time.perf_counter() - t0
        for client in self.clients.values():
            try:
                client.delete(sid)
            except NexusKVError as e:
                if e.code != grpc.StatusCode.NOT_FOUND:
                    raise
        for turn, seg in enumerate(segs[:-1]):
            end = start + len(seg.ids)
            keys, values = hf.turn_kv(cache, start, end)
            if cfg.probe_placement == "spread":
                probes, offsets = rec.spread(start, end, cfg.probes)
            else:
                probes, offsets = rec.probes(end - min(cfg.probes, end - start), end), None
            for client in self.clients.values():
                client.append_turn(
                    sid,
                    turn,
                    keys,
                    values,
                    probes,
                    role=seg.role,
                    model_id=self.lm.model_id,
                    first_position=start,
                    probe_offsets=offsets,
                    token_scores=turn_scores[turn] if turn_scores is not None else None,
                )
            start = end
        timings["append_s"] = time.perf_counter() - t0
        record["num_turns"] = len(segs) - 1

        # Resumed caches waiting for the teacher-forced reply, continued in batches.
        pending: list[tuple[str, hf.NexusCache, dict[str, Any]]] = []

        # 4: nexuskv methods.
        t0 = time.perf_counter()
        for key in config_keys(cfg):
            if key.startswith("kvpress:"):
                continue
            method, _, ratio_s = key.partition("@")
            method, _, variant = method.partition(":")
            server_method = "sonic" if method == "sonic-nobias" else method
            if server_method in self.unavailable:
                continue
            t1 = time.perf_counter()
            try:
                answer = self.clients[variant].get_cache(
                    sid,
                    method=server_method,
                    keep_ratio=float(ratio_s) if ratio_s else None,
                    keep_recent_turns=cfg.keep_recent_turns if ratio_s else 0,
                    bias=method != "sonic-nobias",
                )
            except NexusKVError as e:
                if e.code == grpc.StatusCode.UNIMPLEMENTED:
                    self.unavailable[server_method] = f"{e.code.name}: {e.details}"
                else:
                    record["results"][key] = {"error": f"{e.code.name}: {e.details}"}
                continue
            if answer.next_position != prefix_len:
                record["results"][key] = {"error": f"next_position {answer.next_position} != {prefix_len}"}
                continue
            # The budget covers the history: every turn but the keep_recent_turns newest, whether
            # the method served it compressed or (within the budget) raw.
            history = answer.turns[: len(answer.turns) - cfg.keep_recent_turns] if ratio_s else []
            orig = sum(t.original_tokens for t in history)
            kept = sum(t.kept_entries for t in history)
            # What the answer carries for the history per layer (padding included) over what it keeps.
            recent = sum(t.kept_entries for t in answer.turns[len(history) :])
            sent = sum(answer.entries_per_layer) / len(answer.entries_per_layer) - recent
            meta = {
                "kept_ratio": kept / orig if orig else 1.0,
                "wire": sent / kept if kept else 1.0,
                # The history's share the engine holds once it loads the answer, padding included.
                "held": sent / orig if orig else 1.0,
                "entries": int(answer.entries_per_layer[0]),
                "has_bias": bool(answer.has_bias),
                "fetch_s": time.perf_counter() - t1,
            }
            pending.append((key, hf.cache_from_answer(answer), meta))
        timings["fetch_s"] = time.perf_counter() - t0

        # 5: kvpress presses: compressed history + the same raw last user turn.
        t0 = time.perf_counter()
        raw_k, raw_v = hf.turn_kv(cache, hist_len, prefix_len)
        kvzip: dict[float, Any] | None = None
        for key in config_keys(cfg):
            if not key.startswith("kvpress:"):
                continue
            name, _, ratio_s = key.partition("@")
            ratio = float(ratio_s)
            if name in self.press_errors:
                continue
            hb: list[torch.Tensor] | None = None
            if name in kvp.SEPARATE_PREFILL:
                if cfg.kvzip_every <= 0 or index % cfg.kvzip_every:
                    continue
                if kvzip is None:
                    try:
                        kvzip = kvp.kvzip_compress(self.model, torch.tensor([hist_ids]), cfg.ratios)
                    except Exception as e:  # report why the press cannot run, keep going
                        self.press_errors[name] = f"{type(e).__name__}: {e}"
                        continue
                hk, hv, hb = kvzip[ratio]
                kept = sum(int(torch.isfinite(b).sum()) for b in hb) / sum(b.numel() for b in hb)
            else:
                if (name, ratio) in cap.errors:
                    self.press_errors[name] = cap.errors[(name, ratio)]
                    continue
                hk, hv = cap.keys[(name, ratio)], cap.values[(name, ratio)]
                kept = hk[0].shape[1] / hist_len
            # What the engine holds: every entry of the press's cache, masked ones too (KVzip keeps
            # the whole history under a -inf bias, so it holds 1.0 whatever it keeps).
            held = hk[0].shape[1] / hist_len
            keys = [torch.cat([k, rk], 1) for k, rk in zip(hk, raw_k, strict=True)]
            values = [torch.cat([v, rv], 1) for v, rv in zip(hv, raw_v, strict=True)]
            bias = None
            if hb is not None:
                bias = [
                    torch.cat([b, torch.zeros(b.shape[0], rk.shape[1])], 1)
                    for b, rk in zip(hb, raw_k, strict=True)
                ]
            meta = {
                "kept_ratio": kept,
                "held": held,
                "wire": held / kept if kept else 1.0,
                "entries": int(keys[0].shape[1]),
                "has_bias": False,
            }
            pending.append((key, hf.cache_from_tensors(keys, values, prefix_len, bias=bias), meta))
        timings["presses_s"] = time.perf_counter() - t0

        # 6: teacher-force the reply on every resumed cache, cfg.batch at a time.
        t0 = time.perf_counter()
        for i in range(0, len(pending), max(1, cfg.batch)):
            chunk = pending[i : i + max(1, cfg.batch)]
            stacked = hf.stack_caches([c for _, c, _ in chunk])
            logits = hf.forward(self.model, forced_in.expand(len(chunk), -1), stacked)
            logp = torch.log_softmax(logits[:, -reply:].float(), -1)
            for row, (key, _, meta) in enumerate(chunk):
                res = compare(ref, logp[row], targets, item.value_span)
                res.update(meta)
                record["results"][key] = res
            del logits, logp, stacked
        timings["continue_s"] = time.perf_counter() - t0

        for client in self.clients.values():
            with contextlib.suppress(NexusKVError):
                client.delete(sid)
        record["timings"] = timings
        # CPU seconds of this process (all threads): on a shared machine, wall time says more about
        # the neighbours than about the harness.
        record["cpu_s"] = time.process_time() - cpu0
        return record
