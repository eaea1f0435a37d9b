"""Start, probe and stop real server processes serving the apps in ``apps/``
(and the example app, ``examples/app.py``).

Each server gets a listening socket the test process bound on 127.0.0.1 to a
free port and hands over by file descriptor (``gunicorn --bind fd://N``,
``uvicorn --fd N``), so no other process can take the port between choosing
it and serving on it. The server runs in its own process group (gunicorn is
a master and a worker), so :meth:`Server.kill` crashes all of it at once and
:meth:`Server.stop` leaves nothing behind. Its stdout and stderr go to a file
that failure messages quote.
"""

from __future__ import annotations

import contextlib
import os
import select
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

APPS = Path(__file__).resolve().parent / "apps"
#: Where the apps' imports of walsess must resolve: this checkout.
CHECKOUT = Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class Framework:
    """How to serve one framework's app, and the name of its session cookie."""

    name: str
    #: The command line, with ``{fd}`` for the listening socket's descriptor.
    argv: tuple[str, ...]
    cookie: str
    env: tuple[tuple[str, str], ...] = ()
    #: The environment variable the app reads its store directory from.
    store_env: str = "WALSESS_E2E_STORE"


def _command(args: str) -> tuple[str, ...]:
    return (sys.executable, "-m", *args.split())


# One worker process with threads (gunicorn) or one uvicorn worker: the
# deployment the adapters document, since a store belongs to one process.
_GUNICORN = "gunicorn --workers 1 --threads 8 --bind fd://{fd} --graceful-timeout 5"
_UVICORN = "uvicorn --workers 1 --fd {fd} --log-level warning --no-access-log"

FRAMEWORKS = {
    "flask": Framework("flask", _command(f"{_GUNICORN} app_flask:app"), cookie="session"),
    "starlette": Framework(
        "starlette", _command(f"{_UVICORN} app_starlette:app"), cookie="session"
    ),
    "django": Framework(
        "django",
        _command(f"{_GUNICORN} app_django:application"),
        cookie="sessionid",
        env=(("DJANGO_SETTINGS_MODULE", "django_settings"),),
    ),
}


#: Flask on a walsess.RedisStore under four gunicorn worker processes (sync workers:
#: one request at a time each, so overlapping requests run in different processes).
#: Its "store" is the Redis URL, in WALSESS_E2E_REDIS.
FLASK_REDIS = Framework(
    "flask-redis",
    _command("gunicorn --workers 4 --bind fd://{fd} --graceful-timeout 5 app_flask_redis:app"),
    cookie="session",
    store_env="WALSESS_E2E_REDIS",
)


#: The example application (examples/app.py), served as the README says: one uvicorn worker.
EXAMPLE_APP = Framework(
    "example",
    _command(f"{_UVICORN} examples.app:app"),
    cookie="session",
    store_env="WALSESS_EXAMPLE_DIR",
)


class ServerFailed(AssertionError):
    """The server did not come up (or go down) as expected; the message quotes its output."""


