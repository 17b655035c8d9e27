"""Starts a private nexuskv-server process for tests, evaluations and demos.

    with LocalServer("build/bin/nexuskv-server") as server:
        client = Client(server.target)

The server listens on a free loopback port with its own temporary data directory (removed on exit
unless `data_dir` was given) and `--sync_writes=false`. `start()` returns once the server's standard
grpc.health.v1 check answers SERVING, or raises RuntimeError with the tail of its log.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import grpc

_HEALTH_CHECK = "/grpc.health.v1.Health/Check"
_SERVING = b"\x08\x01"  # HealthCheckResponse{status: SERVING}


def default_binary() -> Path:
    """$NEXUSKV_SERVER, else build/bin/nexuskv-server of the checkout this package was built from
    (searched upward from the current directory)."""
    env = os.environ.get("NEXUSKV_SERVER")
    if env:
        return Path(env)
    here = Path.cwd().resolve()
    for d in (here, *here.parents):
        candidate = d / "build" / "bin" / "nexuskv-server"
        if candidate.is_file():
            return candidate
    return Path("build/bin/nexuskv-server")


def _die_with_parent() -> None:
    """In the child, before exec: the kernel sends SIGTERM to the server when the thread that
    started it exits (Linux PR_SET_PDEATHSIG), so a killed harness leaves no orphan server."""
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def health_status(target: str, timeout: float = 1.0) -> bytes | None:
    """The raw HealthCheckResponse for the whole server, or None when it does not answer."""
    with grpc.insecure_channel(target) as channel:
        check = channel.unary_unary(
            _HEALTH_CHECK,
            request_serializer=lambda b: b,
            response_deserializer=lambda b: b,
        )
        try:
            return check(b"", timeout=timeout)
        except grpc.RpcError:
            return None


class LocalServer:
    """One nexuskv-server child process. Not thread-safe; start and stop from one thread. On Linux
    the server is terminated when the thread that called start() exits."""

    def __init__(
        self,
        binary: str | os.PathLike[str] | None = None,
        *,
        data_dir: str | os.PathLike[str] | None = None,
        port: int | None = None,
        extra_args: Sequence[str] = (),
        log_path: str | os.PathLike[str] | None = None,
        start_timeout: float = 30.0,
    ) -> None:
        self.binary = Path(binary) if binary else default_binary()
        self._own_dir = data_dir is None
        self.data_dir = Path(data_dir) if data_dir else Path(tempfile.mkdtemp(prefix="nexuskv-"))
        self.port = port or free_port()
        self.target = f"127.0.0.1:{self.port}"
        self.extra_args = list(extra_args)
        self._own_log = log_path is None
        self.log_path = Path(log_path) if log_path else self.data_dir.parent / (self.data_dir.name + ".log")
        self.start_timeout = start_timeout
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> LocalServer:
        if not self.binary.is_file():
            raise FileNotFoundError(
                f"nexuskv-server not found at {self.binary}: build it (cmake --build build "
                "--target nexuskv-server) or set NEXUSKV_SERVER"
            )
        args = [
            str(self.binary),
            f"--listen={self.target}",
            f"--data_dir={self.data_dir / 'db'}",
            "--sync_writes=false",
            *self.extra_args,
        ]
        self._log = open(self.log_path, "wb")  # noqa: SIM115 - closed in stop()
        self.process = subprocess.Popen(
            args,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            preexec_fn=_die_with_parent if sys.platform.startswith("linux") else None,
        )
        deadline = time.monotonic() + self.start_timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(
                    f"nexuskv-server exited with {self.process.returncode}:\n{self.log_tail()}"
                )
            if health_status(self.target, timeout=0.5) == _SERVING:
                return self
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"nexuskv-server not SERVING after {self.start_timeout}s:\n{self.log_tail()}")

    def log_tail(self, lines: int = 30) -> str:
        with contextlib.suppress(OSError):
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        return ""

    def kill(self) -> None:
        """SIGKILL: an abrupt crash (for restart tests). The data directory is kept."""
        if self.process and self.process.poll() is None:
            self.process.kill()
            self.process.wait()

    def stop(self, grace: float = 10.0) -> None:
        """SIGTERM, then SIGKILL after `grace` seconds. Removes an owned data directory."""
        if self.process and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        if getattr(self, "_log", None):
            self._log.close()
        if self._own_dir:
            shutil.rmtree(self.data_dir, ignore_errors=True)
        if self._own_dir and self._own_log:
            with contextlib.suppress(OSError):
                self.log_path.unlink()

    def __enter__(self) -> LocalServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
