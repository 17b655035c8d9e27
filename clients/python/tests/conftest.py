"""Fixtures: a real nexuskv-server process (build/bin/nexuskv-server or $NEXUSKV_SERVER) per module."""

from __future__ import annotations

import itertools
import os
from collections.abc import Iterator

import pytest

# Before torch loads (test_hf): spinning OpenMP threads starve each other on a shared 2-core box.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from nexuskv import Client
from nexuskv.local_server import LocalServer, default_binary


@pytest.fixture(scope="module")
def server() -> Iterator[LocalServer]:
    binary = default_binary()
    if not binary.is_file():
        pytest.fail(f"nexuskv-server not built at {binary} (cmake --build build --target nexuskv-server)")
    with LocalServer(binary) as s:
        yield s


@pytest.fixture()
def client(server: LocalServer) -> Iterator[Client]:
    with Client(server.target, timeout=30.0, retries=2, backoff=0.05) as c:
        yield c


_ids = itertools.count()


@pytest.fixture()
def sid(request: pytest.FixtureRequest) -> str:
    """A fresh session id per test."""
    return f"py-{request.node.name[:60]}-{next(_ids)}".replace("_", "-").replace("[", ".").replace("]", "")
