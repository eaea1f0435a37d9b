"""One request's view of its session: loaded on first use, saved as a diff.

This is the one place where web frameworks meet the store. Each integration
(:mod:`walsess.flask`, :mod:`walsess.starlette`, :mod:`walsess.django`) is a
thin adapter that makes a :class:`RequestSession` from the request's cookie,
hands it to the application as the framework's session object, calls
:meth:`RequestSession.commit` when the response is ready, and sets or deletes
the cookie as the returned :class:`Outcome` says. Everything a session
backend can get wrong lives here instead, once:

- **Lazy.** Nothing is looked up until the application touches the session;
  a request that never does costs nothing and writes nothing.
- **No lost updates.** The view remembers the encoded bytes each key had when
  it was loaded; :meth:`~RequestSession.commit` writes only the keys whose
  encoding differs now, plus deletions, as one atomic record. Two overlapping
  requests that change different keys both keep their change; ``clear()``
  deletes only the keys this request saw.
- **Nested changes are saved.** ``session["cart"].append(3)`` needs no
  ``modified`` flag: every value the request read is encoded again at commit
  and compared with the bytes it was loaded from. Values never read are not
  decoded, let alone encoded.
- **Nothing for nothing.** A request that changes nothing writes no record
  (beyond the store's rate-limited expiry extension); one that stores nothing
  in a new session creates none and sets no cookie, so bots and health checks
  do not fill the store.
- **No fixation.** A token the store does not know (unknown, expired,
  malformed) is never adopted: data stored under it goes to a new session
  with a fresh token. :meth:`~RequestSession.regenerate` (login) changes the
  token and keeps the data; :meth:`~RequestSession.destroy` (logout) removes
  the session and tells the adapter to delete the cookie.

The view needs of its store only the public API (``get``, ``create``,
``regenerate``, ``destroy``, ``touch``, ``wait_synced``, ``codec`` and the
:class:`~walsess.Session` methods ``encoded`` and ``write_encoded``): the
:class:`~walsess.protocol.SessionStore` protocol, which both
:class:`walsess.Store` and :class:`walsess.RedisStore` meet, so either stands
behind every integration.

Cost: loading is one ``store.get`` plus a dict copy; committing encodes only
the values the request read or set. A request that reads one small key costs
a few microseconds of CPU above the lookup.

Example::

    view = RequestSession(store, request.cookies.get("session"))
    view["cart"] = [*view.get("cart", []), 42]       # the application's code
    out = view.commit(ttl=3600)
    if out.action is Action.SET:
        response.set_cookie("session", out.token, max_age=out.max_age)
    elif out.action is Action.DELETE:
        response.delete_cookie("session")
"""

from __future__ import annotations

import enum
import logging
import re
from collections.abc import Callable, Iterator, Mapping, MutableMapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .errors import SessionNotFound, ValidationError
from .session import MISSING

if TYPE_CHECKING:
    from .protocol import SessionHandle, SessionStore

__all__ = ["KEEP", "Action", "Outcome", "RequestSession", "cookie_finder"]

log = logging.getLogger("walsess")

#: "No user given" to regenerate: keep the owner. The same object as
#: Store.regenerate's default, so it is passed through as it is.
KEEP: Any = MISSING
#: A key loaded from the store whose value this request has not decoded yet.
_UNREAD: Any = object()


class Action(enum.Enum):
    """What the adapter must do with the session cookie."""

    #: Leave the cookie as the client has it (or send none).
    NONE = "none"
    #: Send the cookie with :attr:`Outcome.token`.
    SET = "set"
    #: Delete the client's cookie.
    DELETE = "delete"


@dataclass(frozen=True)
class Outcome:
    """The result of :meth:`RequestSession.commit`: what to do with the cookie.

    ``max_age`` is the seconds until the session expires (for a persistent
    cookie's Max-Age); ``interrupted`` is True when another request destroyed
    the session while this one ran, and this request's changes were dropped
    rather than bring a logged-out session back.
    """

    action: Action
    token: str | None = None
    expires_at: float | None = None
    max_age: int | None = None
    interrupted: bool = False


_NOTHING = Outcome(Action.NONE)


