"""Server-side sessions for Starlette and FastAPI: a drop-in ``SessionMiddleware``.

``request.session`` works as with Starlette's own
:class:`starlette.middleware.sessions.SessionMiddleware` and the middleware
takes the same cookie parameters by the same names and defaults, minus
``secret_key``: the cookie holds only a random 256-bit token, the data stays
in a :class:`walsess.Store`. What it adds over a signed cookie (or a
whole-blob server store) comes from :class:`walsess.request.RequestSession`:
the session is looked up only if the application touches it; only the keys
that changed are written, as one record, so overlapping requests of one
session do not undo each other; nested changes (``session["cart"].append(3)``)
are saved without any flag; a request that stores nothing creates no session
and sends no cookie; a token the store does not know is never adopted.

Example::

    import walsess
    from starlette.applications import Starlette
    from walsess.starlette import SessionMiddleware, logout, regenerate

    store = walsess.open("var/sessions")
    app = Starlette(routes=[...])
    app.add_middleware(SessionMiddleware, store=store, https_only=True)

    async def login(request):
        ...                                  # check the password
        await regenerate(request, user=str(user_id))   # new token, data kept
        request.session["user_id"] = user_id

    async def signout(request):
        await logout(request)                # session destroyed, cookie deleted

Cost per request: nothing beyond reading the ``Cookie`` header if the session
is not touched; otherwise one store lookup plus encoding the values read or
set (a few microseconds in ``"interval"`` mode). In ``"always"`` durability
mode the commit waits for an fsync, so it runs in a worker thread
(:func:`anyio.to_thread.run_sync`): the event loop never blocks on the disk,
at the price of one thread hop per request that touches the session.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, Literal

import anyio.to_thread
from starlette.datastructures import MutableHeaders
from starlette.requests import HTTPConnection
from starlette.types import ASGIApp, Message, Receive, Scope, Send
from starlette.websockets import WebSocketDisconnect

from .request import KEEP, Action, Outcome, RequestSession, cookie_finder

if TYPE_CHECKING:
    from .protocol import SessionStore

__all__ = ["SessionMiddleware", "logout", "regenerate"]

_EXPIRED = "Max-Age=0; expires=Thu, 01 Jan 1970 00:00:00 GMT; "


class SessionMiddleware:
    """ASGI middleware giving each HTTP and WebSocket connection ``scope["session"]``.

    ``scope["session"]`` (``request.session``, ``websocket.session``) is a
    :class:`~walsess.request.RequestSession`: a mutable mapping, not a dict.

    :param app: the ASGI application (passed by ``app.add_middleware``).
    :param store: the :class:`walsess.Store` (or :class:`walsess.RedisStore`) holding
        the sessions. The
        application owns it: open it at start-up (so a store held by another
        process fails start-up, not the first request) and close it at
        shutdown.
    :param session_cookie: the cookie's name.
    :param max_age: the session's idle timeout in seconds (sliding: every
        request that touches the session extends it), also the cookie's
        Max-Age, which is re-sent on such requests to follow the expiry.
        None: a browser-session cookie (no Max-Age) and the store's
        ``default_ttl`` as the idle timeout.
    :param path: the cookie's Path.
    :param same_site: the cookie's SameSite: ``"lax"`` (default),
        ``"strict"`` or ``"none"`` (which browsers accept only with
        ``https_only=True``).
    :param https_only: send the cookie with Secure (HTTPS only).
    :param domain: the cookie's Domain; None (default) limits it to the host.
    :param partitioned: add Partitioned (CHIPS), as Starlette's own option.
    :param meta: called with the connection (an
        :class:`~starlette.requests.HTTPConnection`) when a request creates a
        session, for the session's metadata (say ``{"ip": conn.client.host}``);
        it costs nothing on other requests.

    The cookie is always HttpOnly. Changes are committed when the
    application sends its response headers (``http.response.start``); any
    made after that (in a background task, or while streaming the body) are
    not saved. A request that fails before sending its response saves
    nothing. WebSocket connections: changes made before ``accept()`` are
    committed at accept, with the cookie in the accept headers; changes made
    afterwards are committed to the existing session when the application
    returns or the client disconnects (:class:`WebSocketDisconnect`), never
    to a new one (no cookie can reach the client then), and never after any
    other exception. Regenerating during a WebSocket conversation leaves the
    client with a dead token: do it over HTTP.
    """

    def __init__(
        self,
        app: ASGIApp,
        store: SessionStore,
        session_cookie: str = "session",
        max_age: int | None = 14 * 24 * 60 * 60,  # 14 days, in seconds
        path: str = "/",
        same_site: Literal["lax", "strict", "none"] = "lax",
        https_only: bool = False,
        domain: str | None = None,
        partitioned: bool = False,
        *,
        meta: Callable[[HTTPConnection], Mapping[str, Any] | None] | None = None,
    ) -> None:
        if max_age is not None and max_age <= 0:
            raise ValueError(
                f"max_age must be a positive number of seconds or None; got {max_age!r}"
            )
        self.app = app
        self.store = store
        self.session_cookie = session_cookie
        self.max_age = max_age
        self.path = path
        self.meta = meta
        # Same attribute spelling and order as Starlette's own middleware, so a
        # switch between the two changes no header but the cookie's value.
        flags = "httponly; samesite=" + same_site
        if https_only:
            flags += "; secure"
        if domain is not None:
            flags += f"; domain={domain}"
        if partitioned:
            flags += "; partitioned"
        self.security_flags = flags
        #: In "always" mode a commit waits for an fsync: run it off the event loop.
        self.offload = store.durability == "always"
        self._find_cookie = cookie_finder(session_cookie)

    # -- the connection's session ---------------------------------------------------------

    def _token(self, scope: Scope) -> str | None:
        raw = None
        for name, value in scope["headers"]:
            if name == b"cookie":  # HTTP/2 clients may split cookies over several headers
                raw = value if raw is None else raw + b"; " + value
        if raw is None:
            return None
        # The last one wins, as with Starlette's cookie_parser.
        found = self._find_cookie(raw.decode("latin-1"))
        return found[-1] if found else None

    def _view(self, scope: Scope) -> RequestSession:
        meta_fn = self.meta
        meta: Callable[[], Mapping[str, Any] | None] | None = None
        if meta_fn is not None:

            def meta() -> Mapping[str, Any] | None:
                return meta_fn(HTTPConnection(scope))

        return RequestSession(self.store, self._token(scope), meta=meta)

    async def _commit(self, view: RequestSession) -> Outcome:
        ttl = self.max_age
        if self.offload:
            call = functools.partial(view.commit, ttl=ttl, refresh=ttl is not None)
            return await anyio.to_thread.run_sync(call)
        return view.commit(ttl=ttl, refresh=ttl is not None)

    def _set_cookie(self, out: Outcome) -> str | None:
        name, path, flags = self.session_cookie, self.path, self.security_flags
        if out.action is Action.SET:
            age = "" if self.max_age is None else f"Max-Age={out.max_age}; "
            return f"{name}={out.token}; path={path}; {age}{flags}"
        if out.action is Action.DELETE:
            return f"{name}=; path={path}; {_EXPIRED}{flags}"
        return None

    # -- ASGI -------------------------------------------------------------------------------

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind != "http" and kind != "websocket":
            await self.app(scope, receive, send)
            return
        view = self._view(scope)
        scope["session"] = view
        started = False

        async def send_wrapper(message: Message) -> None:
            nonlocal started
            if not started and message["type"] in _HEADERS_MESSAGES:
                started = True
                if view.loaded:  # otherwise nothing was looked up: nothing to do
                    cookie = self._set_cookie(await self._commit(view))
                    headers = message["headers"] = list(message.get("headers", ()))
                    if kind == "http":  # the response depends on the cookie: keep caches honest
                        _vary_on_cookie(headers)
                    if cookie is not None:
                        headers.append((b"set-cookie", cookie.encode("latin-1")))
            await send(message)

        if kind == "http":
            await self.app(scope, receive, send_wrapper)
            return
        try:
            await self.app(scope, receive, send_wrapper)
        except WebSocketDisconnect:
            await self._commit_after_accept(view)
            raise
        await self._commit_after_accept(view)

    async def _commit_after_accept(self, view: RequestSession) -> None:
        # Only to a session the client already holds the cookie of: a new one
        # would be an orphan no request could ever reach.
        if view.loaded and view.handle is not None:
            await self._commit(view)


def _vary_on_cookie(headers: list[tuple[bytes, bytes]]) -> None:
    # Raw tuples: MutableHeaders costs microseconds a request; it is kept for
    # the rare response that has a Vary header already, to merge the same way.
    for name, _ in headers:
        if name.lower() == b"vary":
            MutableHeaders(raw=headers).add_vary_header("Cookie")
            return
    headers.append((b"vary", b"Cookie"))


#: The messages that carry the response headers (a WebSocket's accept, or its
#: denial response), where the session is committed and the cookie set.
_HEADERS_MESSAGES = frozenset(
    ("http.response.start", "websocket.accept", "websocket.http.response.start")
)


async def _run(conn: HTTPConnection, call: Callable[[RequestSession], object]) -> None:
    """Run ``call(session)`` (a store call) off the event loop in "always" mode,
    where it waits for an fsync; inline (microseconds) otherwise."""
    view = conn.scope.get("session")
    if not isinstance(view, RequestSession):
        raise RuntimeError(
            "walsess.starlette.SessionMiddleware is not installed on this application:"
            " add it with app.add_middleware(SessionMiddleware, store=store)"
        )
    if view.store.durability == "always":
        await anyio.to_thread.run_sync(call, view)
    else:
        call(view)


async def regenerate(conn: HTTPConnection, *, user: Any = KEEP) -> None:
    """Give the session a new token now, keeping its data: call it at login.

    The old token stops working at once and the response carries the new
    cookie. With *user* (a str, or None) the session also gets that owner, so
    :meth:`walsess.Store.sessions_of` lists it and
    :meth:`walsess.Store.destroy_user` ends it with the user's other sessions.
    If the request has no session yet, the one created at the end of the
    request gets a fresh token and *user*.

    In ``"always"`` mode the store call (which waits for an fsync) runs in a
    worker thread; otherwise inline (microseconds). Example::

        async def login(request):
            user = await check_password(request)
            await regenerate(request, user=str(user.id))
            request.session["user_id"] = user.id

    In a sync (``def``) endpoint, which Starlette already runs in a thread,
    ``request.session.regenerate(user=...)`` does the same.
    """
    await _run(conn, lambda view: view.regenerate(user=user))


async def logout(conn: HTTPConnection) -> None:
    """Destroy the session now and delete the client's cookie: call it at logout.

    Anything stored in the session later in the same request goes to a
    brand-new session with a new token. In ``"always"`` mode the store call
    runs in a worker thread; otherwise inline. Example::

        async def signout(request):
            await logout(request)
            return RedirectResponse("/", status_code=303)

    In a sync (``def``) endpoint, ``request.session.destroy()`` does the same.
    """
    await _run(conn, RequestSession.destroy)