@dataclass
class Server:
    """One running (or finished) server process group."""

    framework: Framework
    proc: subprocess.Popen[bytes]
    port: int
    output: Path
    _stopped: bool = field(default=False, repr=False)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def client(self, cookies: httpx.Cookies | None = None) -> httpx.Client:
        """An HTTP client of this server (cookies are per host, not per port, so a jar
        from before a restart works against the restarted server)."""
        return httpx.Client(base_url=self.url, cookies=cookies, timeout=15.0)

    def log(self) -> str:
        """What the server wrote to stdout and stderr so far."""
        return self.output.read_text(errors="replace")

    def explain(self, what: str) -> str:
        code = self.proc.poll()
        state = "running" if code is None else f"exited with {code}"
        return (
            f"{self.framework.name} server ({state}): {what}\n--- server output ---\n{self.log()}"
        )

    def wait_ready(self, deadline: float) -> None:
        """Poll ``/health`` until it answers 200; fail if the process exits or the
        deadline (a ``time.monotonic()`` value) passes first."""
        with httpx.Client(base_url=self.url, timeout=1.0) as probe:
            while True:
                if self.proc.poll() is not None:
                    raise ServerFailed(self.explain("exited before answering /health"))
                try:
                    if probe.get("/health").status_code == 200:
                        return
                except httpx.TransportError:
                    pass  # the socket queues connections before the app is loaded
                if time.monotonic() > deadline:
                    raise ServerFailed(self.explain("did not answer /health in time"))
                # Not a sleep: returns at once if the server dies meanwhile.
                with contextlib.suppress(subprocess.TimeoutExpired):
                    self.proc.wait(timeout=0.05)

    def wait_exit(self, timeout: float) -> int:
        """The exit code, once the server exits by itself within *timeout* seconds."""
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            raise ServerFailed(self.explain(f"still running after {timeout} s")) from None

    def kill(self) -> None:
        """Crash the whole server at once (SIGKILL to its process group): no atexit,
        no close, no final fsync; returns once every process of it is gone."""
        self._signal(signal.SIGKILL)
        self.proc.wait(timeout=10)
        self._wait_group_gone(time.monotonic() + 10)
        self._stopped = True

    def stop(self) -> None:
        """Stop it cleanly if it will (SIGTERM), else crash it; harmless to call twice."""
        if self._stopped:
            return
        self._signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=10)
            self._wait_group_gone(time.monotonic() + 5)
        except (subprocess.TimeoutExpired, ServerFailed):
            pass
        self.kill()

    def _signal(self, sig: signal.Signals) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, sig)

    def _wait_group_gone(self, deadline: float) -> None:
        # The leader may be gone while a worker still dies (holding the store's
        # lock until it does): wait for every live member of the group.
        for pid in _group_members(self.proc.pid):
            if not _wait_pid_exit(pid, deadline):
                raise ServerFailed(self.explain(f"process {pid} of the server outlived it"))


def _group_members(pgid: int) -> list[int]:
    """The processes of group *pgid* that have not exited (zombies have)."""
    members = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:  # exited meanwhile
            continue
        # "pid (comm) state ppid pgrp ...": comm may hold spaces and parentheses.
        fields = stat[stat.rindex(")") + 2 :].split()
        if fields[0] != "Z" and int(fields[2]) == pgid:
            members.append(int(entry.name))
    return members


def _wait_pid_exit(pid: int, deadline: float) -> bool:
    """Block until process *pid* (not necessarily our child) exits; False at the deadline."""
    try:
        pidfd = os.pidfd_open(pid)
    except ProcessLookupError:
        return True
    try:  # a pidfd turns readable when its process exits: no polling loop, no sleep
        ready, _, _ = select.select([pidfd], [], [], max(0.0, deadline - time.monotonic()))
        return bool(ready)
    finally:
        os.close(pidfd)


def spawn(framework: Framework, store_dir: Path | str, output: Path) -> Server:
    """Start *framework*'s server on *store_dir* (a directory, or a Redis URL for
    :data:`FLASK_REDIS`) on a fresh 127.0.0.1 port; don't wait."""
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", 0))
        listener.listen(128)
        port = listener.getsockname()[1]
        fd = listener.fileno()
        env = dict(os.environ)
        env.update(framework.env)
        env[framework.store_env] = str(store_dir)
        env["PYTHONPATH"] = os.pathsep.join(
            [str(APPS), str(CHECKOUT), *filter(None, [env.get("PYTHONPATH")])]
        )
        env["PYTHONUNBUFFERED"] = "1"
        with output.open("ab") as out:
            proc = subprocess.Popen(
                [arg.format(fd=fd) for arg in framework.argv],
                cwd=str(APPS),
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                pass_fds=(fd,),
                start_new_session=True,  # its own process group, for kill() and stop()
            )
    finally:
        # Only the server may hold the socket: once it dies, connections are refused.
        listener.close()
    return Server(framework, proc, port, output)


def start(
    framework: Framework, store_dir: Path | str, output: Path, timeout: float = 30.0
) -> Server:
    """Start *framework*'s server on *store_dir* and return once it answers ``/health``."""
    server = spawn(framework, store_dir, output)
    try:
        server.wait_ready(time.monotonic() + timeout)
    except BaseException:
        server.stop()
        raise
    return server
