"""nexuskv: Python client of the nexuskv KV-cache memory tier.

    from nexuskv import Client, NexusKVError

`Client` speaks the nexuskv.v1.KvMemory gRPC contract (proto/nexuskv/v1/kv_memory.proto) on numpy
arrays and torch tensors; `nexuskv.hf` moves turns between Hugging Face transformers caches and the
tier; `nexuskv.local_server.LocalServer` runs a private server process for tests and demos.
"""

from .client import Client
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

__version__ = "0.1.0"

__all__ = [
    "METHODS",
    "ROLES",
    "AppendResult",
    "CacheAnswer",
    "CacheLayer",
    "Client",
    "DeleteResult",
    "ModelSpec",
    "NexusKVError",
    "SessionInfo",
    "TurnAllocation",
    "TurnInfo",
]
