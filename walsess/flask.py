"""Server-side sessions for Flask: ``init_app(app, store)`` and ``flask.session`` works as before.

The cookie holds only a random 256-bit token; the data stays in a
:class:`walsess.Store`. ``flask.session`` is a :class:`FlaskSession`, which
is a :class:`walsess.request.RequestSession` (lazy load, per-key diff
commit) with Flask's :class:`~flask.sessions.SessionMixin`, so
``session.permanent``, ``flash()`` and extensions that use the session keep
working. What it adds over Flask's signed cookie or a whole-blob server
store: the session is looked up only if the application touches it; only the
keys that changed are written, as one record, so overlapping requests of one
session do not undo each other; nested changes (``session["cart"].append(3)``)
are saved without ``session.modified = True``; a request that stores nothing
creates no session and sends no cookie; a token the store does not know is
never adopted.

Example::

    import walsess
    import walsess.flask
    from flask import Flask, session

    app = Flask(__name__)
    store = walsess.open("var/sessions")        # fails now if another process holds it
    walsess.flask.init_app(app, store)

    @app.post("/login")
    def login():
        user = check_password()                  # your code
        walsess.flask.regenerate(user=str(user.id))   # new token, data kept
        session["user_id"] = user.id
        session.permanent = True                 # cookie and server ttl: PERMANENT_SESSION_LIFETIME
        return "ok"

    @app.post("/logout")
    def logout():
        walsess.flask.logout()                   # session destroyed, cookie deleted
        return "bye"

The cookie follows Flask's own settings: ``SESSION_COOKIE_NAME``,
``SESSION_COOKIE_DOMAIN``, ``SESSION_COOKIE_PATH`` (or ``APPLICATION_ROOT``),
``SESSION_COOKIE_SECURE``, ``SESSION_COOKIE_HTTPONLY`` (default True),
``SESSION_COOKIE_PARTITIONED`` (Flask 3.1+) and ``SESSION_COOKIE_SAMESITE``,
except that SameSite is ``Lax`` when that setting is None (Flask's default,
which sends no SameSite); an explicit ``"Strict"`` or ``"None"`` is honoured.
A permanent session (``session.permanent = True``) has an idle timeout of
``PERMANENT_SESSION_LIFETIME`` in the store, sliding with every request that
touches it, and a persistent cookie whose Max-Age and Expires follow that
expiry; the cookie is re-sent on every such request while
``SESSION_REFRESH_EACH_REQUEST`` is true (Flask's default), otherwise only
when the session changed. A non-permanent session has a browser-session
cookie and the store's ``default_ttl`` as its idle timeout.

Cost per request: reading the ``Cookie`` header if the session is not
touched (no lookup, no write); otherwise one store lookup plus encoding the
values read or set at the end of the request (a few microseconds in
``"interval"`` mode; ``"always"`` mode adds the wait for an fsync of a
change). Deploy as one process with threads (``gunicorn -w 1 --threads 8``,
or any threaded WSGI server): the store belongs to the process that opened it.
Flask's reloader (``flask run --debug``) loads the application in a watcher
process too, so the server's ``walsess.open`` raises
:class:`walsess.LockedError`: run ``flask run --debug --no-reload``, or open
the store only where it serves (``if not app.debug or
werkzeug.serving.is_running_from_reloader()``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

import flask
from flask.sessions import SessionInterface, SessionMixin

from .codec import PickleCodec
from .request import KEEP, Action, RequestSession, cookie_finder

if TYPE_CHECKING:
    from flask import Flask, Request, Response

    from .protocol import SessionStore

__all__ = ["FlaskSession", "WalsessSessionInterface", "init_app", "logout", "regenerate"]


class FlaskSession(RequestSession, SessionMixin):
    """``flask.session`` under :func:`init_app`: a lazily loaded mapping committed as a diff.

    Besides the mapping and :class:`~walsess.request.RequestSession`'s
    ``regenerate``/``destroy``/``token``/``handle``, it has the attributes of
    Flask's :class:`~flask.sessions.SessionMixin`:

    - ``permanent``: stored under the ``"_permanent"`` key, as Flask does.
    - ``accessed``: True once the application used ``flask.session`` (Flask
      sets it) or the data was loaded; the response then gets
      ``Vary: Cookie``.
    - ``modified``: True if the request changed what is stored (computed by
      encoding the values read or set, so nested changes count). Setting it
      to True, as Flask code does after a nested change, is accepted and
      needless: nested changes are found anyway.
    - ``new``: True while there is no stored session behind the request (none
      came with the cookie, or it was destroyed); looks the session up.
    """

    # Defaults an instance overrides when Flask sets ``accessed`` or the
    # application sets ``modified`` (SessionMixin gives instances a __dict__).
    _used = False
    _marked = False

    @property
    def accessed(self) -> bool:
        return self._used or self.loaded

    @accessed.setter
    def accessed(self, value: bool) -> None:
        # Flask's request context sets this whenever flask.session is used
        # (Flask >= 3.1.3); it decides Vary only, never a lookup.
        self._used = value

    @property
    def modified(self) -> bool:
        return self._marked or bool(self.changes())

    @modified.setter
    def modified(self, value: bool) -> None:
        self._marked = value

    @property
    def new(self) -> bool:
        return self.handle is None

    @new.setter
    def new(self, value: bool) -> None:
        raise AttributeError("FlaskSession.new is read-only: the store knows if a session exists")


class WalsessSessionInterface(SessionInterface):
    """A :class:`flask.sessions.SessionInterface` keeping sessions in a :class:`walsess.Store`.

    Installed by :func:`init_app`. Subclass it to change a cookie helper
    (``get_cookie_*``, ``get_expiration_time``, ``should_set_cookie``) as with
    any Flask session interface.

    :param store: the open store; the application owns it (closes it at exit).
    :param meta: called with the request when it creates a session, for the
        session's metadata (for example ``{"ip": request.remote_addr}``).
    """

    def __init__(
        self,
        store: SessionStore,
        *,
        meta: Callable[[Request], Mapping[str, Any] | None] | None = None,
    ) -> None:
        self.store = store
        self.meta = meta
        self._finders: dict[str, Callable[[str], list[str]]] = {}
        # Extensions read this to know whether values round-trip Python objects.
        self.pickle_based = isinstance(store.codec, PickleCodec)

    def get_cookie_samesite(self, app: Flask) -> str:
        """``SESSION_COOKIE_SAMESITE``, or ``"Lax"`` when it is None (Flask's default)."""
        return super().get_cookie_samesite(app) or "Lax"

    def get_expiration_time(self, app: Flask, session: SessionMixin) -> datetime | None:
        """When the stored session expires if it is permanent (None: a browser-session cookie).

        Before the session exists in the store, Flask's own answer (now +
        ``PERMANENT_SESSION_LIFETIME``).
        """
        if not session.permanent:
            return None
        handle = session.handle if isinstance(session, FlaskSession) else None
        if handle is None:
            return super().get_expiration_time(app, session)
        return datetime.fromtimestamp(handle.expires_at, timezone.utc)

    def should_set_cookie(self, app: Flask, session: SessionMixin) -> bool:
        """Whether a permanent session's cookie is re-sent with a fresh Max-Age.

        As Flask's (refresh every request, or when modified), tested in the
        cheap order: ``modified`` encodes the values the request read.
        """
        return (session.permanent and bool(app.config["SESSION_REFRESH_EACH_REQUEST"])) or (
            session.modified
        )

    def open_session(self, app: Flask, request: Request) -> FlaskSession:
        """The request's session; nothing is looked up until the application uses it."""
        name = self.get_cookie_name(app)
        finder = self._finders.get(name)
        if finder is None:
            finder = self._finders[name] = cookie_finder(name)
        # The first, as request.cookies.get() would give; found without parsing
        # every cookie the request carries.
        found = finder(request.environ.get("HTTP_COOKIE", ""))
        token = found[0] if found and found[0] else None
        meta_fn = self.meta
        meta: Callable[[], Mapping[str, Any] | None] | None = None
        if meta_fn is not None:

            def meta() -> Mapping[str, Any] | None:
                return meta_fn(request)

        return FlaskSession(self.store, token, meta=meta)

    def save_session(self, app: Flask, session: SessionMixin, response: Response) -> None:
        """Commit what the request changed (one record, or none) and set or delete the cookie.

        Store errors propagate (the response becomes a 500); nothing is
        swallowed.
        """
        if not isinstance(session, FlaskSession):
            raise TypeError(
                f"walsess.flask cannot save a {type(session).__name__}: the session must come"
                " from WalsessSessionInterface.open_session"
            )
        if session.accessed:
            _vary_on_cookie(response)
        if not session.loaded:  # never looked up: nothing can have changed
            return
        permanent = session.permanent
        if permanent:
            ttl = app.permanent_session_lifetime.total_seconds()
            refresh = self.should_set_cookie(app, session)
        else:
            # Explicit, so a session made non-permanent gets the default idle timeout back.
            ttl, refresh = self.store.default_ttl, False
        out = session.commit(ttl=ttl, refresh=refresh)
        if out.action is Action.NONE:
            return
        name = self.get_cookie_name(app)
        attrs: dict[str, Any] = {
            "domain": self.get_cookie_domain(app),
            "path": self.get_cookie_path(app),
            "secure": self.get_cookie_secure(app),
            "httponly": self.get_cookie_httponly(app),
            "samesite": self.get_cookie_samesite(app),
        }
        # Flask < 3.1 has no Partitioned setting (nor Werkzeug the argument).
        partitioned = getattr(self, "get_cookie_partitioned", None)
        if partitioned is not None and partitioned(app):
            attrs["partitioned"] = True
        _vary_on_cookie(response)
        if out.action is Action.DELETE:
            response.delete_cookie(name, **attrs)
            return
        assert out.token is not None
        expires = self.get_expiration_time(app, session) if permanent else None
        if expires is not None:
            attrs["expires"] = expires
            attrs["max_age"] = out.max_age
        response.set_cookie(name, out.token, **attrs)


def _vary_on_cookie(response: Response) -> None:
    # response.vary.add() parses and rebuilds the header through a HeaderSet,
    # several microseconds a request; most responses have no Vary yet.
    headers = response.headers
    if "Vary" in headers:
        response.vary.add("Cookie")
    else:
        headers["Vary"] = "Cookie"


def init_app(
    app: Flask,
    store: SessionStore,
    *,
    meta: Callable[[Request], Mapping[str, Any] | None] | None = None,
) -> None:
    """Keep *app*'s sessions in *store*: sets ``app.session_interface``.

    *store* must be open in this process (open it at start-up, so a store
    held by another process fails start-up with :class:`walsess.LockedError`,
    not the first request); a closed or forked store raises
    :class:`walsess.StoreClosed` (:class:`walsess.StoreForked`) here. The
    store is also left in ``app.extensions["walsess"]``. *meta* is called with
    the request when it creates a session, for the session's metadata.
    No ``SECRET_KEY`` is needed for the session (the cookie carries no data).

    Example::

        store = walsess.open("var/sessions")
        walsess.flask.init_app(app, store, meta=lambda r: {"ua": r.user_agent.string})
    """
    store.ping()  # raises now for a closed or forked store (or a Redis not there)
    app.session_interface = WalsessSessionInterface(store, meta=meta)
    app.extensions["walsess"] = store


def _current() -> FlaskSession:
    view = flask.session  # raises RuntimeError outside a request
    if not isinstance(view, FlaskSession):
        raise RuntimeError(
            "flask.session is not a walsess session: call walsess.flask.init_app(app, store)"
        )
    return view


def regenerate(*, user: Any = KEEP) -> None:
    """Give the current request's session a new token now, keeping its data: call it at login.

    The old token stops working at once; the response carries the new cookie.
    With *user* (a str, or None) the session also gets that owner, so
    :meth:`walsess.Store.sessions_of` lists it and
    :meth:`walsess.Store.destroy_user` ends it with the user's other
    sessions. If the request has no stored session yet, the one created at
    the end of the request gets a fresh token and *user*. Costs one store
    lookup and one record (an fsync wait in ``"always"`` mode).

    Example::

        @app.post("/login")
        def login():
            user = check_password()
            walsess.flask.regenerate(user=str(user.id))
            session["user_id"] = user.id
    """
    _current().regenerate(user=user)


def logout() -> None:
    """Destroy the current request's session now and delete its cookie: call it at logout.

    Anything stored in the session later in the same request goes to a
    brand-new session with a new token. Other requests of the session still
    running drop their changes and delete their cookie too. Example::

        @app.post("/logout")
        def signout():
            walsess.flask.logout()
            return redirect("/")
    """
    _current().destroy()
