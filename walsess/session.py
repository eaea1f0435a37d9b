"""The :class:`Session` handle that applications hold for one session.

A handle is a ``MutableMapping[str, Any]`` view of one session in a store.
Every change through it is one log record, written before it is applied;
reads decode a fresh copy of the stored bytes. A handle dies with its
session: once the session is destroyed, regenerated (for the old token) or
expired, every use raises :class:`SessionNotFound`.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Iterator, Mapping, MutableMapping
from dataclasses import dataclass
from typing import Any, Protocol

from .errors import SessionNotFound, ValidationError
from .table import SessionState
from .tokens import ref_of

__all__ = [
    "MISSING",
    "LiveSession",
    "Session",
    "SessionAttributes",
    "SessionBackend",
    "SessionInfo",
    "pairs_of",
]

#: "No value": as a value in :meth:`SessionBackend.modify`'s items it deletes
#: the key; as the default of ``Store.regenerate(user=)`` it keeps the owner.
MISSING: Any = object()


def pairs_of(data: object) -> list[tuple[Any, Any]]:
    """The (key, value) pairs of a mapping or of an iterable of pairs, or
    :class:`ValidationError` for anything else (nothing is written)."""
    if isinstance(data, Mapping):
        return list(data.items())
    if isinstance(data, (str, bytes)) or not isinstance(data, Iterable):
        raise ValidationError(
            f"expected a mapping or (key, value) pairs, not {type(data).__name__}"
        )
    pairs = list(data)
    for pair in pairs:
        if not isinstance(pair, (tuple, list)) or len(pair) != 2:
            raise ValidationError(f"expected (key, value) pairs, got {type(pair).__name__}")
    return pairs


@dataclass(frozen=True)
class SessionInfo:
    """A read-only description of a session, safe to list and log: never the token.

    ``data`` is filled only for destroy hooks (the session's last data).
    """

    ref: str
    user: str | None
    meta: dict[str, Any] | None
    created_at: float
    expires_at: float
    last_seen: float
    data: dict[str, Any] | None = None


class SessionBackend(Protocol):
    """What a :class:`Session` needs from its store: all it ever touches.

    :class:`~walsess.store.Store` implements it. *state* and *digest* are
    what the handle holds: the session's table entry and the digest of the
    token it was found by; every call checks the session still belongs to
    that digest and is live, else raises :class:`SessionNotFound` (or the
    closed store's error). Changes are validated, logged and applied as one
    record each, under the store lock. The state, digest and change
    arguments are positional.

    ``clock``, ``closed``, ``decode`` and ``decode_all`` are plain
    attributes on the store, not methods or properties: a read through a
    handle uses them directly, without an extra Python call.
    """

    @property
    def clock(self) -> Callable[[], float]:
        """The store's clock (seconds since the epoch)."""

    @property
    def closed(self) -> bool:
        """True once the store is closed (or unusable in a forked child)."""

    @property
    def decode(self) -> Callable[[bytes], Any]:
        """Decode one stored value with the store's codec."""

    @property
    def decode_all(self) -> Callable[[Mapping[str, bytes]], dict[str, Any]]:
        """Decode a whole key -> stored bytes mapping."""

    def live_state(self, state: SessionState, digest: bytes, /) -> SessionState:
        """*state* if it still belongs to *digest* and is live, else raise."""

    def set_key(self, state: SessionState, digest: bytes, key: str, value: Any, /) -> None:
        """Set one key: one record."""

    def modify(
        self,
        state: SessionState,
        digest: bytes,
        clear: bool,
        items: Iterable[tuple[Any, Any]],
        /,
        must_exist: str | None = None,
    ) -> None:
        """Clear first if *clear*, then set each key (delete it for :data:`MISSING`):
        one record. :class:`KeyError` if *must_exist* is given and absent."""

    def modify_encoded(
        self,
        state: SessionState,
        digest: bytes,
        clear: bool,
        changes: list[tuple[str, bytes | None]],
        /,
        must_exist: str | None = None,
    ) -> None:
        """Set each key to already-encoded bytes, or delete it (None): one record."""


class LiveSession(Protocol):
    """What a handle reads a session's attributes and keys from: the session
    as it is now (the table's :class:`~walsess.table.SessionState`, or the
    fields a :class:`~walsess.RedisStore` read)."""

    @property
    def created_at(self) -> float: ...
    @property
    def ttl(self) -> float: ...
    @property
    def user(self) -> str | None: ...
    @property
    def meta(self) -> bytes | None: ...
    @property
    def expires_at(self) -> float: ...
    @property
    def data(self) -> Mapping[str, bytes]: ...


class SessionAttributes(MutableMapping[str, Any]):
    """The part every session handle shares (:class:`Session` and
    :class:`walsess.RedisSession`): its attributes, length, keys and repr, each
    read from the handle's :meth:`_live`, which raises
    :class:`SessionNotFound` once the session is gone. A handle adds the reads
    and writes of its store.
    """

    __slots__ = ()

    _digest: bytes

    def _live(self) -> LiveSession:
        """The session now, or :class:`SessionNotFound` if it is gone."""
        raise NotImplementedError

    @property
    def ref(self) -> str:
        """A non-secret name for this session, safe to show and log (16 hex characters)."""
        return ref_of(self._digest)

    @property
    def created_at(self) -> float:
        return self._live().created_at

    @property
    def expires_at(self) -> float:
        """When the session expires unless it is read before then (idle timeout)."""
        return self._live().expires_at

    @property
    def ttl(self) -> float:
        """The idle timeout in seconds."""
        return self._live().ttl

    @property
    def user(self) -> str | None:
        return self._live().user

    @property
    def meta(self) -> dict[str, Any] | None:
        """Metadata fixed at creation (for example the client's IP and agent)."""
        raw = self._live().meta
        return None if raw is None else dict(json.loads(raw))

    def __len__(self) -> int:
        return len(self._live().data)

    def __iter__(self) -> Iterator[str]:
        return iter(list(self._live().data))

    def __repr__(self) -> str:
        name = f"walsess.{type(self).__name__}"
        try:
            return f"<{name} ref={self.ref} keys={sorted(self._live().data)}>"
        except SessionNotFound:
            return f"<{name} ref={self.ref} (gone)>"
        except Exception:
            return f"<{name} ref={self.ref}>"

    __hash__ = None  # type: ignore[assignment]  # mutable mapping


class Session(SessionAttributes):
    """One session's data and attributes.

    Example::

        s = store.create({"user_id": 42})
        s["cart"] = [1, 2]          # one MODIFY record
        s.update(a=1, b=2)          # one record: both or neither, also across a crash
        token = s.id                # give this to the client (e.g. in a cookie)

    Cost: a read is a dict lookup plus a decode; a change is one record write.
    """

    __slots__ = ("_digest", "_state", "_store", "id")

    def __init__(
        self,
        store: SessionBackend,
        state: SessionState,
        token: str,
        digest: bytes | None = None,
    ) -> None:
        self._store = store
        self._state = state
        # The digest the token was found by: if the session was regenerated
        # since, the handle is already dead rather than bound to the new token.
        self._digest = state.digest if digest is None else digest
        #: The token: the secret the client presents. Never stored on disk.
        self.id = token

    def _live(self) -> SessionState:
        st = self._state
        store = self._store
        now = store.clock()
        if (
            st.digest is not self._digest
            or store.closed
            or not (now < st.idle_deadline and now < st.hard_deadline)
        ):
            return store.live_state(st, self._digest)  # raises the right error
        return st

    # -- mapping ------------------------------------------------------------

    def __getitem__(self, key: str) -> Any:
        data = self._live().data
        try:
            raw = data[key]
        except TypeError:  # an unhashable key: not one of this session's str keys
            raise KeyError(key) from None
        return self._store.decode(raw)

    def get(self, key: str, default: Any = None) -> Any:
        if not isinstance(key, str):  # not one of this session's keys (maybe unhashable)
            return default
        raw = self._live().data.get(key)
        return default if raw is None else self._store.decode(raw)

    def __contains__(self, key: object) -> bool:
        return isinstance(key, str) and key in self._live().data

    def __setitem__(self, key: str, value: Any) -> None:
        self._store.set_key(self._state, self._digest, key, value)

    def __delitem__(self, key: str) -> None:
        self._store.modify(self._state, self._digest, False, ((key, MISSING),), must_exist=key)

    def update(self, other: Any = (), /, **kwargs: Any) -> None:
        """Set several keys in one record: all of them, or (on any error) none."""
        items = pairs_of(other)
        items.extend(kwargs.items())
        self._store.modify(self._state, self._digest, False, items)

    def clear(self) -> None:
        """Remove every key, as one record."""
        self._store.modify(self._state, self._digest, True, ())

    def replace(self, data: Mapping[str, Any] | Iterable[tuple[str, Any]]) -> None:
        """Make the data exactly *data*, as one record (clear, then set each key)."""
        self._store.modify(self._state, self._digest, True, pairs_of(data))

    def encoded(self) -> dict[str, bytes]:
        """Every key's stored bytes (its value as the store's codec encoded it),
        read at one moment: a copy. With :meth:`write_encoded`, what a
        request-scoped view uses to save only what changed (see
        :mod:`walsess.request`). O(keys), no decoding."""
        return self._live().data.copy()

    def write_encoded(self, changes: Mapping[str, bytes | None]) -> None:
        """Set each key to already-encoded bytes, or delete it (``None``), in one record.

        The bytes must come from ``store.codec.encode``; sizes and keys are
        checked as for any write. Deleting an absent key is not an error.
        """
        if not isinstance(changes, Mapping):
            raise ValidationError(f"changes must be a mapping, not {type(changes).__name__}")
        self._store.modify_encoded(self._state, self._digest, False, list(changes.items()))

    def to_dict(self) -> dict[str, Any]:
        """A decoded copy of all keys, read at one moment."""
        # A copy (one C call), so a writer in another thread cannot change the
        # dict while it is decoded.
        return self._store.decode_all(self._live().data.copy())

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Session):
            return self._state is other._state and self._digest == other._digest
        return super().__eq__(other)
