"""What the cluster test takes from deploy/, so that the manifests cannot drift from what is tested.

- The shard flags: deploy/k8s/base/nexuskv.flags, passed to every local shard with --flagfile
  (only --listen and --data_dir are overridden after it).
- The gateway: deploy/k8s/base/gateway/nexuskv-gateway.conf.template, rendered with the same
  variables the Kubernetes Deployment sets, and the per-server parameters taken from that
  Deployment's NEXUSKV_SHARDS (only the shard addresses differ: loopback ports here).
- nginx's consistent-hash ring (`hash ... consistent`), computed as nginx computes it, so the test
  can check that nginx placed each session where the ring says.
"""

from __future__ import annotations

import bisect
import re
import struct
import zlib
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[2]
K8S_BASE = REPO / "deploy" / "k8s" / "base"
FLAGS_FILE = K8S_BASE / "nexuskv.flags"
GATEWAY_TEMPLATE = K8S_BASE / "gateway" / "nexuskv-gateway.conf.template"
GATEWAY_DEPLOYMENT = K8S_BASE / "gateway" / "deployment.yaml"

_SERVER_LINE = re.compile(r"server\s+(\S+)((?:\s+[^;\s]+)*)\s*;")
_TEMPLATE_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")


def load_yaml_documents(path: Path) -> list[dict[str, Any]]:
    with path.open() as f:
        return [d for d in yaml.safe_load_all(f) if d is not None]


def gateway_env() -> dict[str, str]:
    """The env of the gateway container in the Kubernetes Deployment."""
    (deployment,) = load_yaml_documents(GATEWAY_DEPLOYMENT)
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    return {e["name"]: str(e["value"]) for e in container.get("env", [])}


def k8s_shard_servers() -> list[tuple[str, str]]:
    """(name:port, parameters) of each `server` line of NEXUSKV_SHARDS in the Deployment."""
    value = gateway_env()["NEXUSKV_SHARDS"]
    servers = [(m.group(1), m.group(2).strip()) for m in _SERVER_LINE.finditer(value)]
    leftover = _SERVER_LINE.sub("", value).strip()
    if not servers or leftover:
        raise ValueError(f"NEXUSKV_SHARDS is not a list of 'server NAME:PORT PARAMS;': {value!r}")
    return servers


def server_parameters() -> str:
    """The parameters every shard's server line carries (they must be the same for all)."""
    params = {p for _, p in k8s_shard_servers()}
    if len(params) != 1:
        raise ValueError(f"the shards' server lines differ in parameters: {sorted(params)}")
    return params.pop()


def render_template(text: str, env: dict[str, str]) -> str:
    """envsubst as the nginx image runs it: only variables that are set are replaced. A ${VAR}
    that is not set is an error here (nginx would fail on it later, less clearly)."""
    missing = sorted({m.group(1) for m in _TEMPLATE_VAR.finditer(text) if m.group(1) not in env})
    if missing:
        raise KeyError(f"template variables without a value: {missing}")
    return _TEMPLATE_VAR.sub(lambda m: env[m.group(1)], text)


def render_gateway(shards: list[str], listen: str, access_log: str) -> str:
    """The gateway's http-level config for these shard addresses, with the Deployment's
    server parameters."""
    params = server_parameters()
    env = dict(gateway_env())
    env["NEXUSKV_SHARDS"] = " ".join(f"server {s} {params};" for s in shards)
    env["NEXUSKV_GATEWAY_LISTEN"] = listen
    env["NEXUSKV_ACCESS_LOG"] = access_log
    return render_template(GATEWAY_TEMPLATE.read_text(), env)


class KetamaRing:
    """nginx's `hash KEY consistent` (ngx_http_upstream_hash_module, compatible with
    Cache::Memcached::Fast): every server gets 160 points per unit of weight; point i is
    crc32(HOST "\\0" PORT prev_point), prev_point as 4 little-endian bytes (0 before the first).
    A key goes to the server of the first point >= crc32(key), wrapping to the first point.
    The server strings are the names as written in the config."""

    POINTS_PER_WEIGHT = 160

    def __init__(self, servers: list[str]) -> None:
        points: list[tuple[int, str]] = []
        for server in servers:
            host, sep, port = server.rpartition(":")
            if not sep or not port.isdigit():
                host, port = server, ""
            base = host.encode() + b"\0" + port.encode()
            previous = 0
            for _ in range(self.POINTS_PER_WEIGHT):
                point = zlib.crc32(base + struct.pack("<I", previous))
                points.append((point, server))
                previous = point
        points.sort(key=lambda p: p[0])
        self._hashes = [p[0] for p in points]
        self._servers = [p[1] for p in points]

    def owner(self, key: str) -> str:
        i = bisect.bisect_left(self._hashes, zlib.crc32(key.encode()))
        return self._servers[i % len(self._servers)]
