"""Django session engine: ``SESSION_ENGINE = "walsess.django"``.

Settings::

    SESSION_ENGINE = "walsess.django"
    WALSESS_PATH = BASE_DIR / "var" / "sessions"       # the store directory
    WALSESS_OPTIONS = {"durability": "interval"}       # walsess.Options, or a dict of its fields

:class:`SessionStore` is a :class:`~django.contrib.sessions.backends.base.SessionBase`
whose data is a :class:`walsess.request.RequestSession`, so Django's
``request.session`` gets what that seam gives every framework:

- **Per-key merge.** Saving writes only the keys the request changed, as one
  record; two overlapping requests of one session that change different keys
  both keep their change. ``clear()`` deletes the keys this request saw.
- **Nested changes are saved.** ``request.session["cart"].append(3)`` needs no
  ``request.session.modified = True``: :attr:`SessionStore.modified` is also
  true when a value read from the session encodes differently now.
- **Nothing for nothing.** An unchanged request writes no record; a request
  that stores nothing creates no session and gets no cookie.
- **No fixation.** ``session_key`` is always a token the store issued: a
  cookie the store does not know (unknown, expired, malformed) is dropped at
  load, never adopted. ``cycle_key()`` (called by ``django.contrib.auth.login``)
  gives the session a new token at once and keeps its data; ``flush()``
  (``logout``) destroys it.

**Expiry.** The session's idle timeout in the store is ``get_expiry_age()``:
``SESSION_COOKIE_AGE`` by default, or what ``set_expiry`` set. It slides: every
request that reads the session extends it (the store rate-limits the records
this costs), so ``SESSION_SAVE_EVERY_REQUEST`` is not needed to keep active
users logged in (if set, it re-sends the cookie and still writes nothing for an
unchanged session). An absolute expiry (``set_expiry`` with a ``datetime`` or
``timedelta``) is also checked at load, so reads never stretch it. A
non-positive age destroys the session at save. Expiry is judged by the store's
clock (``WALSESS_OPTIONS["clock"]``, :func:`time.time` by default), so a test
that moves a :class:`walsess.ManualClock` moves Django's expiry too.

**Users.** When the session holds a logged-in user (``_auth_user_id``) and is
created, or its key was cycled in this request (login, password change), the
store session's owner is set to that user id, so
``get_store().sessions_of(str(user.pk))`` lists a user's sessions and
``get_store().destroy_user(str(user.pk))`` logs them out everywhere. At login
this costs one more record (a second token change before the response; the
client only ever sees the last token).

**Serialization.** Values are encoded by the store's codec (JSON by default,
``WALSESS_OPTIONS["codec"]``); ``SESSION_SERIALIZER`` is not used.

**One process.** The store is opened once per process, when Django loads
``SESSION_ENGINE`` (building the middleware chain at start-up), and shared by
all its threads. A store belongs to one process: if another holds it, start-up
fails with :class:`walsess.LockedError`. Run one worker process with threads
(``gunicorn -w 1 --threads 8 project.wsgi``, without ``--preload``), or use a
store shared between processes. ``manage.py clearsessions`` runs the store's
:meth:`~walsess.Store.gc`; it is not needed next to a running server, whose
store removes expired sessions itself every ``cleanup_interval`` seconds (and
cannot run there anyway: the server holds the store).

**Several processes.** With ``WALSESS_REDIS_URL = "redis://host:6379/0"`` the
store is a :class:`walsess.RedisStore`, shared by every worker process and
machine (``gunicorn -w 4``, ``--preload`` or not); ``WALSESS_PATH`` is then
not used and ``WALSESS_OPTIONS`` may hold only the settings a RedisStore
takes (``default_ttl``, ``max_lifetime``, ``touch_granularity``, ``codec``,
``max_value_bytes``, ``clock``). ``manage.py clearsessions`` runs its
:meth:`~walsess.RedisStore.gc` and can run next to the servers.

Cost per request: nothing if the view never touches the session; otherwise
one store lookup and, at the end, one encode of each value the view read.
"""

from __future__ import annotations

import atexit
import os
import threading
from datetime import datetime, timedelta, timezone
from typing import TYPE_CHECKING, Any

from asgiref.sync import sync_to_async

