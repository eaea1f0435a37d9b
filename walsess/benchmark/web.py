"""The per-request rows of ``walsess bench``: what one web request costs with each session backend.

For each framework (Flask, Django, Starlette), the same small application is
built once per row, with that row's session backend, and driven in process,
with no network and no test client, so every row pays the same, smallest
framework cost and the difference is the session layer's:

* WSGI (Flask, Django): ``app(environ, start_response)`` with a prebuilt
  environ (a fresh copy per request, with the row's ``Cookie`` header) and the
  body iterated and closed as a server would.
* ASGI (Starlette): ``await app(scope, receive, send)`` with a prebuilt scope,
  many requests per run of one event loop.

Each row's store is first populated with sessions of
:func:`~walsess.benchmark.workloads.session_data` through the application
itself (a request that stores them; its ``Set-Cookie`` is the client's
cookie), then checked (a read returns the stored value, a change is read back).
The workloads, each on a seeded sequence of those sessions, the same for every
row:

* ``none``: the client sends its session cookie; the view does not use the
  session (a page or API call that needs no session);
* ``read``: the view reads one key (``session["user_id"]``);
* ``write``: the view changes one key (``session["visits"]`` to a value it has
  never had, so every row really writes).

The baseline of a framework is its ``bare`` row: the same application with no
session layer at all, answering the ``none`` request. A row's **overhead** is
its time per request minus the baseline's, per repeat (both measured in the
same round), median over repeats. The target: walsess's overhead on ``read``
and on ``write`` at most 0.5x the smallest overhead among the framework's
peers that keep sessions across a restart (:attr:`WebRow.target`).

Every peer runs with its users' defaults, except where a default would break
the benchmark or cost only speed with no behaviour a user sees: no eviction
for the file and locmem caches (their defaults of 500 and 300 entries would
drop live sessions), a persistent SQLite connection for Django's db backend.
The rows' descriptions (:data:`ROWS`, printed in the JSON) say what each does.

Every request's status is checked (a non-2xx answer fails the row), so an
error page is never timed as a fast request.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import importlib.util
import io
import itertools
import math
import os
import random
import secrets
import shutil
import sys
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import walsess

from .measure import median, rotated, run_batches
from .peers import PIP_HINT, RedisServer
from .workloads import SEED, parse_scale, session_data

__all__ = [
    "FRAMEWORKS",
    "ROWS",
    "SELECTORS",
    "WORKS",
    "Prepared",
    "WebResults",
    "WebRow",
    "WebSettings",
    "format_report",
    "run",
    "settings_for",
    "step_count",
    "time_requests",
    "to_json",
    "web_row",
]

FRAMEWORKS = ("flask", "django", "starlette")
#: The workloads, in table order, and what each request does.
WORKS: dict[str, str] = {
    "none": "the view does not use the session (the client sends its cookie)",
    "read": "the view reads one key of an existing session",
    "write": "the view changes one key of an existing session",
}
#: The workloads the target is judged on.
TARGET_WORKS = ("read", "write")
#: The target: walsess's overhead over the fastest persistent peer's, at most.
TARGET_RATIO = 0.5
#: Names that select this group in ``walsess bench --only``.
SELECTORS = frozenset({"web", *(f"web-{f}" for f in FRAMEWORKS)})
#: Length of the seeded sequence of sessions each workload cycles through.
PLAN_SIZE = 4096
#: Requests in the first and the largest batch :func:`time_requests` times.
FIRST_BATCH = 8
MOST_BATCH = 1 << 20
#: The value ``write`` stores: a fresh one every request, so no row can skip the write.
_VALUES = itertools.count(1_000)
#: For the apps that sign their cookies (a benchmark key, not a secret).
_SECRET = "walsess-bench-" + "k" * 40


# -- settings -----------------------------------------------------------------------------


@dataclass(frozen=True)
class WebSettings:
    """*sessions* per row's store; *repeats* rounds of *min_time* seconds per row and workload."""

    sessions: int
    repeats: int
    min_time: float


QUICK = WebSettings(300, 3, 0.05)
FULL = WebSettings(10_000, 5, 0.5)


def settings_for(mode: str, scale: int | None = None) -> WebSettings:
    """The group's settings for ``walsess bench``'s *mode* (``quick`` or ``full``), or for
    its hidden ``--scale N`` (N sessions, one short round: tests)."""
    if scale is not None:
        return WebSettings(max(2, min(scale, 1_000)), 1, 0.005)
    return FULL if mode == "full" else QUICK


# -- the rows -----------------------------------------------------------------------------


