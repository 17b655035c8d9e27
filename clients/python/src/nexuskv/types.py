"""Plain data returned by the client: numpy arrays and Python values, no protobuf objects.

Tensor layouts follow proto/nexuskv/v1/kv_memory.proto: per layer keys/values [H, N, D], bias and
positions [H, N] (N = entries per kv head in that layer).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

METHODS = ("full", "sonic", "h2o", "streaming_llm", "snapkv")
ROLES = ("system", "user", "assistant", "tool")


@dataclass(frozen=True)
class ModelSpec:
    """The model a session's KV belongs to; fixed by the session's first turn."""

    model_id: str
    num_layers: int
    num_kv_heads: int
    num_query_heads: int
    head_dim: int
    dtype: str  # "float32", "float16" or "bfloat16"


@dataclass(frozen=True)
class AppendResult:
    session_id: str
    turn: int
    already_stored: bool  # an identical copy was already stored (a retry); nothing changed
    num_turns: int
    next_position: int
    stored_bytes: int


@dataclass(frozen=True)
class TurnAllocation:
    """How a GetCache answer spent its budget on one turn."""

    turn: int
    role: str
    original_tokens: int
    kept_entries: int
    raw: bool
    method: str


@dataclass
class CacheLayer:
    layer: int
    keys: np.ndarray  # [H, N, D]; bfloat16 answers are widened to float32
    values: np.ndarray  # [H, N, D]
    bias: np.ndarray | None  # [H, N] float32 log-weights, or None when the answer has none
    positions: np.ndarray  # [H, N] int64 absolute positions


@dataclass
class CacheAnswer:
    """A GetCache answer: the header fields plus one CacheLayer per layer, in layer order."""

    session_id: str
    model: ModelSpec  # dtype is the output dtype
    method: str
    entries_per_layer: list[int]
    original_tokens: int
    next_position: int  # position of the caller's next token
    turns: list[TurnAllocation]
    has_bias: bool
    cache_bytes: int
    notes: str
    layers: list[CacheLayer] = field(default_factory=list)

    @property
    def keys(self) -> list[np.ndarray]:
        return [layer.keys for layer in self.layers]

    @property
    def values(self) -> list[np.ndarray]:
        return [layer.values for layer in self.layers]

    @property
    def bias(self) -> list[np.ndarray | None]:
        return [layer.bias for layer in self.layers]

    @property
    def positions(self) -> list[np.ndarray]:
        return [layer.positions for layer in self.layers]


@dataclass(frozen=True)
class TurnInfo:
    turn: int
    role: str
    num_tokens: int
    first_position: int
    num_probe_queries: int
    raw_bytes: int
    # Background compression per method that fits: {"sonic": "stored", "h2o": "pending", ...}
    # ("pending", "stored" or "failed"); the errors of failed fits in fit_errors.
    fits: dict[str, str] = field(default_factory=dict)
    fit_errors: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class SessionInfo:
    session_id: str
    model: ModelSpec | None
    num_turns: int
    total_tokens: int
    next_position: int
    raw_bytes: int
    compressed_bytes: int
    create_time_unix_ms: int
    update_time_unix_ms: int
    turns: list[TurnInfo]  # filled by Client.session(); empty from Client.sessions()


@dataclass(frozen=True)
class DeleteResult:
    deleted_turns: int
    freed_bytes: int