# The module, not its `settings`: doctest's finder probes module attributes, and an
# unconfigured LazySettings raises ImproperlyConfigured at any probe.
from django import conf as django_conf
from django.contrib.sessions.backends.base import CreateError, SessionBase, UpdateError
from django.core.exceptions import ImproperlyConfigured

from .errors import LockedError, SessionNotFound
from .options import Options
from .request import RequestSession
from .store import Store
from .store import open as open_store

if TYPE_CHECKING:
    from .redis_store import RedisStore

__all__ = ["SessionStore", "close_store", "get_store"]

#: django.contrib.auth.SESSION_KEY (not imported: auth need not be installed).
_AUTH_USER = "_auth_user_id"
#: Where SessionBase.set_expiry keeps a custom expiry, inside the session data.
_EXPIRY = "_session_expiry"

_lock = threading.Lock()
_store: Store | RedisStore | None = None
_atexit_registered = False


def get_store() -> Store | RedisStore:
    """The process's store, opened from ``WALSESS_PATH`` and ``WALSESS_OPTIONS`` on first use.

    Thread-safe; after the first call it costs one global read. Use it for
    what Django's session API does not offer: ``get_store().sessions_of(uid)``,
    ``destroy_user``, ``stats()``.

    With ``WALSESS_REDIS_URL`` set, the store is a :class:`walsess.RedisStore` on
    that Redis (shared by every worker process; ``WALSESS_OPTIONS`` may then hold
    only the settings a RedisStore takes) and ``WALSESS_PATH`` is not used.

    :raises django.core.exceptions.ImproperlyConfigured: neither ``WALSESS_PATH``
        nor ``WALSESS_REDIS_URL`` is set.
    :raises walsess.LockedError: another process holds the store.
    """
    store = _store
    if store is not None:
        return store
    with _lock:
        if _store is None:
            _open()
        assert _store is not None
        return _store


def _open() -> None:
    global _store, _atexit_registered
    configured = getattr(django_conf.settings, "WALSESS_OPTIONS", None) or {}
    url = getattr(django_conf.settings, "WALSESS_REDIS_URL", None)
    if url:
        from .redis_store import RedisStore

        if isinstance(configured, Options):
            _store = RedisStore.from_url(str(url), configured)
        else:
            _store = RedisStore.from_url(str(url), **configured)
        return
    path = getattr(django_conf.settings, "WALSESS_PATH", None)
    if not path:
        raise ImproperlyConfigured(
            "SESSION_ENGINE = 'walsess.django' needs WALSESS_PATH, the directory of the"
            " session store (for example BASE_DIR / 'var' / 'sessions'), or"
            " WALSESS_REDIS_URL, a Redis shared by several processes"
        )
    # An Options, or a dict of its fields (the keyword arguments of walsess.open);
    # a key that names no setting raises ValidationError listing those there are.
    options = configured if isinstance(configured, Options) else Options.of(**configured)
    try:
        _store = open_store(os.fspath(path), options)
    except LockedError as exc:
        raise LockedError(
            f"{exc}. (walsess.django opens WALSESS_PATH when Django loads SESSION_ENGINE."
            " `manage.py clearsessions` is not needed while a server holds the store: that"
            " server removes expired sessions itself every cleanup_interval seconds.)"
        ) from None
    if not _atexit_registered:
        # An orderly exit fsyncs the last changes and releases the lock.
        atexit.register(close_store)
        _atexit_registered = True


def close_store() -> None:
    """Close the process's store (at shutdown, or between tests); the next use reopens it,
    with the settings in force then. Harmless if it is not open."""
    global _store
    with _lock:
        store, _store = _store, None
    if store is not None:
        store.close()


