"""Client for the nexuskv.v1.KvMemory service on numpy arrays (and torch tensors where installed).

    from nexuskv import Client

    with Client("localhost:50051", timeout=30.0) as kv:
        kv.append_turn("chat-42", 0, keys, values, probe_queries=q, role="user", model_id="smollm2")
        answer = kv.get_cache("chat-42", keep_ratio=0.2, method="sonic", keep_recent_turns=1)
        answer.keys[0]  # layer 0, [H, N, D]
        answer.next_position  # where the next token goes

A Client owns one channel, reused by every call, and is safe to share between threads (gRPC channels
and stubs are). Every call has a deadline: the per-call `timeout` argument or the client's default.
Every per-session call (append_turn, get_cache, session, delete) carries the metadata
`x-nexuskv-session: <session_header_prefix><session_id>`, the key a gateway in front of several
shards hashes to route the session (docs/scaling.md); a single server ignores it.
Failures raise NexusKVError carrying the gRPC status code. UNAVAILABLE (server unreachable, connection
reset) is retried with exponential backoff and jitter, `retries` times; every other code surfaces at
once. Retrying an append is safe: the server treats an identical re-sent turn as a no-op.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any, TypeVar

import grpc
import numpy as np

from . import _tensors
from ._proto import kv_memory_pb2 as pb
from ._proto import kv_memory_pb2_grpc as pb_grpc
from .errors import NexusKVError
from .types import (
    METHODS,
    ROLES,
    AppendResult,
    CacheAnswer,
    CacheLayer,
    DeleteResult,
    ModelSpec,
    SessionInfo,
    TurnAllocation,
    TurnInfo,
)

T = TypeVar("T")

SESSION_HEADER = "x-nexuskv-session"

_DTYPE_TO_PB = {
    "float32": pb.DTYPE_FLOAT32,
    "float16": pb.DTYPE_FLOAT16,
    "bfloat16": pb.DTYPE_BFLOAT16,
}
_PB_TO_DTYPE = {v: k for k, v in _DTYPE_TO_PB.items()}
_METHOD_TO_PB = {
    "full": pb.FULL,
    "sonic": pb.SONIC,
    "h2o": pb.H2O,
    "streaming_llm": pb.STREAMING_LLM,
    "snapkv": pb.SNAPKV,
}
_PB_TO_METHOD = {v: k for k, v in _METHOD_TO_PB.items()}
_ROLE_TO_PB = {
    "system": pb.ROLE_SYSTEM,
    "user": pb.ROLE_USER,
    "assistant": pb.ROLE_ASSISTANT,
    "tool": pb.ROLE_TOOL,
}
_PB_TO_ROLE = {v: k for k, v in _ROLE_TO_PB.items()}

TensorLike = Any  # numpy.ndarray or torch.Tensor
LayerTensors = Sequence[TensorLike] | TensorLike  # per-layer list, or one [L, ...] array


def _layers(x: LayerTensors, name: str) -> list[TensorLike]:
    if isinstance(x, (list, tuple)):
        return list(x)
    if hasattr(x, "shape") and len(x.shape) == 4:
        return [x[i] for i in range(x.shape[0])]
    raise TypeError(f"{name}: pass a list of per-layer [.., T, D] tensors or one [L, .., T, D] array")


def _spec_from_pb(m: pb.ModelSpec) -> ModelSpec:
    return ModelSpec(
        model_id=m.model_id,
        num_layers=m.num_layers,
        num_kv_heads=m.num_kv_heads,
        num_query_heads=m.num_query_heads,
        head_dim=m.head_dim,
        dtype=_PB_TO_DTYPE.get(m.dtype, "unspecified"),
    )


_FIT_STATE = {
    pb.FIT_PENDING: "pending",
    pb.FIT_STORED: "stored",
    pb.FIT_FAILED: "failed",
    pb.FIT_ON_DEMAND: "on-demand",
}


def _method_name(method: int) -> str:
    return pb.Method.Name(method).lower()


def _session_from_pb(s: pb.SessionInfo) -> SessionInfo:
    return SessionInfo(
        session_id=s.session_id,
        model=_spec_from_pb(s.model) if s.HasField("model") else None,
        num_turns=s.num_turns,
        total_tokens=s.total_tokens,
        next_position=s.next_position,
        raw_bytes=s.raw_bytes,
        compressed_bytes=s.compressed_bytes,
        create_time_unix_ms=s.create_time_unix_ms,
        update_time_unix_ms=s.update_time_unix_ms,
        turns=[
            TurnInfo(
                turn=t.turn,
                role=_PB_TO_ROLE.get(t.role, "unspecified"),
                num_tokens=t.num_tokens,
                first_position=t.first_position,
                num_probe_queries=t.num_probe_queries,
                raw_bytes=t.raw_bytes,
                fits={_method_name(f.method): _FIT_STATE.get(f.state, "pending") for f in t.fits},
                fit_errors={_method_name(f.method): f.error for f in t.fits if f.error},
            )
            for t in s.turns
        ],
    )


class Client:
    """A connection to one nexuskv server. See the module docstring for the contract."""

    def __init__(
        self,
        target: str,
        *,
        timeout: float = 60.0,
        retries: int = 3,
        backoff: float = 0.1,
        max_backoff: float = 5.0,
        max_message_bytes: int = 256 << 20,
        credentials: grpc.ChannelCredentials | None = None,
        metadata: Sequence[tuple[str, str]] = (),
        session_header_prefix: str = "",
    ) -> None:
        """Opens a channel to `target` ("host:port"); no RPC is made until the first call.

        Args:
            timeout: default deadline of every call, in seconds.
            retries: extra attempts after an UNAVAILABLE answer (0: no retry).
            backoff: delay before the first retry, doubled at each further one up to max_backoff;
                each delay is jittered to 50-100% of its value.
            max_message_bytes: largest message sent or received (one layer of a turn or answer).
            credentials: TLS credentials; None for a plaintext channel.
            metadata: sent with every call (for instance an auth token).
            session_header_prefix: put before the session id in the x-nexuskv-session header
                (for instance "tenant-a/" where tenants reuse session ids; docs/scaling.md). Every
                client of a session must use the same prefix, or its calls reach another shard.
        """
        if timeout <= 0:
            raise ValueError("timeout must be positive")
        if retries < 0:
            raise ValueError("retries must be >= 0")
        if not _is_header_value(session_header_prefix):
            raise ValueError("session_header_prefix must be printable ASCII (it goes into a header)")
        options = [
            ("grpc.max_send_message_length", max_message_bytes),
            ("grpc.max_receive_message_length", max_message_bytes),
            # gRPC's own reconnect backoff grows to 120 s by default: a server that restarts would
            # stay unreachable from this channel long after it is back. Cap it near our retry delays.
            ("grpc.initial_reconnect_backoff_ms", 100),
            ("grpc.min_reconnect_backoff_ms", 100),
            ("grpc.max_reconnect_backoff_ms", int(max(max_backoff, 0.1) * 1000)),
        ]
        if credentials is None:
            self._channel = grpc.insecure_channel(target, options=options)
        else:
            self._channel = grpc.secure_channel(target, credentials, options=options)
        self._stub = pb_grpc.KvMemoryStub(self._channel)
        self.target = target
        self.timeout = timeout
        self.retries = retries
        self.backoff = backoff
        self.max_backoff = max_backoff
        self._metadata = tuple(metadata)
        self.session_header_prefix = session_header_prefix

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _session_metadata(self, session_id: str) -> tuple[tuple[str, str], ...]:
        """The client's metadata plus the session header. An id a header cannot carry goes without
        it: the server refuses such ids (INVALID_ARGUMENT) on whichever shard the call reaches."""
        if not session_id or not _is_header_value(session_id):
            return self._metadata
        return (*self._metadata, (SESSION_HEADER, self.session_header_prefix + session_id))

    # -- retry machinery ------------------------------------------------------------------------

    def _call(self, rpc: str, fn: Callable[[float], T], timeout: float | None) -> T:
        """Runs fn(deadline_seconds), retrying UNAVAILABLE; maps grpc errors to NexusKVError."""
        budget = self.timeout if timeout is None else timeout
        attempt = 0
        while True:
            try:
                return fn(budget)
            except grpc.RpcError as err:
                error = NexusKVError.from_rpc_error(err, rpc)
            if error.code != grpc.StatusCode.UNAVAILABLE or attempt >= self.retries:
                raise error
            delay = min(self.max_backoff, self.backoff * (2**attempt))
            time.sleep(delay * random.uniform(0.5, 1.0))
            attempt += 1

    # -- AppendSegment --------------------------------------------------------------------------

    def append_turn(
        self,
        session_id: str,
        turn: int,
        keys: LayerTensors,
        values: LayerTensors,
        probe_queries: LayerTensors | None = None,
        *,
        role: str = "user",
        model_id: str = "unknown",
        num_query_heads: int | None = None,
        first_position: int | None = None,
        probe_offsets: Sequence[int] | None = None,
        token_scores: LayerTensors | None = None,
        timeout: float | None = None,
    ) -> AppendResult:
        """Stores one finished turn (segment) of a session; returns once the server says durable.

        Args:
            keys, values: per layer [H, T, D] (post-rotary keys, as the engine caches them), numpy
                or torch, float32 / float16 / bfloat16; all layers the same dtype.
            probe_queries: per layer [Hq, P, D], the queries of P of the turn's tokens in token
                order (those at probe_offsets, else its last P); None sends none (the server falls
                back to its proxy). hf.QueryRecorder.spread picks P spread over the turn.
            role: "system", "user", "assistant" or "tool".
            model_id: names the model; with the tensor shapes it forms the session's ModelSpec.
            num_query_heads: Hq; taken from probe_queries when given, else defaults to H.
            first_position: absolute position of the turn's first token. None: 0 for turn 0,
                otherwise the end of turn-1 as the server reports it (one GetSession call).
            probe_offsets: the offsets in the turn of the probes' tokens, strictly ascending, one
                per probe; None: the turn's last P tokens.
            token_scores: per layer [H, T] (or one [L, H, T] array), finite and >= 0: how much
                later text will read each token (hf.turn_scores computes them). When every turn
                a GetCache compresses has them, SONIC spends the budget over every (layer, kv
                head, token) by them (docs/sonic.md). None sends none.

        Raises:
            NexusKVError: ALREADY_EXISTS when a different payload is stored for this turn,
                FAILED_PRECONDITION for a gap in turns or a model spec that differs from the
                session's, INVALID_ARGUMENT for shapes, byte lengths or non-finite values.
        """
        if role not in ROLES:
            raise ValueError(f"role must be one of {ROLES}, not {role!r}")
        k_layers = _layers(keys, "keys")
        v_layers = _layers(values, "values")
        q_layers = _layers(probe_queries, "probe_queries") if probe_queries is not None else None
        if len(k_layers) != len(v_layers) or (q_layers is not None and len(q_layers) != len(k_layers)):
            raise ValueError("keys, values and probe_queries must have the same number of layers")
        if not k_layers:
            raise ValueError("at least one layer is needed")
        dtype = _tensors.dtype_name(k_layers[0])
        h, t, d = _tensors.shape_of(k_layers[0])
        p = 0
        if q_layers is not None:
            hq, p, dq = _tensors.shape_of(q_layers[0])
            if dq != d:
                raise ValueError(f"probe_queries head_dim {dq} differs from the keys' {d}")
            if num_query_heads is not None and num_query_heads != hq:
                raise ValueError(f"num_query_heads={num_query_heads} but probe_queries have {hq}")
            num_query_heads = hq
        if num_query_heads is None:
            num_query_heads = h
        offsets = [int(o) for o in probe_offsets] if probe_offsets is not None else []
        if offsets and len(offsets) != p:
            raise ValueError(f"{len(offsets)} probe_offsets for {p} probe queries")
        s_layers: list[bytes] | None = None
        if token_scores is not None:
            if hasattr(token_scores, "shape") and len(token_scores.shape) == 3:
                token_scores = [token_scores[i] for i in range(token_scores.shape[0])]
            s_layers = []
            for i, s in enumerate(token_scores):
                a = np.asarray(s.detach().cpu().float() if _tensors._is_torch(s) else s, dtype=np.float32)
                if a.shape != (h, t):
                    raise ValueError(f"token_scores of layer {i} are {a.shape}, not [H, T] = {(h, t)}")
                s_layers.append(a.astype("<f4", copy=False).tobytes())
            if len(s_layers) != len(k_layers):
                raise ValueError(f"{len(s_layers)} layers of token_scores for {len(k_layers)} layers")
        if first_position is None:
            first_position = self._first_position(session_id, turn, timeout)

        header = pb.SegmentHeader(
            session_id=session_id,
            turn=turn,
            num_tokens=t,
            first_position=first_position,
            role=_ROLE_TO_PB[role],
            model=pb.ModelSpec(
                model_id=model_id,
                num_layers=len(k_layers),
                num_kv_heads=h,
                num_query_heads=num_query_heads,
                head_dim=d,
                dtype=_DTYPE_TO_PB[dtype],
            ),
            num_probe_queries=p,
            probe_offsets=offsets,
            has_token_scores=s_layers is not None,
        )
        # Serialize once: a retry re-sends the same bytes.
        chunks = [
            pb.LayerChunk(
                layer=i,
                keys=_tensors.to_bytes(k_layers[i], dtype),
                values=_tensors.to_bytes(v_layers[i], dtype),
                probe_queries=_tensors.to_bytes(q_layers[i], dtype) if q_layers is not None else b"",
                token_scores=s_layers[i] if s_layers is not None else b"",
            )
            for i in range(len(k_layers))
        ]

        def requests() -> Iterator[pb.AppendSegmentRequest]:
            yield pb.AppendSegmentRequest(header=header)
            for chunk in chunks:
                yield pb.AppendSegmentRequest(layer=chunk)

        metadata = self._session_metadata(session_id)

        def run(deadline: float) -> pb.AppendSegmentResponse:
            return self._stub.AppendSegment(requests(), timeout=deadline, metadata=metadata)

        r = self._call("AppendSegment", run, timeout)
        return AppendResult(
            session_id=r.session_id,
            turn=r.turn,
            already_stored=r.already_stored,
            num_turns=r.num_turns,
            next_position=r.next_position,
            stored_bytes=r.stored_bytes,
        )

    def _first_position(self, session_id: str, turn: int, timeout: float | None) -> int:
        if turn == 0:
            return 0
        info = self.session(session_id, timeout=timeout)
        previous = next((t for t in info.turns if t.turn == turn - 1), None)
        if previous is None:
            raise NexusKVError(
                grpc.StatusCode.FAILED_PRECONDITION,
                f"session {session_id!r} has {info.num_turns} turns; turn {turn} would leave a gap",
                "AppendSegment",
            )
        return previous.first_position + previous.num_tokens

    # -- GetCache -------------------------------------------------------------------------------

    def get_cache(
        self,
        session_id: str,
        *,
        keep_ratio: float | None = None,
        max_tokens: int | None = None,
        max_bytes: int | None = None,
        method: str = "sonic",
        first_turn: int = 0,
        last_turn: int | None = None,
        keep_recent_turns: int = 0,
        output_dtype: str | None = None,
        bias: bool = True,
        timeout: float | None = None,
    ) -> CacheAnswer:
        """Fetches a session's cache fitted to a budget.

        Exactly one of keep_ratio (kept entries / original tokens of the compressed turns, in
        (0, 1]), max_tokens (entries per kv head, raw turns included) or max_bytes must be given,
        unless method is "full". keep_recent_turns turns at the end of the range come back raw, in
        addition to the keep_ratio budget. bias=False asks for a bias-free answer (engines that
        cannot add a per-key bias).

        Returns: a CacheAnswer whose layers hold keys/values [H, N, D], bias [H, N] (None without
        bias) and positions [H, N]; next_position is where the caller's next token goes.

        Raises:
            NexusKVError: NOT_FOUND (no such session), INVALID_ARGUMENT (budget, turn range),
                UNIMPLEMENTED (method not available in this server), or INTERNAL when the answer
                stream itself is malformed.
        """
        method = method.lower()
        if method not in METHODS:
            raise ValueError(f"method must be one of {METHODS}, not {method!r}")
        limits = [x is not None for x in (keep_ratio, max_tokens, max_bytes)]
        if sum(limits) > 1 or (sum(limits) == 0 and method != "full"):
            raise ValueError("give exactly one of keep_ratio, max_tokens, max_bytes")
        budget = pb.Budget()
        if keep_ratio is not None:
            budget.keep_ratio = keep_ratio
        elif max_tokens is not None:
            budget.max_tokens = max_tokens
        elif max_bytes is not None:
            budget.max_bytes = max_bytes
        request = pb.GetCacheRequest(
            session_id=session_id,
            method=_METHOD_TO_PB[method],
            first_turn=first_turn,
            keep_recent_turns=keep_recent_turns,
            output_dtype=_DTYPE_TO_PB[output_dtype] if output_dtype else pb.DTYPE_UNSPECIFIED,
            bias_mode=pb.BIAS_MODE_UNSPECIFIED if bias else pb.BIAS_MODE_NONE,
        )
        if sum(limits):
            request.budget.CopyFrom(budget)
        if last_turn is not None:
            request.last_turn = last_turn

        metadata = self._session_metadata(session_id)

        def run(deadline: float) -> CacheAnswer:
            stream = self._stub.GetCache(request, timeout=deadline, metadata=metadata)
            return _assemble_cache(stream)

        return self._call("GetCache", run, timeout)

    # -- sessions -------------------------------------------------------------------------------

    def session(self, session_id: str, *, timeout: float | None = None) -> SessionInfo:
        """One session with its per-turn info. NOT_FOUND when there is no such session."""

        metadata = self._session_metadata(session_id)

        def run(deadline: float) -> pb.SessionInfo:
            req = pb.GetSessionRequest(session_id=session_id)
            return self._stub.GetSession(req, timeout=deadline, metadata=metadata)

        return _session_from_pb(self._call("GetSession", run, timeout))

    def sessions(
        self, prefix: str = "", *, page_size: int = 0, timeout: float | None = None
    ) -> Iterator[SessionInfo]:
        """Every session whose id starts with prefix, in id order; pages are fetched lazily, each
        page with its own deadline."""
        token = ""
        while True:

            def run(deadline: float, token: str = token) -> pb.ListSessionsResponse:
                req = pb.ListSessionsRequest(page_size=page_size, page_token=token, prefix=prefix)
                return self._stub.ListSessions(req, timeout=deadline, metadata=self._metadata)

            page = self._call("ListSessions", run, timeout)
            for s in page.sessions:
                yield _session_from_pb(s)
            if not page.next_page_token:
                return
            token = page.next_page_token

    def delete(self, session_id: str, *, timeout: float | None = None) -> DeleteResult:
        """Deletes a session and everything stored for it. NOT_FOUND when there is none."""

        metadata = self._session_metadata(session_id)

        def run(deadline: float) -> pb.DeleteSessionResponse:
            req = pb.DeleteSessionRequest(session_id=session_id)
            return self._stub.DeleteSession(req, timeout=deadline, metadata=metadata)

        r = self._call("DeleteSession", run, timeout)
        return DeleteResult(deleted_turns=r.deleted_turns, freed_bytes=r.freed_bytes)


def _is_header_value(value: str) -> bool:
    """gRPC metadata values: printable ASCII, space included."""
    return all(" " <= c <= "~" for c in value)


def _malformed(what: str) -> NexusKVError:
    return NexusKVError(grpc.StatusCode.INTERNAL, f"malformed GetCache answer: {what}", "GetCache")


def _assemble_cache(stream: Iterator[pb.GetCacheResponse]) -> CacheAnswer:
    answer: CacheAnswer | None = None
    for msg in stream:
        kind = msg.WhichOneof("payload")
        if kind == "header":
            if answer is not None:
                raise _malformed("second header")
            h = msg.header
            answer = CacheAnswer(
                session_id=h.session_id,
                model=_spec_from_pb(h.model),
                method=_PB_TO_METHOD.get(h.method, "unspecified"),
                entries_per_layer=list(h.entries_per_layer),
                original_tokens=h.original_tokens,
                next_position=h.next_position,
                turns=[
                    TurnAllocation(
                        turn=t.turn,
                        role=_PB_TO_ROLE.get(t.role, "unspecified"),
                        original_tokens=t.original_tokens,
                        kept_entries=t.kept_entries,
                        raw=t.raw,
                        method=_PB_TO_METHOD.get(t.method, "unspecified"),
                    )
                    for t in h.turns
                ],
                has_bias=h.has_bias,
                cache_bytes=h.cache_bytes,
                notes=h.notes,
            )
            if len(answer.entries_per_layer) != answer.model.num_layers:
                raise _malformed(
                    f"{len(answer.entries_per_layer)} entries_per_layer for {answer.model.num_layers} layers"
                )
        elif kind == "layer":
            if answer is None:
                raise _malformed("layer before header")
            layer = msg.layer
            i = len(answer.layers)
            if layer.layer != i or i >= answer.model.num_layers:
                raise _malformed(f"layer {layer.layer} where layer {i} was expected")
            spec = answer.model
            n = answer.entries_per_layer[i]
            shape = (spec.num_kv_heads, n, spec.head_dim)
            try:
                keys = _tensors.from_bytes(layer.keys, spec.dtype, shape)
                values = _tensors.from_bytes(layer.values, spec.dtype, shape)
                bias = _tensors.from_bytes(layer.bias, "float32", shape[:2]) if answer.has_bias else None
                if len(layer.positions) != 8 * shape[0] * shape[1]:
                    raise ValueError(f"{len(layer.positions)} position bytes for {shape[:2]}")
                positions = np.frombuffer(layer.positions, dtype="<i8").astype(np.int64)
                positions = positions.reshape(shape[:2])
            except (ValueError, KeyError) as e:
                raise _malformed(f"layer {i}: {e}") from e
            answer.layers.append(CacheLayer(i, keys, values, bias, positions))
        else:
            raise _malformed("empty message")
    if answer is None:
        raise _malformed("no header")
    if len(answer.layers) != answer.model.num_layers:
        raise _malformed(f"{len(answer.layers)} layers of {answer.model.num_layers}")
    return answer