class Context:
    """What the rows of one run share: their directory, one Redis server, one event loop."""

    def __init__(self, workdir: str) -> None:
        self.workdir = workdir
        self._redis: RedisServer | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def path(self, name: str) -> str:
        p = os.path.join(self.workdir, name.replace("/", "-"))
        os.makedirs(p, exist_ok=True)
        return p

    def redis_port(self) -> int:
        """The port of this run's redis-server (``appendfsync everysec``, as the
        ``redis-everysec`` row of ``walsess bench``), started on first use."""
        if self._redis is None:
            self._redis = RedisServer(os.path.join(self.workdir, "redis"), "everysec")
        return self._redis.port

    def loop(self) -> asyncio.AbstractEventLoop:
        if self._loop is None:
            self._loop = asyncio.new_event_loop()
        return self._loop

    def close(self) -> None:
        if self._loop is not None:
            self._loop.close()
            self._loop = None
        if self._redis is not None:
            self._redis.stop()
            self._redis = None


@dataclass(frozen=True)
class Reply:
    """One request's answer: the status, the cookies it sets (None: deleted), the body."""

    status: int
    cookies: dict[str, str | None]
    body: bytes


class Driver(Protocol):
    """One row's application, and how to call it."""

    cookie_name: str

    def request(self, path: str, cookie: str | None) -> Reply:
        """One request to *path* (may carry a query) with Cookie header *cookie*."""
        ...

    def runner(self, path: str, cookies: Sequence[str]) -> Callable[[int], None]:
        """``run(n)``: *n* requests to *path*, cycling through Cookie headers *cookies*;
        raises if any answer is not a 2xx."""
        ...

    def populating(self) -> contextlib.AbstractContextManager[None]:
        """Around the untimed populating requests (a row may make them cheaper)."""
        ...

    def close(self) -> None: ...


@dataclass(frozen=True)
class WebRow:
    """One row: a framework with one session backend (or none: the ``bare`` baseline).

    *persistent*: sessions survive a restart of the server process (the data
    is on disk, in a server of its own, or in the client's cookie). *target*:
    a peer the target is judged against (persistent, and among the backends
    issue 9 names). *modules* and *programs* are what it needs.
    """

    framework: str
    name: str
    description: str
    build: Callable[[Context], Driver]
    persistent: bool = True
    target: bool = True
    modules: tuple[str, ...] = ()
    programs: tuple[str, ...] = ()
    note: str = ""

    @property
    def key(self) -> str:
        return f"{self.framework}/{self.name}"

    @property
    def baseline(self) -> bool:
        return self.name == "bare"

    @property
    def walsess(self) -> bool:
        return self.name.startswith("walsess")

    @property
    def works(self) -> tuple[str, ...]:
        return ("none",) if self.baseline else tuple(WORKS)

    def missing(self) -> str | None:
        """Why this row cannot run here, with how to get what it needs; None if it can."""
        for m in self.modules:
            if importlib.util.find_spec(m) is None:
                if m.startswith("walsess."):
                    return f"the adapter {m} is not in this walsess"
                return f"Python package {m} not installed ({PIP_HINT})"
        for p in self.programs:
            if shutil.which(p) is None:
                return f"{p} not found on PATH (apt-get install redis-server)"
        return None


def cookie_of(header: str) -> tuple[str, str | None]:
    """(name, value) of a Set-Cookie header; value None if it deletes the cookie."""
    first, _, attrs = header.partition(";")
    name, _, value = first.partition("=")
    low = attrs.lower()
    gone = value in ("", '""', "''") or "max-age=0" in low or "1970" in low
    return name.strip(), None if gone else value.strip()


# -- WSGI ---------------------------------------------------------------------------------


def _environ(path: str) -> dict[str, Any]:
    path, _, query = path.partition("?")
    return {
        "REQUEST_METHOD": "GET",
        "SCRIPT_NAME": "",
        "PATH_INFO": path,
        "QUERY_STRING": query,
        "SERVER_NAME": "localhost",
        "SERVER_PORT": "80",
        "SERVER_PROTOCOL": "HTTP/1.1",
        "REMOTE_ADDR": "127.0.0.1",
        "HTTP_HOST": "localhost",
        "wsgi.version": (1, 0),
        "wsgi.url_scheme": "http",
        "wsgi.errors": sys.stderr,
        "wsgi.multithread": True,
        "wsgi.multiprocess": False,
        "wsgi.run_once": False,
    }


def _ignore(data: bytes) -> None:
    pass