class SessionStore(SessionBase):  # type: ignore[misc]
    """Django's ``request.session``, kept in the walsess store.

    Behaves as Django documents for every backend (``cycle_key``, ``flush``,
    ``set_expiry``, ``save(must_create=True)`` raising ``CreateError``, ``save``
    of a session deleted meanwhile raising ``UpdateError``, ...), with the
    differences the module documentation lists. Nothing is looked up until the
    session is used.

    Example (outside a request, as Django's test client does)::

        s = SessionStore()
        s["cart"] = [1, 2]
        s.save()                         # creates the session: s.session_key is its token
        again = SessionStore(s.session_key)
        again["cart"].append(3)
        again.save()                     # one record: the new "cart"
    """

    def __init__(self, session_key: str | None = None) -> None:
        self._modified = False
        self._acknowledged: dict[str, bytes | None] = {}
        self._cycled = False
        super().__init__(session_key)

    # -- the data: a RequestSession -------------------------------------------------

    def _view(self) -> RequestSession | None:
        """The session data if this object has it already (no lookup)."""
        view: RequestSession | None = self.__dict__.get("_session_cache")
        return view

    def _get_session(self, no_load: bool = False) -> RequestSession:
        self.accessed = True
        view = self._view()
        if view is None:
            if self.session_key is None or no_load:
                view = RequestSession(get_store(), None)
            else:
                view = self.load()
            self._session_cache = view
        return view

    _session = property(_get_session)

    async def _aget_session(self, no_load: bool = False) -> RequestSession:
        if self._view() is not None or self.session_key is None or no_load:
            return self._get_session(no_load)
        self.accessed = True
        view: RequestSession = await self.aload()
        self._session_cache = view
        return view

    def load(self) -> RequestSession:
        """The stored session for ``session_key``, or an empty one (and ``session_key``
        None) if the store does not know it or its expiry has passed."""
        store = get_store()
        view = RequestSession(store, self.session_key)
        if view.exists:
            if _EXPIRY not in view or self._age(view[_EXPIRY]) > 0:
                self._session_key = view.token
                return view
            view.destroy()  # an absolute expiry that reads have slid past in the store
        self._session_key = None
        return RequestSession(store, None)

    # -- modified: also true for changes inside values --------------------------------

    @property
    def modified(self) -> bool:
        """True if the session must be saved: a key was set or deleted, or a value
        read from it changed inside (``session["cart"].append(3)``). Setting it
        to False acknowledges the changes made so far, as with Django's flag."""
        if self._modified:
            return True
        view = self._view()
        if view is None or not view.loaded:
            return False
        return view.changes() != self._acknowledged

    @modified.setter
    def modified(self, value: bool) -> None:
        self._modified = bool(value)
        if not value:
            view = self._view()
            self._acknowledged = view.changes() if view is not None and view.loaded else {}

    # -- Django's API ------------------------------------------------------------------

    def clear(self) -> None:
        """Remove every key (those this request saw; another request's new keys stay)."""
        self._session.clear()
        self.modified = True

    def is_empty(self) -> bool:
        if (
            django_conf.settings.SESSION_SAVE_EVERY_REQUEST
            and self._view() is None
            and self.session_key is not None
        ):
            # The middleware saves an untouched session when this says False,
            # and that save loads it anyway: load now, so that a cookie the
            # store does not know is deleted rather than given a new session.
            self._session_cache = self.load()
        return bool(super().is_empty())

    def exists(self, session_key: str | None) -> bool:
        """True if *session_key* names a live session (does not extend it)."""
        return session_key is not None and get_store().exists(session_key)

    def create(self) -> None:
        """Store a new session now, holding this object's current data, with a fresh
        token (one record). A session this object had is left as it is."""
        self._create()
        self.modified = True

    def save(self, must_create: bool = False) -> None:
        """Write what changed, as one record (none if nothing did), with the idle
        timeout ``get_expiry_age()``; create the session if there is none.

        :raises CreateError: *must_create* and the session already exists.
        :raises UpdateError: the session was deleted (a logout in another
            request) since this object loaded it; nothing is written.
        """
        if must_create:
            if self.session_key is not None and self.exists(self.session_key):
                raise CreateError
            self._create()
            return
        view = self._session
        if not view.exists:
            if self.session_key is not None:  # ours, and gone: don't resurrect it
                raise UpdateError
            if not view:  # Django's contract: save() stores even an empty session
                self._create()
                return
        age = self.get_expiry_age()
        if age <= 0:
            view.destroy()
            self._session_key = None
            return
        try:
            self._bind_user(view)
            out = view.commit(ttl=age)
        except SessionNotFound:
            raise UpdateError from None
        if out.interrupted:
            raise UpdateError
        self._session_key = view.token

    def delete(self, session_key: str | None = None) -> None:
        """Destroy the session named *session_key* (default: this one). A later
        :meth:`save` of this object then raises ``UpdateError``."""
        if session_key is None:
            session_key = self.session_key
            if session_key is None:
                return
        get_store().destroy(session_key)

    def cycle_key(self) -> None:
        """Give the session a new token now, keeping its data (one record); the old
        token is dead at once. A session not stored yet gets a fresh token when
        it is saved."""
        view = self._session
        handle = view.handle
        uid = view.get(_AUTH_USER)
        try:
            if handle is not None and uid is not None and str(uid) != handle.user:
                view.regenerate(user=str(uid))
            else:
                view.regenerate()
        except SessionNotFound:
            # Ended by another request (a logout) since this one loaded it:
            # start from an empty session rather than bring the old data back.
            self.flush()
            return
        self._session_key = view.token
        self._cycled = True
        self.modified = True

    def flush(self) -> None:
        """Destroy the session now and start an empty one with no key (logout)."""
        self._session.destroy()
        self._session_key = None
        self.modified = True

    async def acycle_key(self) -> None:
        await sync_to_async(self.cycle_key)()

    async def aflush(self) -> None:
        await sync_to_async(self.flush)()

    @classmethod
    def clear_expired(cls) -> None:
        """Remove expired sessions (``manage.py clearsessions``): the store's gc."""
        get_store().gc()

    # -- expiry on the store's clock ----------------------------------------------------

    def set_expiry(self, value: int | datetime | timedelta | None) -> None:
        if isinstance(value, timedelta):
            value = self._now() + value
        super().set_expiry(value)

    def get_expiry_age(self, **kwargs: Any) -> int:
        if "expiry" not in kwargs:
            kwargs["expiry"] = self.get(_EXPIRY)
        if "modification" not in kwargs:
            # Only an expiry at a fixed time needs the clock (the common case doesn't).
            fixed = isinstance(kwargs["expiry"], (datetime, str))
            kwargs["modification"] = self._now() if fixed else None
        return int(super().get_expiry_age(**kwargs))

    def get_expiry_date(self, **kwargs: Any) -> datetime:
        kwargs.setdefault("modification", self._now())
        date: datetime = super().get_expiry_date(**kwargs)
        return date

    async def aset_expiry(self, value: int | datetime | timedelta | None) -> None:
        if isinstance(value, timedelta):
            value = self._now() + value
        await super().aset_expiry(value)

    async def aget_expiry_age(self, **kwargs: Any) -> int:
        kwargs.setdefault("modification", self._now())
        return int(await super().aget_expiry_age(**kwargs))

    async def aget_expiry_date(self, **kwargs: Any) -> datetime:
        kwargs.setdefault("modification", self._now())
        date: datetime = await super().aget_expiry_date(**kwargs)
        return date

    @staticmethod
    def _now() -> datetime:
        """The store's clock as ``django.utils.timezone.now()`` would give it."""
        t = get_store().now()
        return datetime.fromtimestamp(t, tz=timezone.utc if django_conf.settings.USE_TZ else None)

    def _age(self, expiry: Any) -> int:
        return self.get_expiry_age(expiry=expiry)

    # -- helpers -------------------------------------------------------------------------

    def _create(self) -> None:
        store = get_store()
        data = dict(self._get_session(no_load=True))
        age = self.get_expiry_age()
        if age <= 0:  # already expired: nothing to keep
            self._session_cache = RequestSession(store, None)
            self._session_key = None
            return
        uid = data.get(_AUTH_USER)
        user = None if uid is None else str(uid)
        handle = store.create(data, ttl=age, user=user)
        self._session_cache = RequestSession(store, handle.id)
        self._session_key = handle.id

    def _bind_user(self, view: RequestSession) -> None:
        """Make the logged-in user the owner of a session being created, or of one
        whose key was cycled in this request (login)."""
        if _AUTH_USER not in view:
            return
        uid = str(view[_AUTH_USER])
        handle = view.handle
        if handle is None or (self._cycled and handle.user != uid):
            view.regenerate(user=uid)


if django_conf.settings.configured and (
    getattr(django_conf.settings, "SESSION_ENGINE", None) == __name__
):
    # Django imports SESSION_ENGINE while it builds the middleware chain (at
    # WSGI/ASGI application creation): opening here makes a store that cannot
    # be opened fail start-up, not the first request.
    get_store()
