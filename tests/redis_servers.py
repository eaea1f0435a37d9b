"""Real Redis servers for the tests: a single node and a 3-node cluster on 127.0.0.1.

Started from the ``redis-server`` and ``redis-cli`` on PATH (``.ci/run``
installs them from the OS packages), each in its own temporary directory
with persistence off, on free ports; readiness is polled with a bounded
deadline, never waited for with a fixed sleep. Never a fake or a mock.

Example::

    with RedisNode.start(tmp_dir) as node:
        client = redis.Redis(port=node.port)
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["RedisCluster", "RedisNode", "missing_reason"]

#: Seconds a server or the cluster may take to be ready before the tests fail.
READY_SECONDS = 30.0


def missing_reason() -> str | None:
    """Why the Redis tests cannot run here (one line), or None if they can."""
    for tool in ("redis-server", "redis-cli"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed (.ci/run installs it from the OS packages)"
    try:
        import redis  # noqa: F401
    except ImportError:
        return "redis-py is not installed (pip install walsess[redis])"
    return None


def free_port() -> int:
    """A TCP port on 127.0.0.1 nobody listens on now (the kernel's pick)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_until(ready: Callable[[], bool], what: str, seconds: float = READY_SECONDS) -> None:
    """Poll *ready* every 20 ms until it is true; RuntimeError after *seconds*."""
    deadline = time.monotonic() + seconds
    while not ready():
        if time.monotonic() > deadline:
            raise RuntimeError(f"{what} was not ready within {seconds:.0f} s")
        time.sleep(0.02)  # polling a server's readiness, not waiting for time to pass


def _cli(port: int, *args: str) -> str:
    done = subprocess.run(
        ["redis-cli", "-h", "127.0.0.1", "-p", str(port), *args],
        capture_output=True,
        text=True,
        timeout=READY_SECONDS,
    )
    return done.stdout.strip()


@dataclass
class RedisNode:
    """One ``redis-server`` process on 127.0.0.1:*port*."""

    port: int
    directory: Path
    process: subprocess.Popen[bytes]

    @classmethod
    def start(cls, directory: Path, *extra: str) -> RedisNode:
        """Start a server in *directory* (created) with persistence off; return once
        it answers PING. *extra* are more ``redis-server`` arguments."""
        directory.mkdir(parents=True, exist_ok=True)
        for _attempt in range(5):  # a port taken between free_port() and bind
            port = free_port()
            log = open(directory / "redis.log", "ab")  # noqa: SIM115  # the server's lifetime
            process = subprocess.Popen(
                ["redis-server", "--port", str(port), "--bind", "127.0.0.1",
                 "--save", "", "--appendonly", "no", "--dir", str(directory), *extra],
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=directory,
            )  # fmt: skip
            log.close()
            node = cls(port, directory, process)
            try:
                wait_until(node.exited_or_answers, "redis")
            except BaseException:
                node.stop()
                raise
            if process.poll() is None:
                return node
        raise RuntimeError(f"redis-server would not start; see {directory / 'redis.log'}")

    def exited_or_answers(self) -> bool:
        return self.process.poll() is not None or self.answers()

    def answers(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=1) as sock:
                sock.sendall(b"PING\r\n")
                return sock.recv(16).startswith(b"+PONG")
        except OSError:
            return False

    def cli(self, *args: str) -> str:
        """``redis-cli`` against this node; its output."""
        return _cli(self.port, *args)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def __enter__(self) -> RedisNode:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


@dataclass
class RedisCluster:
    """Masters (``redis-server --cluster-enabled yes``) joined by ``redis-cli --cluster create``."""

    nodes: list[RedisNode] = field(default_factory=list)

    @classmethod
    def start(cls, directory: Path, size: int = 3) -> RedisCluster:
        cluster = cls()
        try:
            for i in range(size):
                options = ["--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf"]
                cluster.nodes.append(RedisNode.start(directory / f"node{i}", *options))
            addresses = [f"127.0.0.1:{n.port}" for n in cluster.nodes]
            done = subprocess.run(
                ["redis-cli", "--cluster", "create", *addresses,
                 "--cluster-replicas", "0", "--cluster-yes"],
                capture_output=True,
                text=True,
                timeout=READY_SECONDS,
            )  # fmt: skip
            if done.returncode != 0:
                raise RuntimeError(f"redis-cli --cluster create failed: {done.stdout}{done.stderr}")
            wait_until(cluster.ready, "the redis cluster")
        except BaseException:
            cluster.stop()
            raise
        return cluster

    @property
    def port(self) -> int:
        """The port of the first node (any node leads a client to the others)."""
        return self.nodes[0].port

    def ready(self) -> bool:
        """Every node says the cluster is ok and knows every slot."""
        for node in self.nodes:
            info = node.cli("cluster", "info")
            if "cluster_state:ok" not in info or "cluster_slots_assigned:16384" not in info:
                return False
        return True

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()


def flush(port: int) -> None:
    """FLUSHALL on the server at *port* (a cluster: call it for each master)."""
    out = _cli(port, "flushall")
    if out != "OK":
        raise RuntimeError(f"FLUSHALL on port {port} answered {out!r}")