class WsgiDriver:
    """A WSGI application called as a server would, minus the socket."""

    def __init__(
        self,
        app: Callable[..., Any],
        cookie_name: str,
        closers: Sequence[Callable[[], object]] = (),
        populating: Callable[[], contextlib.AbstractContextManager[None]] | None = None,
    ) -> None:
        self.app = app
        self.cookie_name = cookie_name
        self._closers = list(closers)
        self._populating = populating

    def request(self, path: str, cookie: str | None) -> Reply:
        env = _environ(path)
        env["wsgi.input"] = io.BytesIO()
        if cookie is not None:
            env["HTTP_COOKIE"] = cookie
        got: list[tuple[str, list[tuple[str, str]]]] = []

        def start_response(
            status: str, headers: list[tuple[str, str]], exc_info: object = None
        ) -> Callable[[bytes], None]:
            got.append((status, headers))
            return _ignore

        body = self.app(env, start_response)
        try:
            content = b"".join(body)
        finally:
            close = getattr(body, "close", None)
            if close is not None:
                close()
        status, headers = got[-1]
        cookies = dict(cookie_of(v) for k, v in headers if k.lower() == "set-cookie")
        return Reply(int(status.split()[0]), cookies, content)

    def runner(self, path: str, cookies: Sequence[str]) -> Callable[[int], None]:
        app, base, nxt = self.app, _environ(path), itertools.cycle(cookies)
        new_input = io.BytesIO
        bad: list[str] = []

        def start_response(
            status: str, headers: list[tuple[str, str]], exc_info: object = None
        ) -> Callable[[bytes], None]:
            if status[0] != "2":
                bad.append(status)
            return _ignore

        def run(n: int) -> None:
            for cookie in itertools.islice(nxt, n):
                env = base.copy()
                env["HTTP_COOKIE"] = cookie
                env["wsgi.input"] = new_input()
                body = app(env, start_response)
                for _ in body:
                    pass
                close = getattr(body, "close", None)
                if close is not None:
                    close()
            if bad:
                raise RuntimeError(f"GET {path} answered {bad[0]!r}")

        return run

    def populating(self) -> contextlib.AbstractContextManager[None]:
        return contextlib.nullcontext() if self._populating is None else self._populating()

    def close(self) -> None:
        for close in self._closers:
            close()


# -- ASGI ---------------------------------------------------------------------------------

_REQUEST_MESSAGE = {"type": "http.request", "body": b"", "more_body": False}


async def _receive() -> dict[str, Any]:
    return _REQUEST_MESSAGE


def _scope(path: str) -> dict[str, Any]:
    path, _, query = path.partition("?")
    return {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.3"},
        "http_version": "1.1",
        "method": "GET",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "root_path": "",
        "query_string": query.encode(),
        "headers": [(b"host", b"localhost")],
        "client": ("127.0.0.1", 50_000),
        "server": ("localhost", 80),
    }


def _headers(cookie: str | None) -> list[tuple[bytes, bytes]]:
    h = [(b"host", b"localhost")]
    if cookie is not None:
        h.append((b"cookie", cookie.encode("latin-1")))
    return h


