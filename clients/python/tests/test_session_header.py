"""The x-nexuskv-session header that a sharding gateway routes on (docs/scaling.md).

A recording gRPC server answers every call UNIMPLEMENTED and keeps its metadata: it stands in for
nothing the server does, only for what reaches the wire. tests/cluster checks the same header
through nginx in front of real servers.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from concurrent import futures

import grpc
import numpy as np
import pytest

from nexuskv import Client, NexusKVError
from nexuskv.client import SESSION_HEADER


class _Recorder(grpc.GenericRpcHandler):
    def __init__(self) -> None:
        self.calls: list[tuple[str, list[str]]] = []

    def service(self, handler_call_details: grpc.HandlerCallDetails) -> None:
        method = handler_call_details.method.rsplit("/", 1)[-1]
        values = [v for k, v in handler_call_details.invocation_metadata if k == SESSION_HEADER]
        self.calls.append((method, values))
        return None  # no handler: the call is UNIMPLEMENTED


@pytest.fixture()
def recorder() -> Iterator[tuple[_Recorder, str]]:
    handler = _Recorder()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2), handlers=[handler])
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    yield handler, f"127.0.0.1:{port}"
    server.stop(grace=None)


def _unimplemented(call: Callable[[], object]) -> None:
    with pytest.raises(NexusKVError) as e:
        call()
    assert e.value.code == grpc.StatusCode.UNIMPLEMENTED


def test_every_per_session_call_carries_the_header(recorder: tuple[_Recorder, str]) -> None:
    handler, target = recorder
    kv = np.zeros((1, 2, 3, 4), dtype=np.float16)
    with Client(target, retries=0) as c:
        _unimplemented(lambda: c.append_turn("chat-1", 0, kv, kv))
        _unimplemented(lambda: c.get_cache("chat-2", method="full"))
        _unimplemented(lambda: c.session("chat-3"))
        _unimplemented(lambda: list(c.sessions()))
        _unimplemented(lambda: c.delete("chat-4"))
    assert handler.calls == [
        ("AppendSegment", ["chat-1"]),
        ("GetCache", ["chat-2"]),
        ("GetSession", ["chat-3"]),
        ("ListSessions", []),
        ("DeleteSession", ["chat-4"]),
    ]


def test_prefix_and_metadata_travel_together(recorder: tuple[_Recorder, str]) -> None:
    handler, target = recorder
    with Client(target, retries=0, session_header_prefix="tenant-a/", metadata=[("x-extra", "1")]) as c:
        _unimplemented(lambda: c.session("chat-1"))
        # A turn > 0 without first_position asks GetSession first: it carries the header as well.
        _unimplemented(lambda: c.append_turn("chat-2", 1, np.zeros((1, 2, 3, 4), dtype=np.float16),
                                             np.zeros((1, 2, 3, 4), dtype=np.float16)))
    assert handler.calls == [("GetSession", ["tenant-a/chat-1"]), ("GetSession", ["tenant-a/chat-2"])]


def test_ids_a_header_cannot_carry_go_without_it(recorder: tuple[_Recorder, str]) -> None:
    handler, target = recorder
    with Client(target, retries=0) as c:
        _unimplemented(lambda: c.session("chat-\u00e9"))
    assert handler.calls == [("GetSession", [])]
    with pytest.raises(ValueError, match="session_header_prefix"):
        Client(target, session_header_prefix="tenant\n")
