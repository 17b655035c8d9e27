"""Local shards and an nginx gateway on loopback, configured from deploy/ (see deploy_config.py).

Every process started here is killed by `stop()` (and, on Linux, when the thread that started it
exits: PR_SET_PDEATHSIG), so a failed or interrupted test leaves nothing running.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import re
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

from deploy_config import FLAGS_FILE, render_gateway

from nexuskv.local_server import LocalServer, free_port

NGINX = shutil.which("nginx") or "/usr/sbin/nginx"

# One line of the gateway's access log (log_format nexuskv_grpc in the template).
ACCESS_LINE = re.compile(
    r'"/nexuskv\.v1\.KvMemory/(?P<method>\w+)" http=(?P<http>\d+) grpc=(?P<grpc>\S*) '
    r'session="(?P<session>[^"]*)" shard=(?P<shard>\S+)'
)


def _die_with_parent() -> None:
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


class Shard:
    """One nexuskv-server started with the deploy flagfile; its port and data survive restarts."""

    def __init__(self, binary: Path, root: Path, index: int) -> None:
        self.binary = binary
        self.index = index
        self.port = free_port()
        self.target = f"127.0.0.1:{self.port}"
        self.data_dir = root / f"shard-{index}"
        self.data_dir.mkdir()
        self.log_path = root / f"shard-{index}.log"
        self.server: LocalServer | None = None

    def start(self) -> Shard:
        # LocalServer puts its own --listen/--data_dir/--sync_writes first; the flagfile then sets
        # the deployed flags, and the three after it put the shard on its loopback ports and dir.
        self.server = LocalServer(
            self.binary,
            data_dir=self.data_dir,
            port=self.port,
            log_path=self.log_path,
            extra_args=[
                f"--flagfile={FLAGS_FILE}",
                f"--listen={self.target}",
                f"--data_dir={self.data_dir / 'db'}",
                "--metrics_listen=127.0.0.1:0",  # a free port: three shards share one host
            ],
        )
        self.server.start()
        return self

    def kill(self) -> None:
        if self.server:
            self.server.kill()

    def stop(self) -> None:
        if self.server:
            self.server.stop(grace=5.0)


class Gateway:
    """nginx in the foreground with the deployed gateway template, under its own prefix dir."""

    def __init__(self, root: Path) -> None:
        self.root = root / "nginx"
        self.root.mkdir()
        (self.root / "conf.d").mkdir()
        self.port = free_port()
        self.target = f"127.0.0.1:{self.port}"
        self.access_log = self.root / "access.log"
        self.error_log = self.root / "error.log"
        self.process: subprocess.Popen[bytes] | None = None

    def write_config(self, shards: list[str]) -> None:
        (self.root / "conf.d" / "nexuskv-gateway.conf").write_text(
            render_gateway(shards, listen=f"127.0.0.1:{self.port}", access_log=str(self.access_log))
        )
        temp = "\n".join(
            f"    {kind}_temp_path {self.root / ('tmp-' + kind)};"
            for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
        )
        # The main config stands in for the nginx image's /etc/nginx/nginx.conf, whose http block
        # includes conf.d/*.conf; everything nexuskv-specific is in the rendered template.
        (self.root / "nginx.conf").write_text(
            f"""daemon off;
worker_processes 1;
pid {self.root / "nginx.pid"};
error_log {self.error_log} notice;
events {{ worker_connections 512; }}
http {{
    access_log off;
{temp}
    include {self.root / "conf.d"}/*.conf;
}}
"""
        )

    def start(self, timeout: float = 10.0) -> None:
        self.process = subprocess.Popen(
            [NGINX, "-p", str(self.root), "-e", str(self.error_log), "-c", str(self.root / "nginx.conf")],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.STDOUT,
            preexec_fn=_die_with_parent,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"nginx exited with {self.process.returncode}:\n{self.log_tail()}")
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", self.port), 0.2):
                return
            time.sleep(0.05)
        raise RuntimeError(f"nginx not listening after {timeout}s:\n{self.log_tail()}")

    def stop(self) -> None:
        """Graceful stop (SIGQUIT: in-flight requests finish), then SIGKILL after 5 s."""
        if self.process and self.process.poll() is None:
            self.process.send_signal(signal.SIGQUIT)
            try:
                self.process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def log_tail(self, lines: int = 20) -> str:
        with contextlib.suppress(OSError):
            return "\n".join(self.error_log.read_text(errors="replace").splitlines()[-lines:])
        return ""

    def calls(self) -> list[dict[str, str]]:
        """The KvMemory calls in the access log so far, one dict per call."""
        if not self.access_log.exists():
            return []
        text = self.access_log.read_text(errors="replace")
        return [m.groupdict() for m in map(ACCESS_LINE.search, text.splitlines()) if m]


def nginx_version() -> str:
    out = subprocess.run([NGINX, "-v"], capture_output=True, text=True, check=False)
    return (out.stderr or out.stdout).strip()


def env_with_pythonpath(extra: Path) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(extra), env.get("PYTHONPATH", "")) if p)
    return env