class AsgiDriver:
    """An ASGI application awaited in one event loop, many requests per run of the loop."""

    def __init__(
        self,
        app: Callable[..., Awaitable[None]],
        cookie_name: str,
        loop: asyncio.AbstractEventLoop,
        closers: Sequence[Callable[[], object]] = (),
    ) -> None:
        self.app = app
        self.cookie_name = cookie_name
        self.loop = loop
        self._closers = list(closers)

    def request(self, path: str, cookie: str | None) -> Reply:
        scope = _scope(path)
        scope["headers"] = _headers(cookie)
        sent: list[dict[str, Any]] = []

        async def send(message: dict[str, Any]) -> None:
            sent.append(message)

        self.loop.run_until_complete(self.app(scope, _receive, send))
        start = next(m for m in sent if m["type"] == "http.response.start")
        cookies = dict(
            cookie_of(v.decode("latin-1"))
            for k, v in start.get("headers", ())
            if k.lower() == b"set-cookie"
        )
        body = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
        return Reply(start["status"], cookies, body)

    def runner(self, path: str, cookies: Sequence[str]) -> Callable[[int], None]:
        app, base = self.app, _scope(path)
        by_cookie = {c: _headers(c) for c in set(cookies)}
        nxt = itertools.cycle([by_cookie[c] for c in cookies])
        bad: list[int] = []

        async def send(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start" and message["status"] // 100 != 2:
                bad.append(message["status"])

        async def batch(n: int) -> None:
            for headers in itertools.islice(nxt, n):
                scope = base.copy()  # the app writes into its scope
                scope["headers"] = headers
                await app(scope, _receive, send)

        def run(n: int) -> None:
            self.loop.run_until_complete(batch(n))
            if bad:
                raise RuntimeError(f"GET {path} answered {bad[0]}")

        return run

    def populating(self) -> contextlib.AbstractContextManager[None]:
        return contextlib.nullcontext()

    def close(self) -> None:
        for close in self._closers:
            close()


# -- Flask --------------------------------------------------------------------------------


def _flask_app() -> Any:
    from flask import Flask, request, session

    app = Flask("walsess_bench_web")

    @app.get("/none")
    def none() -> str:
        return "ok"

    @app.get("/read")
    def read() -> str:
        return str(session["user_id"])

    @app.get("/write")
    def write() -> str:
        v = next(_VALUES)
        session["visits"] = v
        return str(v)

    @app.get("/visits")
    def visits() -> str:
        return str(session.get("visits"))

    @app.get("/create")
    def create() -> str:
        session.update(session_data(int(request.args["i"])))
        return "ok"

    return app


def _flask_bare(ctx: Context) -> Driver:
    return WsgiDriver(_flask_app(), "session")  # no SECRET_KEY: Flask's null session


def _flask_walsess(ctx: Context) -> Driver:
    init_app = importlib.import_module("walsess.flask").init_app
    store = walsess.open(ctx.path("flask-walsess"), durability="interval")
    try:
        app = _flask_app()
        init_app(app, store)
    except BaseException:
        store.close()
        raise
    return WsgiDriver(app, app.config["SESSION_COOKIE_NAME"], [store.close])


def _flask_cookie(ctx: Context) -> Driver:
    app = _flask_app()
    app.secret_key = _SECRET
    return WsgiDriver(app, app.config["SESSION_COOKIE_NAME"])


def _flask_session_cachelib(ctx: Context) -> Driver:
    fs_cache = importlib.import_module("cachelib").FileSystemCache
    app = _flask_app()
    # threshold=0: no eviction (the default of 500 files would drop live sessions)
    app.config.update(
        SESSION_TYPE="cachelib",
        SESSION_CACHELIB=fs_cache(ctx.path("flask-cachelib"), threshold=0, mode=0o600),
    )
    importlib.import_module("flask_session").Session(app)
    return WsgiDriver(app, app.config["SESSION_COOKIE_NAME"])


def _flask_session_redis(ctx: Context) -> Driver:
    client = importlib.import_module("redis").Redis(host="127.0.0.1", port=ctx.redis_port())
    app = _flask_app()
    app.config.update(SESSION_TYPE="redis", SESSION_REDIS=client)
    importlib.import_module("flask_session").Session(app)
    return WsgiDriver(app, app.config["SESSION_COOKIE_NAME"], [client.close])


# -- Django -------------------------------------------------------------------------------

_django_ours = False


def __getattr__(name: str) -> Any:
    # ROOT_URLCONF of the Django rows is this module: Django asks it for urlpatterns,
    # built here on demand so that importing this module never imports Django.
    if name == "urlpatterns":
        return _django_urls()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _django_urls() -> list[Any]:
    from django.http import HttpResponse
    from django.urls import path

    def none(request: Any) -> Any:
        return HttpResponse("ok")

    def read(request: Any) -> Any:
        return HttpResponse(str(request.session["user_id"]))

    def write(request: Any) -> Any:
        v = next(_VALUES)
        request.session["visits"] = v
        return HttpResponse(str(v))

    def visits(request: Any) -> Any:
        return HttpResponse(str(request.session.get("visits")))

    def create(request: Any) -> Any:
        request.session.update(session_data(int(request.GET["i"])))
        return HttpResponse("ok")

    return [
        path("none", none),
        path("read", read),
        path("write", write),
        path("visits", visits),
        path("create", create),
    ]


def _django_configure(ctx: Context) -> None:
    """Configure Django once per process (its settings are global), pointing this run's
    files (the SQLite database, the session files, the walsess store) into *ctx*."""
    global _django_ours
    import django
    from django.conf import settings

    db = os.path.join(ctx.path("django"), "db.sqlite3")
    files = ctx.path("django-files")
    store = os.path.join(ctx.workdir, "django-walsess")
    if not settings.configured:
        settings.configure(
            DEBUG=False,
            SECRET_KEY=_SECRET,
            ALLOWED_HOSTS=["localhost"],
            ROOT_URLCONF="walsess.benchmark.web",
            MIDDLEWARE=[],
            INSTALLED_APPS=["django.contrib.sessions"],
            # CONN_MAX_AGE=None: one connection for the run, not one per request
            # (Django's default 0 reconnects, registering its SQL functions, every time)
            DATABASES={
                "default": {
                    "ENGINE": "django.db.backends.sqlite3",
                    "NAME": db,
                    "CONN_MAX_AGE": None,
                }
            },
            # no culling: the default of 300 entries would drop live sessions
            CACHES={
                "default": {
                    "BACKEND": "django.core.cache.backends.locmem.LocMemCache",
                    "OPTIONS": {"MAX_ENTRIES": 1 << 30},
                }
            },
            USE_TZ=True,
            SESSION_FILE_PATH=files,
            WALSESS_PATH=store,
            WALSESS_OPTIONS={"durability": "interval"},
        )
        django.setup()
        _django_ours = True
    elif not _django_ours:
        raise RuntimeError("Django's settings were configured by something else in this process")
    from django.contrib.sessions.backends.file import SessionStore as FileStore
    from django.db import connections

    conn = connections["default"]
    if conn.settings_dict["NAME"] != db:
        conn.close()  # a later run in this process: its own database file
        conn.settings_dict["NAME"] = db
    settings.SESSION_FILE_PATH = files
    settings.WALSESS_PATH = store
    with contextlib.suppress(AttributeError):
        del FileStore._storage_path  # cached on the class at first use


def _django(engine: str | None) -> Callable[[Context], Driver]:
    def build(ctx: Context) -> Driver:
        _django_configure(ctx)
        from django.core.handlers.wsgi import WSGIHandler
        from django.test.utils import override_settings

        closers: list[Callable[[], object]] = []
        populating = None
        if engine is None:
            with override_settings(MIDDLEWARE=[]):
                handler = WSGIHandler()
            return WsgiDriver(handler, "sessionid")
        if engine == "django.contrib.sessions.backends.db":
            from django.core.management import call_command

            call_command("migrate", "sessions", verbosity=0, interactive=False)
            populating = _sqlite_unsynced
        if engine == "django.contrib.sessions.backends.cache":
            from django.core.cache import caches

            caches["default"].clear()  # an earlier run's sessions, in this process
        if engine == "walsess.django":
            close_store = importlib.import_module("walsess.django").close_store
            close_store()  # opened again with this run's WALSESS_PATH
            closers.append(close_store)
        with override_settings(
            SESSION_ENGINE=engine,
            MIDDLEWARE=["django.contrib.sessions.middleware.SessionMiddleware"],
        ):
            handler = WSGIHandler()  # SessionMiddleware reads SESSION_ENGINE here, once
        mw = getattr(handler._middleware_chain, "__wrapped__", None)
        got = getattr(getattr(mw, "SessionStore", None), "__module__", None)
        if got != engine:
            raise RuntimeError(f"SessionMiddleware uses {got}, not {engine}")
        from django.conf import settings

        return WsgiDriver(handler, settings.SESSION_COOKIE_NAME, closers, populating)

    return build


@contextlib.contextmanager
def _sqlite_unsynced() -> Iterator[None]:
    """Populate without an fsync per session (restored before anything is timed)."""
    from django.db import connection

    with connection.cursor() as c:
        c.execute("PRAGMA synchronous")
        before = c.fetchone()[0]
        c.execute("PRAGMA synchronous=OFF")
    try:
        yield
    finally:
        with connection.cursor() as c:
            c.execute(f"PRAGMA synchronous={int(before)}")


# -- Starlette ----------------------------------------------------------------------------


def _starlette_app(load: Callable[[Any], Awaitable[None]] | None = None) -> Any:
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import PlainTextResponse
    from starlette.routing import Route

    async def none(request: Request) -> PlainTextResponse:
        return PlainTextResponse("ok")

    async def read(request: Request) -> PlainTextResponse:
        if load is not None:
            await load(request)
        return PlainTextResponse(str(request.session["user_id"]))

    async def write(request: Request) -> PlainTextResponse:
        if load is not None:
            await load(request)
        v = next(_VALUES)
        request.session["visits"] = v
        return PlainTextResponse(str(v))

    async def visits(request: Request) -> PlainTextResponse:
        if load is not None:
            await load(request)
        return PlainTextResponse(str(request.session.get("visits")))

    async def create(request: Request) -> PlainTextResponse:
        if load is not None:
            await load(request)
        request.session.update(session_data(int(request.query_params["i"])))
        return PlainTextResponse("ok")

    return Starlette(
        routes=[
            Route("/none", none),
            Route("/read", read),
            Route("/write", write),
            Route("/visits", visits),
            Route("/create", create),
        ]
    )


def _starlette_bare(ctx: Context) -> Driver:
    return AsgiDriver(_starlette_app(), "session", ctx.loop())


def _starlette_walsess(ctx: Context) -> Driver:
    middleware = importlib.import_module("walsess.starlette").SessionMiddleware
    store = walsess.open(ctx.path("starlette-walsess"), durability="interval")
    app = _starlette_app()
    app.add_middleware(middleware, store=store)
    return AsgiDriver(app, "session", ctx.loop(), [store.close])


def _starlette_cookie(ctx: Context) -> Driver:
    from starlette.middleware.sessions import SessionMiddleware

    app = _starlette_app()
    app.add_middleware(SessionMiddleware, secret_key=_SECRET)
    return AsgiDriver(app, "session", ctx.loop())


def _starsessions_redis(ctx: Context) -> Driver:
    starsessions = importlib.import_module("starsessions")
    redis_store = importlib.import_module("starsessions.stores.redis").RedisStore
    loop = ctx.loop()
    client = importlib.import_module("redis.asyncio").Redis(host="127.0.0.1", port=ctx.redis_port())
    app = _starlette_app(load=starsessions.load_session)
    app.add_middleware(starsessions.SessionMiddleware, store=redis_store(connection=client))
    return AsgiDriver(app, "session", loop, [lambda: loop.run_until_complete(client.aclose())])


# -- the catalogue ------------------------------------------------------------------------

_REDIS = {"modules": ("redis",), "programs": (RedisServer.PROGRAM,)}
_W = "walsess, durability='interval'"

#: Every row, in table order; each framework's first is its baseline.
ROWS: tuple[WebRow, ...] = (
    WebRow("flask", "bare", "Flask with no session layer (no SECRET_KEY: its null session)",
           _flask_bare, modules=("flask",)),
    WebRow("flask", "walsess-interval", f"walsess.flask.init_app ({_W})", _flask_walsess,
           modules=("flask", "walsess.flask")),
    WebRow("flask", "cookie", "Flask's default session: the data in a signed cookie",
           _flask_cookie, modules=("flask",)),
    WebRow("flask", "flask-session-cachelib",
           "Flask-Session, cachelib FileSystemCache (threshold=0); its defaults: permanent,"
           " every request that loads a session saves it (SESSION_REFRESH_EACH_REQUEST)",
           _flask_session_cachelib, modules=("flask", "flask_session", "cachelib")),
    WebRow("flask", "flask-session-redis",
           "Flask-Session, Redis (AOF everysec); the same defaults", _flask_session_redis,
           modules=("flask", "flask_session", "redis"), programs=_REDIS["programs"]),
    WebRow("django", "bare", "Django with no session middleware", _django(None),
           modules=("django",)),
    WebRow("django", "walsess-interval", f'SESSION_ENGINE="walsess.django" ({_W})',
           _django("walsess.django"), modules=("django", "walsess.django")),
    WebRow("django", "db", "backends.db on a SQLite file (Django's defaults: rollback"
           " journal, synchronous=FULL), persistent connection",
           _django("django.contrib.sessions.backends.db"), modules=("django",)),
    WebRow("django", "file", "backends.file (one file per session)",
           _django("django.contrib.sessions.backends.file"), modules=("django",)),
    WebRow("django", "cache-locmem", "backends.cache on the in-process locmem cache",
           _django("django.contrib.sessions.backends.cache"), persistent=False, target=False,
           modules=("django",), note="loses its sessions on restart: not in the target"),
    WebRow("django", "signed-cookies", "backends.signed_cookies: the data in a signed cookie",
           _django("django.contrib.sessions.backends.signed_cookies"), modules=("django",)),
    WebRow("starlette", "bare", "Starlette with no session middleware", _starlette_bare,
           modules=("starlette",)),
    WebRow("starlette", "walsess-interval", f"walsess.starlette.SessionMiddleware ({_W})",
           _starlette_walsess, modules=("starlette", "walsess.starlette")),
    WebRow("starlette", "starsessions-redis",
           "starsessions, RedisStore (AOF everysec), load_session() in the views that use it",
           _starsessions_redis, modules=("starlette", "starsessions", "redis"),
           programs=_REDIS["programs"]),
    WebRow("starlette", "cookie", "Starlette's own SessionMiddleware: a signed cookie",
           _starlette_cookie, target=False, modules=("starlette", "itsdangerous"),
           note="for context: not among the peers issue 9 names for Starlette"),
)  # fmt: skip


def web_row(key: str) -> WebRow:
    """The row named *key* (``framework/name``)."""
    for r in ROWS:
        if r.key == key:
            return r
    raise KeyError(f"no web row {key!r}; one of {', '.join(r.key for r in ROWS)}")


def select(names: frozenset[str] | None = None) -> list[WebRow]:
    """The rows ``--only`` *names* (of :data:`SELECTORS`) select; all if None or ``web``."""
    if not names or "web" in names:
        return list(ROWS)
    return [r for r in ROWS if f"web-{r.framework}" in names]


# -- one row, ready to time ---------------------------------------------------------------


def plan(sessions: int, seed: int = SEED, size: int = PLAN_SIZE) -> list[int]:
    """The seeded sequence of session indexes every row's requests go through."""
    rng = random.Random(seed)
    return [rng.randrange(sessions) for _ in range(size)]


class Prepared:
    """Row *row* built, holding *sessions* sessions made through its own application,
    checked, with one ``run(n)`` per workload (:attr:`runs`)."""

    def __init__(self, row: WebRow, ctx: Context, sessions: int, seed: int = SEED) -> None:
        self.row = row
        self.driver = row.build(ctx)
        try:
            name = self.driver.cookie_name
            if row.baseline:
                # the same kind of Cookie header the other rows send; nothing reads it
                self.cookies = [f"{name}={secrets.token_urlsafe(32)}" for _ in range(sessions)]
            else:
                with self.driver.populating():
                    self.cookies = [self._create(i) for i in range(sessions)]
                self.check()
            order = [self.cookies[i] for i in plan(sessions, seed)]
            self.runs = {w: self.driver.runner(f"/{w}", order) for w in row.works}
        except BaseException:
            self.driver.close()
            raise

    def _create(self, i: int) -> str:
        r = self.driver.request(f"/create?i={i}", None)
        value = r.cookies.get(self.driver.cookie_name)
        if r.status != 200 or value is None:
            raise RuntimeError(f"{self.row.key}: creating a session answered {r.status}, no cookie")
        return f"{self.driver.cookie_name}={value}"

    def check(self) -> None:
        """A read returns what was stored; a change is read back; a ``none`` request answers."""
        d, key = self.driver, self.row.key
        for i in sorted({0, len(self.cookies) - 1}):
            r = d.request("/read", self.cookies[i])
            want = str(session_data(i)["user_id"]).encode()
            if r.status != 200 or r.body != want:
                raise RuntimeError(f"{key}: read session {i}: {r.status} {r.body!r}, not {want!r}")
        w = d.request("/write", self.cookies[0])
        value = w.cookies.get(d.cookie_name)
        cookie = self.cookies[0] if value is None else f"{d.cookie_name}={value}"
        r = d.request("/visits", cookie)
        if w.status != 200 or r.body != w.body:
            raise RuntimeError(f"{key}: wrote {w.body!r} ({w.status}), read back {r.body!r}")
        n = d.request("/none", self.cookies[0])
        if n.status != 200:
            raise RuntimeError(f"{key}: a request without the session answered {n.status}")

    def close(self) -> None:
        self.driver.close()


def time_requests(run: Callable[[int], None], min_time: float) -> tuple[int, float]:
    """``run(n)`` in growing batches (from :data:`FIRST_BATCH` requests, at most
    :data:`MOST_BATCH`) until *min_time* seconds have passed: (requests, seconds)."""
    return run_batches(run, min_time, first=FIRST_BATCH, most=MOST_BATCH)


# -- results ------------------------------------------------------------------------------


@dataclass
class Verdict:
    """The target for one framework and workload."""

    framework: str
    work: str
    walsess: float  # overhead, seconds per request
    peer: str
    peer_overhead: float

    @property
    def ratio(self) -> float:
        return self.walsess / self.peer_overhead if self.peer_overhead > 0 else math.inf

    @property
    def met(self) -> bool:
        return self.walsess <= TARGET_RATIO * self.peer_overhead


@dataclass
class WebResults:
    settings: WebSettings
    rows: list[WebRow] = field(default_factory=list)  # those that ran (or failed)
    skipped: list[tuple[WebRow, str]] = field(default_factory=list)
    samples: dict[tuple[str, str], list[float]] = field(default_factory=dict)  # s/request
    calls: dict[tuple[str, str], int] = field(default_factory=dict)
    errors: list[tuple[str, str, str]] = field(default_factory=list)  # (row, work, message)

    def add(self, row: WebRow, work: str, calls: int, seconds: float) -> None:
        self.samples.setdefault((row.key, work), []).append(seconds / calls)
        self.calls[row.key, work] = self.calls.get((row.key, work), 0) + calls

    def fail(self, row: WebRow, work: str, exc: BaseException) -> None:
        self.errors.append((row.key, work, f"{type(exc).__name__}: {exc}"))

    def value(self, key: str, work: str) -> float | None:
        s = self.samples.get((key, work))
        return median(s) if s else None

    def overhead(self, key: str, work: str) -> float | None:
        """Median over repeats of (this row's time - the framework's bare ``none`` time),
        each repeat against the baseline of the same round."""
        s = self.samples.get((key, work))
        base = self.samples.get((key.split("/")[0] + "/bare", "none"))
        if not s or not base or len(s) != len(base):
            return None
        return median(a - b for a, b in zip(s, base, strict=True))

    def verdicts(self) -> list[Verdict]:
        out = []
        for fw in FRAMEWORKS:
            mine = [r for r in self.rows if r.framework == fw and r.walsess]
            peers = [r for r in self.rows if r.framework == fw and r.target and not r.walsess
                     and not r.baseline]  # fmt: skip
            for w in TARGET_WORKS:
                for me in mine:
                    ours = self.overhead(me.key, w)
                    theirs = [
                        (o, p.key) for p in peers if (o := self.overhead(p.key, w)) is not None
                    ]
                    if ours is None or not theirs:
                        continue
                    best, name = min(theirs)
                    out.append(Verdict(fw, w, ours, name, best))
        return out


# -- running ------------------------------------------------------------------------------


class Steps(Protocol):
    def step(self, what: str = "") -> None: ...


def step_count(rows: Sequence[WebRow], s: WebSettings) -> int:
    """Progress steps :func:`run` takes for *rows* (set up, then one per timed sample)."""
    ok = [r for r in rows if r.missing() is None]
    return len(ok) + s.repeats * sum(len(r.works) for r in ok)


def run(
    workdir: str,
    s: WebSettings,
    rows: Sequence[WebRow] | None = None,
    progress: Steps | None = None,
    seed: int = SEED,
) -> WebResults:
    """Time *rows* (default: all), framework by framework; stores under *workdir*.

    Within a framework, every (row, workload) pair is timed once per round,
    in an order rotated each round, so a noisy neighbour slows them alike.
    """
    results = WebResults(s)
    for row in ROWS if rows is None else rows:
        reason = row.missing()
        if reason is None:
            results.rows.append(row)
        else:
            results.skipped.append((row, reason))
    ctx = Context(workdir)
    try:
        for fw in FRAMEWORKS:
            _run_framework([r for r in results.rows if r.framework == fw], ctx, s, results,
                           progress, seed)  # fmt: skip
    finally:
        ctx.close()
    return results


def _run_framework(
    rows: list[WebRow],
    ctx: Context,
    s: WebSettings,
    results: WebResults,
    progress: Steps | None,
    seed: int,
) -> None:
    step = progress.step if progress is not None else (lambda what="": None)
    live: dict[str, Prepared] = {}
    try:
        for row in rows:
            step(f"set up {row.key}")
            try:
                live[row.key] = Prepared(row, ctx, s.sessions, seed)
            except Exception as exc:
                results.fail(row, "set up", exc)
        pairs = [(p, w) for p in live.values() for w in p.row.works]
        failed: set[str] = set()
        for p, w in pairs:  # warm up: imports, caches, first connections
            try:
                p.runs[w](16)
            except Exception as exc:
                failed.add(p.row.key)
                results.fail(p.row, w, exc)
        for rep in range(s.repeats):
            for p, w in rotated(pairs, rep):
                step(f"{w} {p.row.key}")
                if p.row.key in failed:
                    continue
                try:
                    calls, secs = time_requests(p.runs[w], s.min_time)
                except Exception as exc:
                    failed.add(p.row.key)
                    results.fail(p.row, w, exc)
                    continue
                results.add(p.row, w, calls, secs)
    finally:
        for p in live.values():
            p.close()


# -- output -------------------------------------------------------------------------------


def _us(v: float | None) -> str:
    return "-" if v is None else f"{v * 1e6:,.1f}"


def format_report(r: WebResults) -> list[str]:
    """The group's lines for ``walsess bench``'s output."""
    s = r.settings
    out = [
        "",
        f"web: one request through each framework's app, in process (us per request, median of"
        f" {s.repeats} x {s.min_time:g} s; {s.sessions:,} sessions per store); +: the"
        " overhead over the framework's bare request (no session layer)",
    ]
    for row, reason in r.skipped:
        out.append(f"skipped {row.key}: {reason}")
    for fw in FRAMEWORKS:
        rows = [row for row in r.rows if row.framework == fw]
        if not rows:
            continue
        out.append("")
        out.append(f"  {fw:<26}" + "".join(f" {w:>8}" for w in WORKS)
                   + "".join(f" {'+' + w:>8}" for w in WORKS))  # fmt: skip
        notes: list[str] = []
        for row in rows:
            label = row.name
            if row.note:
                label += "*" * (len(notes) + 1)
                notes.append(f"  {'*' * (len(notes) + 1)} {row.note}")
            values = "".join(
                f" {_us(r.value(row.key, w)) if w in row.works else '':>8}" for w in WORKS
            )
            overheads = (
                "" if row.baseline else "".join(f" {_us(r.overhead(row.key, w)):>8}" for w in WORKS)
            )
            out.append(f"  {label:<26}{values}{overheads}".rstrip())
        out.extend(notes)
        for v in (v for v in r.verdicts() if v.framework == fw):
            out.append(
                f"  target {v.work}: walsess +{_us(v.walsess)} us <= {TARGET_RATIO:g} x"
                f" {v.peer.split('/')[1]} +{_us(v.peer_overhead)} us"
                f" = {_us(TARGET_RATIO * v.peer_overhead)} us:"
                f" {'met' if v.met else 'NOT MET'} ({v.ratio:.2f}x)"
            )
    return out


def to_json(r: WebResults) -> dict[str, Any]:
    """The group's part of ``walsess bench``'s JSON (times in seconds per request)."""
    failed = {key for key, _, _ in r.errors}
    rows = []
    for row in [*r.rows, *(x for x, _ in r.skipped)]:
        reason = dict((x.key, why) for x, why in r.skipped).get(row.key)
        status = "skipped" if reason else "failed" if row.key in failed else "ran"
        rows.append(
            {
                "framework": row.framework,
                "name": row.name,
                "description": row.description,
                "persistent": row.persistent,
                "target": row.target,
                "baseline": row.baseline,
                "note": row.note or None,
                "status": status,
                "reason": reason,
            }
        )
    results = [
        {
            "framework": key.split("/")[0],
            "row": key.split("/")[1],
            "workload": w,
            "unit": "s/request",
            "value": r.value(key, w),
            "samples": samples,
            "overhead": r.overhead(key, w),
            "requests": r.calls.get((key, w), 0),
        }
        for (key, w), samples in r.samples.items()
    ]
    return {
        "settings": {
            "sessions": r.settings.sessions,
            "repeats": r.settings.repeats,
            "min_time": r.settings.min_time,
            "seed": SEED,
        },
        "workloads": WORKS,
        "target": f"walsess overhead <= {TARGET_RATIO:g} x the fastest target peer's",
        "rows": rows,
        "results": results,
        "verdicts": [
            {
                "framework": v.framework,
                "workload": v.work,
                "walsess_overhead": v.walsess,
                "peer": v.peer,
                "peer_overhead": v.peer_overhead,
                "ratio": v.ratio,
                "met": v.met,
            }
            for v in r.verdicts()
        ],
        "errors": [{"row": k, "workload": w, "error": m} for k, w, m in r.errors],
    }


def main(argv: Sequence[str]) -> int:
    """``python -m walsess.benchmark.web [SESSIONS]``: the group alone, quick settings."""
    import tempfile

    s = QUICK if not argv else WebSettings(parse_scale(argv[0]), QUICK.repeats, QUICK.min_time)
    with tempfile.TemporaryDirectory(prefix="walsess-web-") as d:
        r = run(d, s)
    print("\n".join(format_report(r)))
    for key, work, msg in r.errors:
        print(f"FAILED {key} ({work}): {msg}")
    return 1 if r.errors else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
