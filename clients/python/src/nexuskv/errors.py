"""The one exception type of the nexuskv client.

Every failed call raises `NexusKVError`. It carries the gRPC status code the server (or the channel)
answered with, so callers branch on what to do next rather than on message text:

    try:
        client.get_cache("chat-42", keep_ratio=0.2)
    except NexusKVError as e:
        if e.code == grpc.StatusCode.NOT_FOUND:
            ...  # re-prefill from the transcript

Codes, as the server uses them: INVALID_ARGUMENT (bad shape, dtype, byte length, non-finite value,
id), NOT_FOUND, ALREADY_EXISTS / FAILED_PRECONDITION (turn conflicts, model spec mismatch),
RESOURCE_EXHAUSTED (size, quota), UNIMPLEMENTED (method not built into this server), UNAVAILABLE
(server unreachable: retried by the client before it surfaces), DEADLINE_EXCEEDED.
"""

from __future__ import annotations

import grpc


class NexusKVError(Exception):
    """A failed nexuskv call.

    Attributes:
        code: the gRPC status code (`grpc.StatusCode`).
        details: the server's message, meant for a person.
        rpc: the RPC that failed, e.g. "GetCache".
    """

    def __init__(self, code: grpc.StatusCode, details: str, rpc: str = "") -> None:
        self.code = code
        self.details = details
        self.rpc = rpc
        where = f"{rpc}: " if rpc else ""
        super().__init__(f"{where}{code.name}: {details}")

    @classmethod
    def from_rpc_error(cls, err: grpc.RpcError, rpc: str) -> NexusKVError:
        code = err.code() if hasattr(err, "code") else grpc.StatusCode.UNKNOWN
        details = err.details() if hasattr(err, "details") else str(err)
        return cls(code or grpc.StatusCode.UNKNOWN, details or "", rpc)