def cookie_finder(name: str) -> Callable[[str], list[str]]:
    """A function giving the values of every cookie called *name* in a ``Cookie``
    header, in order, stripped and unquoted (no other cookie is parsed).

    Adapters use it instead of their framework's full cookie parser, which costs
    several microseconds a request for cookies the session never needs.

    >>> cookie_finder("session")('a=1; session=tok; b=2; session="x"')
    ['tok', 'x']
    """
    find = re.compile(r"(?:^|;)\s*" + re.escape(name) + r"\s*=\s*([^;]*?)\s*(?=;|$)").findall

    def values(header: str) -> list[str]:
        found: list[str] = find(header)
        # A quoted value is unquoted, as cookie parsers do; a token needs no escapes.
        return [v[1:-1] if len(v) > 1 and v[0] == v[-1] == '"' else v for v in found]

    return values


class RequestSession(MutableMapping[str, Any]):
    """A request-scoped, lazily loaded session mapping that commits a diff.

    Not thread-safe: one request, one thread (or one task) at a time.

    :param store: a :class:`walsess.Store`, a :class:`walsess.RedisStore`, or any
        :class:`~walsess.protocol.SessionStore`.
    :param token: the token the client sent (its cookie), or None. Anything
        the store does not know as a live session is treated as no session.
    :param meta: called once, when this request creates a session, for the
        session's metadata (for example the client's user agent and IP).
    """

    __slots__ = (
        "_data",
        "_destroyed",
        "_handle",
        "_loaded",
        "_meta",
        "_raw",
        "_regenerated",
        "_store",
        "_token",
        "_user",
    )

    def __init__(
        self,
        store: SessionStore,
        token: str | None,
        *,
        meta: Callable[[], Mapping[str, Any] | None] | None = None,
    ) -> None:
        self._store = store
        self._token = token
        self._meta = meta
        self._loaded = False
        self._handle: SessionHandle | None = None
        self._raw: dict[str, bytes] = {}
        self._data: dict[str, Any] = {}
        self._regenerated = False
        self._destroyed = False
        self._user: Any = KEEP

    # -- loading ------------------------------------------------------------------

    def _load(self) -> dict[str, Any]:
        if not self._loaded:
            self._loaded = True
            token = self._token
            # wait=False: in "always" mode a TOUCH's fsync is waited for at
            # commit, which an event loop runs in a thread.
            handle = None if not token else self._store.get(token, wait=False)
            if handle is not None:
                try:
                    self._raw = handle.encoded()
                except SessionNotFound:  # destroyed between the lookup and the copy
                    handle = None
            self._handle = handle
            self._data = dict.fromkeys(self._raw, _UNREAD)
        return self._data

    @property
    def store(self) -> SessionStore:
        """The store this view reads and writes."""
        return self._store

    @property
    def loaded(self) -> bool:
        """True once the application touched the session (and it was looked up)."""
        return self._loaded

    @property
    def exists(self) -> bool:
        """True if the request has a live stored session (looks it up if needed)."""
        self._load()
        return self._handle is not None

    @property
    def token(self) -> str | None:
        """The live session's token, or None if there is none (yet). After a
        :meth:`regenerate` this is the new token."""
        self._load()
        return None if self._handle is None else self._handle.id

    @property
    def handle(self) -> SessionHandle | None:
        """The store's :class:`~walsess.Session` behind this view, or None if
        the request has no live stored session (yet)."""
        self._load()
        return self._handle

    # -- mapping ------------------------------------------------------------------

    def __getitem__(self, key: str) -> Any:
        data = self._load()
        value = data[key]
        if value is _UNREAD:
            value = data[key] = self._store.codec.decode(self._raw[key])
        return value

    def __setitem__(self, key: str, value: Any) -> None:
        self._load()[key] = value

    def __delitem__(self, key: str) -> None:
        del self._load()[key]

    def __iter__(self) -> Iterator[str]:
        return iter(list(self._load()))

    def __len__(self) -> int:
        return len(self._load())

    def __contains__(self, key: object) -> bool:
        return key in self._load()

    def get(self, key: str, default: Any = None) -> Any:
        # Mapping.get goes through __getitem__ and a KeyError for a missing key:
        # this is the path of every "is the user logged in?" check.
        data = self._load()
        if key not in data:
            return default
        return self[key]

    def clear(self) -> None:
        """Remove every key this request sees (one dict operation, no decoding)."""
        self._load().clear()

    def __repr__(self) -> str:
        if not self._loaded:
            return "<walsess.RequestSession (not loaded)>"
        return f"<walsess.RequestSession keys={sorted(self._data)}>"

    # -- login and logout -------------------------------------------------------------

    def regenerate(self, *, user: Any = KEEP) -> None:
        """Give the session a new token now, keeping its data (call it at login).

        The old token stops working at once. With *user* (a str, or None), the
        session is also given that owner, so it is listed and revoked with the
        user's other sessions (:meth:`Store.sessions_of`). If the request has no
        stored session yet, the one :meth:`commit` creates gets a fresh token
        and *user* anyway.
        """
        self._load()
        if user is not KEEP:
            self._user = user
        handle = self._handle
        if handle is not None:
            self._handle = self._store.regenerate(handle.id, user=user)
        self._regenerated = True

    def destroy(self) -> None:
        """Destroy the stored session now and empty this view (call it at logout).

        The cookie is deleted at commit, unless the request stores something
        afterwards, which then goes to a brand-new session with a new token.
        """
        self._load()
        handle = self._handle
        if handle is not None:
            self._store.destroy(handle.id)
        self._handle = None
        self._raw = {}
        self._data = {}
        self._destroyed = True

    # -- committing -------------------------------------------------------------------

    def changes(self) -> dict[str, bytes | None]:
        """What :meth:`commit` would write: key -> new encoded bytes, or None to delete.

        Encodes every value the request read or set (a nested change shows as
        different bytes); keys it never read are skipped. Raises the store's
        validation errors for values that cannot be stored.
        """
        if not self._loaded:
            return {}
        encode = self._store.codec.encode
        raw = self._raw
        out: dict[str, bytes | None] = {}
        for key, value in self._data.items():
            if value is _UNREAD:
                continue
            try:
                vb = encode(value)
            except ValidationError as exc:
                raise type(exc)(f"session key {key!r}: {exc}") from exc
            if raw.get(key) != vb:
                out[key] = vb
        data = self._data
        for key in raw:
            if key not in data:
                out[key] = None
        return out

    def commit(self, *, ttl: float | None = None, refresh: bool = False) -> Outcome:
        """Write what the request changed, as one record, and say what to do with the cookie.

        :param ttl: the idle timeout the session must have (the framework's
            session lifetime); None keeps the session's own (or, for a new
            session, the store's ``default_ttl``). A change is logged once.
        :param refresh: send the cookie again even if the token did not change
            (a persistent cookie whose Max-Age follows the sliding expiry).

        In ``"always"`` durability mode this waits for an fsync: call it from a
        thread in async code.
        """
        if not self._loaded:
            return _NOTHING
        store = self._store
        handle = self._handle
        if handle is None:
            if not self._data:
                # Logged out: delete the cookie, if the client sent one.
                return Outcome(Action.DELETE) if self._destroyed and self._token else _NOTHING
            # A new session: never under the client's token (no fixation).
            meta = None if self._meta is None else self._meta()
            user = None if self._user is KEEP else self._user
            # With no stored session the view holds no unread (still encoded) values.
            handle = store.create(dict(self._data), ttl=ttl, user=user, meta=meta)
            self._handle = handle
            self._raw = handle.encoded()  # the view now equals the stored session
            self._data = dict.fromkeys(self._raw, _UNREAD)
            self._destroyed = False
            return self._cookie(handle)
        changes = self.changes()
        try:
            retimed = ttl is not None and ttl != handle.ttl
            if changes:
                handle.write_encoded(changes)
            if retimed:
                store.touch(handle.id, ttl)
            cookie = self._cookie(handle) if self._regenerated or retimed or refresh else _NOTHING
        except SessionNotFound:
            # Another request destroyed it (a logout elsewhere): writing now
            # would bring back a session its user ended.
            log.warning(
                "walsess: session %s ended while a request changed it; its changes are dropped",
                handle.ref,
            )
            self._handle = None
            self._raw = {}
            self._data = {}  # so that a second commit cannot bring it back either
            return Outcome(Action.DELETE, interrupted=True)
        store.wait_synced()
        raw = self._raw
        for key, vb in changes.items():  # the view now equals what it wrote
            if vb is None:
                del raw[key]
            else:
                raw[key] = vb
        return cookie

    def _cookie(self, handle: SessionHandle) -> Outcome:
        expires_at = handle.expires_at
        now = self._store.now()
        return Outcome(
            Action.SET,
            token=handle.id,
            expires_at=expires_at,
            max_age=max(0, round(expires_at - now)),
        )
