"""Real Redis servers for the tests on 127.0.0.1: a single node, a 3-node cluster, and a
Sentinel deployment (a primary, a replica and one Sentinel).

Started from the ``redis-server`` and ``redis-cli`` on PATH (``.ci/run``
installs them from the OS packages), each in its own temporary directory
with persistence off, on free ports; readiness is polled with a bounded
deadline, never waited for with a fixed sleep. Never a fake or a mock.

Example::

    with RedisNode.start(tmp_dir) as node:
        client = redis.Redis(port=node.port)

A Sentinel deployment is polled until the Sentinel names the primary and sees
the replica healthy (``SENTINEL get-master-addr-by-name``, ``SENTINEL
replicas``, ``INFO replication``).
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["RedisCluster", "RedisNode", "RedisSentinel", "missing_reason"]

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
    def start(cls, directory: Path, *extra: str, config: Path | None = None) -> RedisNode:
        """Start a server in *directory* (created) with persistence off; return once
        it answers PING. *extra* are more ``redis-server`` arguments; *config* a
        configuration file (which ``redis-server`` takes first, before them)."""
        directory.mkdir(parents=True, exist_ok=True)
        first = [] if config is None else [str(config)]
        for _attempt in range(5):  # a port taken between free_port() and bind
            port = free_port()
            log = open(directory / "redis.log", "ab")  # noqa: SIM115  # the server's lifetime
            process = subprocess.Popen(
                ["redis-server", *first, "--port", str(port), "--bind", "127.0.0.1",
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


#: The name the test Sentinel monitors its primary under (``master_for`` takes it).
SENTINEL_SERVICE = "walsess"

# Sentinel's own timers, shortened (SENTINEL DEBUG, a real server setting) so that a
# failover ends in about 2 s rather than the 10 to 20 s the defaults give: the
# demoted primary is reconfigured 4 publish periods after an INFO shows it.
_SENTINEL_PERIODS_MS = ("info-period", "100", "publish-period", "100")

# A primary waits 5 s by default before a full sync to a replica (for more replicas
# to join the same transfer); here there is one, and that wait would be most of the
# deployment's start and of each failover.
_NO_SYNC_DELAY = ("--repl-diskless-sync-delay", "0")


@dataclass
class RedisSentinel:
    """A Sentinel deployment: a primary ``redis-server``, one replica of it
    (``--replicaof``) and one Sentinel (``redis-server sentinel.conf --sentinel``)
    monitoring the primary as *service* with quorum 1.

    Either data server may be the primary (after :meth:`failover`): ask
    :meth:`primary` rather than assume ``servers[0]``.

    Example::

        deployment = RedisSentinel.start(tmp_dir)
        sentinel = redis.sentinel.Sentinel([("127.0.0.1", deployment.port)])
        client = sentinel.master_for(deployment.service)
    """

    service: str = SENTINEL_SERVICE
    servers: list[RedisNode] = field(default_factory=list)
    sentinels: list[RedisNode] = field(default_factory=list)

    @classmethod
    def start(cls, directory: Path, service: str = SENTINEL_SERVICE) -> RedisSentinel:
        """Start the three servers; return once the replica is in sync and the
        Sentinel names the primary and sees the replica as healthy."""
        deployment = cls(service)
        try:
            primary = RedisNode.start(directory / "primary", *_NO_SYNC_DELAY)
            deployment.servers.append(primary)
            replica = RedisNode.start(
                directory / "replica", *_NO_SYNC_DELAY, "--replicaof", "127.0.0.1",
                str(primary.port),
            )  # fmt: skip
            deployment.servers.append(replica)
            wait_until(lambda: replicates(replica, primary), "the redis replica")
            config = directory / "sentinel" / "sentinel.conf"
            config.parent.mkdir(parents=True, exist_ok=True)
            # Down after 1 s without answers, and a failover given up after 5 s, so
            # that one completes in a few seconds (the defaults are 30 s and 3 min).
            config.write_text(
                f"sentinel monitor {service} 127.0.0.1 {primary.port} 1\n"
                f"sentinel down-after-milliseconds {service} 1000\n"
                f"sentinel failover-timeout {service} 5000\n"
            )
            sentinel = RedisNode.start(config.parent, "--sentinel", config=config)
            deployment.sentinels.append(sentinel)
            reply = deployment.sentinel_cli("debug", *_SENTINEL_PERIODS_MS)
            if reply != ["OK"]:
                raise RuntimeError(f"SENTINEL DEBUG answered {reply!r}")
            wait_until(lambda: deployment.watches(primary, replica), "the redis sentinel")
        except BaseException:
            deployment.stop()
            raise
        return deployment

    @property
    def port(self) -> int:
        """The Sentinel's port (what ``redis.sentinel.Sentinel`` is given)."""
        return self.sentinels[0].port

    def sentinel_cli(self, *args: str) -> list[str]:
        """``SENTINEL *args`` on the Sentinel; its reply, one element a line."""
        return self.sentinels[0].cli("sentinel", *args).splitlines()

    def primary(self) -> RedisNode:
        """The data server the Sentinel names as the primary now."""
        _host, port = self.sentinel_cli("get-master-addr-by-name", self.service)
        return next(server for server in self.servers if server.port == int(port))

    def watches(self, primary: RedisNode, replica: RedisNode) -> bool:
        """The Sentinel names *primary* and sees *replica* as a healthy replica of it
        (flags exactly "slave", link ok): what a failover to it needs."""
        if self.primary() is not primary:
            return False
        flat = self.sentinel_cli("replicas", self.service)
        seen = dict(zip(flat[::2], flat[1::2], strict=False))
        return (
            seen.get("port") == str(replica.port)
            and seen.get("flags") == "slave"
            and seen.get("master-link-status") == "ok"
        )

    def failover(self) -> RedisNode:
        """``SENTINEL FAILOVER``: the replica becomes the primary. Returns it once the
        Sentinel names it and the old primary replicates from it; Sentinel closed
        the old primary's client connections as it reconfigured it, so clients
        reconnect through the Sentinel."""
        old = self.primary()
        new = next(server for server in self.servers if server is not old)
        reply = self.sentinel_cli("failover", self.service)
        if reply != ["OK"]:
            raise RuntimeError(f"SENTINEL FAILOVER {self.service} answered {reply!r}")
        wait_until(lambda: self.watches(new, old), "the sentinel failover")
        wait_until(lambda: replicates(old, new), "the old primary's resync")
        return new

    def stop(self) -> None:
        """Stop the Sentinel first (so it fails nothing over), then the servers."""
        for node in [*self.sentinels, *self.servers]:
            node.stop()


def replicates(replica: RedisNode, primary: RedisNode) -> bool:
    """*replica* is a replica of *primary* with its link up (``INFO replication``)."""
    info = replica.cli("info", "replication")
    return (
        "role:slave" in info
        and f"master_port:{primary.port}" in info
        and "master_link_status:up" in info
    )


def flush(port: int) -> None:
    """FLUSHALL on the server at *port* (a cluster: call it for each master)."""
    out = _cli(port, "flushall")
    if out != "OK":
        raise RuntimeError(f"FLUSHALL on port {port} answered {out!r}")
