"""The cluster test's sessions: small float16 turns whose bytes follow from (session id, turn), so
any process can append them and any other can check a resume bit for bit."""

from __future__ import annotations

import zlib

import numpy as np

from nexuskv import CacheAnswer, Client

LAYERS, KV_HEADS, HEAD_DIM = 2, 2, 16
TURN_TOKENS = (12, 7, 5)  # tokens of turns 0, 1, 2
MODEL_ID = "cluster-test"


def turn_tensors(session_id: str, turn: int) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Keys and values, per layer [H, T, D] float16, of one turn of one session."""
    rng = np.random.default_rng([zlib.crc32(session_id.encode()), turn])
    shape = (LAYERS, KV_HEADS, TURN_TOKENS[turn], HEAD_DIM)
    keys = rng.standard_normal(shape).astype(np.float16)
    values = rng.standard_normal(shape).astype(np.float16)
    return list(keys), list(values)


def append_turn(client: Client, session_id: str, turn: int) -> None:
    keys, values = turn_tensors(session_id, turn)
    client.append_turn(
        session_id,
        turn,
        keys,
        values,
        role="user" if turn % 2 == 0 else "assistant",
        model_id=MODEL_ID,
        first_position=sum(TURN_TOKENS[:turn]),
    )


def full_mismatch(answer: CacheAnswer, session_id: str, num_turns: int) -> str | None:
    """None when a FULL answer holds exactly the first num_turns turns, bit for bit and at their
    positions; otherwise what differs."""
    turns = [turn_tensors(session_id, t) for t in range(num_turns)]
    tokens = sum(TURN_TOKENS[:num_turns])
    if len(answer.layers) != LAYERS:
        return f"{len(answer.layers)} layers"
    for layer in answer.layers:
        want_keys = np.concatenate([k[layer.layer] for k, _ in turns], axis=1)
        want_values = np.concatenate([v[layer.layer] for _, v in turns], axis=1)
        if layer.keys.dtype != np.float16 or layer.keys.shape != want_keys.shape:
            return f"layer {layer.layer}: keys {layer.keys.dtype} {layer.keys.shape}"
        if layer.keys.tobytes() != want_keys.tobytes():
            return f"layer {layer.layer}: keys differ"
        if layer.values.tobytes() != want_values.tobytes():
            return f"layer {layer.layer}: values differ"
        if not np.array_equal(layer.positions, np.tile(np.arange(tokens), (KV_HEADS, 1))):
            return f"layer {layer.layer}: positions differ"
    return None
