"""What the framework integrations need of a store: a small protocol both stores meet.

:class:`walsess.request.RequestSession`, and through it :mod:`walsess.flask`,
:mod:`walsess.starlette` and :mod:`walsess.django`, use a store only through
:class:`SessionStore` and the handles it returns only through
:class:`SessionHandle`. :class:`walsess.Store` (one process) and
:class:`walsess.RedisStore` (any number of processes) both satisfy them, so
every integration works on either unchanged; mypy checks both conform
(see the end of :mod:`walsess.store` and :mod:`walsess.redis_store`).

Example::

    def install(app, store: walsess.protocol.SessionStore) -> None:
        walsess.flask.init_app(app, store)     # a Store or a RedisStore
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any, Protocol

from .codec import Codec
from .session import SessionInfo

__all__ = ["SessionHandle", "SessionStore"]


class SessionHandle(Protocol):
    """One session, as :meth:`SessionStore.get` and :meth:`SessionStore.create` return
    it (a :class:`walsess.Session` or a :class:`walsess.RedisSession`)."""

    #: The token, the secret the client holds (its cookie).
    id: str

    @property
    def ref(self) -> str:
        """The session's public, non-secret name."""

    @property
    def ttl(self) -> float:
        """The idle timeout in seconds; raises SessionNotFound once the session is gone."""

    @property
    def expires_at(self) -> float:
        """When the session expires unless read before then."""

    @property
    def user(self) -> str | None:
        """The owner."""

    def encoded(self) -> dict[str, bytes]:
        """Every key's stored bytes, read at one moment."""

    def write_encoded(self, changes: Mapping[str, bytes | None], /) -> None:
        """Set each key to encoded bytes, or delete it (None), as one change."""


class SessionStore(Protocol):
    """A store as the integrations use it: :class:`walsess.Store` or :class:`walsess.RedisStore`.

    ``codec``, ``default_ttl`` and ``durability`` are read as attributes.
    ``durability == "always"`` tells an async integration that changes wait
    for an fsync (so they run in a worker thread); a RedisStore's is
    ``"redis"``.
    """

    @property
    def codec(self) -> Codec:
        """How values become the stored bytes."""

    @property
    def default_ttl(self) -> float:
        """The idle timeout of new sessions, in seconds."""

    @property
    def durability(self) -> str:
        """``"always"``, ``"interval"``, ``"never"`` or ``"redis"``."""

    def ping(self) -> None:
        """Raise now if the store cannot be used (closed, forked, server down)."""

    def now(self) -> float:
        """The store's clock, seconds since the epoch."""

    def get(self, token: str, *, wait: bool = True) -> SessionHandle | None:
        """The live session of *token*, extending its idle deadline; None if none."""

    def exists(self, token: str) -> bool:
        """True if *token* names a live session (no extension)."""

    def create(
        self,
        data: Mapping[str, Any] | None = None,
        *,
        ttl: float | None = None,
        max_lifetime: float | None = None,
        user: str | None = None,
        meta: Mapping[str, Any] | None = None,
    ) -> SessionHandle:
        """A new session with a fresh token."""

    def regenerate(self, token: str, *, user: Any = ...) -> SessionHandle:
        """The session under a new token (the old one dead), maybe with a new owner."""

    def destroy(self, token: str) -> bool:
        """Destroy the session; True if it was live."""

    def touch(self, token: str, ttl: float | None = None) -> bool:
        """Extend the idle deadline to now + *ttl* (default: the session's own)."""

    def wait_synced(self) -> None:
        """Block until the changes made so far are as durable as the store makes them."""

    def gc(self) -> int:
        """Remove expired sessions; how many."""

    def sessions_of(self, user: str) -> list[SessionInfo]:
        """The live sessions of *user*, oldest first."""

    def destroy_user(self, user: str, keep: Iterable[str] = ()) -> int:
        """Destroy *user*'s sessions but those in *keep*; how many."""

    def close(self) -> None:
        """Release the store."""
