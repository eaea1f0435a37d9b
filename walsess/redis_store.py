"""The :class:`RedisStore`: the Store and Session API of walsess, on a Redis server or cluster.

An embedded :class:`walsess.Store` serves one process. When an application
runs several worker processes, or several machines, :class:`RedisStore`
gives it the same API and the same semantics on a shared Redis (single
server, Sentinel-managed master, or Redis Cluster), through redis-py
(``pip install walsess[redis]``). Tokens, digests and refs are those of
:mod:`walsess.tokens`; values are encoded by the same codec (JSON by
default); inputs are checked by the same functions (:mod:`walsess.validate`).

Example::

    store = walsess.RedisStore.from_url("redis://localhost:6379/0", default_ttl=3600)
    s = store.create({"user_id": 42}, user="42")
    s["cart"] = [1, 2]                      # one Lua script: checked, then HSET
    same = store.get(s.id)                  # None once expired or destroyed

**What Redis holds.** One hash per session, under
``{prefix}:s:{XY}:{ref}`` where ``ref`` is the session's public ref and
``XY`` its first two hex digits, in braces: the Redis Cluster hash tag. The
hash holds the token's SHA-256 digest (never the token), the creation time,
the idle timeout, the idle and absolute deadlines, the owner and the
metadata (fields starting with ``#``), and the data (one field per key,
``.`` followed by the key, holding the codec's bytes). A session with an
owner is also listed in the owner's index, a sorted set
``{prefix}:u:{user}`` of refs scored by expiry.

**Expiry.** Deadlines are judged by the store's ``clock`` (inject a
:class:`walsess.ManualClock` in tests), in every script, so a session is
dead at exactly the moment the embedded store says. Each session key also
carries a Redis TTL (``PEXPIRE``) to ``min(idle, absolute)`` deadline, so
Redis frees what nobody reads again. A read extends the idle deadline only
once it would move by ``min(touch_granularity, ttl / 10)``: most reads write
nothing, and a session may expire up to that much before ``last read +
ttl``, never later (as the embedded store after a restart).

**What is atomic.** Every change to one session (create, per-key set,
``update``, ``clear``, ``touch``, ``destroy``, ``regenerate``, ``put_state``)
is one Lua script, applied whole or not at all. ``regenerate`` renames the
session's key in one script: the old token is dead and the new one live at
the same instant. On a single server (or Sentinel master) the same script
also updates the owner's index. In a cluster the owner's index lives on
another node, so it is updated by a separate command: added to *before*
the session exists, removed from *after* it is gone, so the index always
lists at least every live session of its user (listings check each entry
and prune the dead ones; :meth:`RedisStore.gc` prunes the rest). Operations
over many sessions (``destroy_user``, ``sessions``, ``gc``) are not atomic as
a whole on any deployment: each session is handled atomically, and a
session created while they run may be missed, as with the embedded store.

**Regenerate in a cluster.** ``RENAME`` needs both keys on one node, so in
a cluster the new token is drawn until its ref starts with the old ref's
two hex digits (the hash tag): about 256 draws, under a millisecond. Such a
token is drawn from 264 bits (44 characters), so that 256 bits of entropy
remain once its digest's first byte is fixed
(:func:`walsess.tokens.new_token_tagged`). Sessions are spread over 256
hash tags, enough for a cluster of dozens of masters.

**Destroy hooks.** :meth:`RedisStore.on_destroy` hooks run in the process
that destroyed, regenerated or revoked the session, or that removed it in
:meth:`RedisStore.gc`, with its last data. Sessions that Redis itself
expires are reported only through keyspace notifications
(:meth:`RedisStore.watch_expiry`), with limits: the server must have
``notify-keyspace-events`` including ``Ex``; Redis sends the event when it
removes the key (on access or by its active expiry cycle, so up to seconds
late, not at the deadline); it is delivered only to subscribers connected at
that moment (an event while no process listens is lost; with several
listening processes, each gets it); and the key is gone, so the hook's
:class:`~walsess.SessionInfo` has only the ref (``user``, ``meta`` and
``data`` None, the times NaN).

**Errors.** A connection failure raises :class:`walsess.RedisUnavailable`
(a :class:`walsess.StorageError`) naming the server's address (for a
Sentinel client, the service and its Sentinels); another error from Redis
raises :class:`walsess.StorageError`.

**Cost.** ``get`` is one SHA-256 and one round trip (a script that checks,
maybe extends and returns the session); a per-key set, ``update`` or
``clear`` one round trip (``EVALSHA``); a handle's read one round trip
(``HMGET`` or ``HGETALL``). ``sessions()``, ``len()``, ``stats()`` and
``gc()`` scan every session key: O(n), for tools and cron jobs.
"""

from __future__ import annotations

import contextlib
import logging
import math
import re
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import TYPE_CHECKING, Any, NamedTuple

import redis
import redis.cluster
import redis.exceptions
import redis.sentinel

from . import record as rec
from . import tokens
from .codec import JSON, Codec, decoder_of_all
from .errors import (
    RedisUnavailable,
    SessionNotFound,
    StorageError,
    StoreClosed,
    ValidationError,
)
from .options import NAMES, Options, check_positive, short_repr
from .session import MISSING, SessionAttributes, SessionInfo, pairs_of
from .validate import (
    check_data,
    check_user,
    encode_items,
    encode_meta,
    kept_ref_keys,
    too_large,
    too_many_changes,
    too_many_keys,
)

if TYPE_CHECKING:
    from redis.commands.core import Script

    from .protocol import SessionStore

__all__ = ["SETTINGS", "RedisSession", "RedisStore"]

log = logging.getLogger("walsess")

Hook = Callable[[SessionInfo, str], object]

#: The settings of :class:`walsess.Options` that mean something for a RedisStore;
#: the others (durability, compaction, cleanup thread, max_sessions, fs) are about
#: the embedded store's files and are refused.
SETTINGS = ("default_ttl", "max_lifetime", "touch_granularity", "codec", "max_value_bytes", "clock")

_DEFAULTS = Options()
_PREFIX = re.compile(r"[A-Za-z0-9_.-]{1,64}")

# Hash fields: the session's attributes start with "#", its data keys with ".".
_DIGEST, _CREATED, _TTL, _IDLE, _HARD, _USER, _META = (
    b"#d", b"#c", b"#t", b"#i", b"#h", b"#u", b"#m",
)  # fmt: skip
_DATA = b"."
_ATTRS = [_DIGEST, _CREATED, _TTL, _IDLE, _HARD, _USER, _META]

# Helpers every script starts with. A deadline is a float written by repr() (or
# "%.17g"), or "inf" for no absolute lifetime. A session is alive at ARGV's now
# when its key holds the expected digest ("" matches any: revoke by ref) and
# now is before both deadlines.
_LUA_PRELUDE = """
local function deadline(v)
  if v == 'inf' then return math.huge end
  return tonumber(v)
end
local function check(d, i, h, t, u, digest, now)
  if not d or (digest ~= '' and d ~= digest) then return nil end
  local idle, hard = deadline(i), deadline(h)
  if not (now < idle and now < hard) then return nil end
  return {idle, hard, tonumber(t), u}
end
local function alive(key, digest, now)
  local f = redis.call('HMGET', key, '#d', '#i', '#h', '#t', '#u')
  return check(f[1], f[2], f[3], f[4], f[5], digest, now)
end
local function expire(key, at, now)
  redis.call('PEXPIRE', key, math.max(1, math.ceil((at - now) * 1000)))
end
local function hset_from(key, args, first)
  local i, n = first, #args
  while i <= n do
    local j = math.min(i + 999, n)
    redis.call('HSET', key, unpack(args, i, j))
    i = j + 1
  end
end
local function data_count(key)
  return redis.call('HLEN', key) - 5 - redis.call('HEXISTS', key, '#u')
    - redis.call('HEXISTS', key, '#m')
end
"""

# KEYS[1] session. ARGV: now, expiry deadline, ref, index key ("" in a cluster:
# the client adds it), then field, value pairs. 0 if the ref is taken.
_CREATE = """
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
hset_from(KEYS[1], ARGV, 5)
expire(KEYS[1], tonumber(ARGV[2]), tonumber(ARGV[1]))
if ARGV[4] ~= '' then redis.call('ZADD', ARGV[4], ARGV[2], ARGV[3]) end
return 1
"""

# put_state: as _CREATE, but replaces whatever the key holds (idempotent).
_PUT = """
redis.call('DEL', KEYS[1])
hset_from(KEYS[1], ARGV, 5)
expire(KEYS[1], tonumber(ARGV[2]), tonumber(ARGV[1]))
if ARGV[4] ~= '' then redis.call('ZADD', ARGV[4], ARGV[2], ARGV[3]) end
return 1
"""

# ARGV: digest, now, granularity. False if not alive, else the data fields
# and their values, flat: only those, since parsing the reply is most of a
# read's client-side cost.
_GET = """
local now = tonumber(ARGV[2])
local all, out, n, f = redis.call('HGETALL', KEYS[1]), {}, 0, {}
for i = 1, #all, 2 do
  local k = all[i]
  if string.byte(k) == 46 then
    out[n + 1], out[n + 2], n = k, all[i + 1], n + 2
  else
    f[k] = all[i + 1]
  end
end
local s = check(f['#d'], f['#i'], f['#h'], f['#t'], f['#u'], ARGV[1], now)
if not s then return false end
local idle, hard, ttl = s[1], s[2], s[3]
local new_idle = now + ttl
if new_idle - idle >= math.min(tonumber(ARGV[3]), ttl * 0.1) then
  redis.call('HSET', KEYS[1], '#i', string.format('%.17g', new_idle))
  expire(KEYS[1], math.min(new_idle, hard), now)
end
return out
"""

# ARGV: digest, now, ttl ("" keeps the session's). 1, or 0 if not alive.
_TOUCH = """
local now = tonumber(ARGV[2])
local s = alive(KEYS[1], ARGV[1], now)
if not s then return 0 end
local ttl = s[3]
local ttl_text = ARGV[3]
if ttl_text ~= '' then ttl = tonumber(ttl_text) else ttl_text = string.format('%.17g', ttl) end
local idle = now + ttl
redis.call('HSET', KEYS[1], '#i', string.format('%.17g', idle), '#t', ttl_text)
expire(KEYS[1], math.min(idle, s[2]), now)
return 1
"""

# ARGV: digest ("" any), now, ref, index prefix ("" in a cluster), owner the
# session must have ("" any, else "=" .. user). False if not alive, else HGETALL
# of the session as it was.
_DESTROY = """
local s = alive(KEYS[1], ARGV[1], tonumber(ARGV[2]))
if not s then return false end
if ARGV[5] ~= '' and (not s[4] or '=' .. s[4] ~= ARGV[5]) then return false end
local all = redis.call('HGETALL', KEYS[1])
redis.call('DEL', KEYS[1])
if ARGV[4] ~= '' and s[4] then redis.call('ZREM', ARGV[4] .. s[4], ARGV[3]) end
return all
"""

# KEYS[1] old session, KEYS[2] new. ARGV: old digest, now, new digest, owner
# ("k" keep, "n" none, "=" .. user), old ref, new ref, index prefix ("" in a
# cluster). False if the old one is not alive, 0 if the new ref is taken,
# else HGETALL of the old session.
_REGENERATE = """
local now = tonumber(ARGV[2])
local s = alive(KEYS[1], ARGV[1], now)
if not s then return false end
if redis.call('EXISTS', KEYS[2]) == 1 then return 0 end
local all = redis.call('HGETALL', KEYS[1])
redis.call('RENAME', KEYS[1], KEYS[2])
redis.call('HSET', KEYS[2], '#d', ARGV[3])
local owner = s[4]
if ARGV[4] == 'n' then
  redis.call('HDEL', KEYS[2], '#u')
  owner = nil
elseif ARGV[4] ~= 'k' then
  owner = string.sub(ARGV[4], 2)
  redis.call('HSET', KEYS[2], '#u', owner)
end
if ARGV[7] ~= '' then
  if s[4] then redis.call('ZREM', ARGV[7] .. s[4], ARGV[5]) end
  if owner then redis.call('ZADD', ARGV[7] .. owner, math.min(s[1], s[2]), ARGV[6]) end
end
return all
"""

# ARGV: digest, now, field, value, max keys. 1; false if not alive; -1 if the
# session already has max keys.
_SET = """
if not alive(KEYS[1], ARGV[1], tonumber(ARGV[2])) then return false end
if redis.call('HEXISTS', KEYS[1], ARGV[3]) == 0
    and data_count(KEYS[1]) >= tonumber(ARGV[5]) then
  return -1
end
redis.call('HSET', KEYS[1], ARGV[3], ARGV[4])
return 1
"""

# ARGV: digest, now, clear ("1"/"0"), field that must exist ("" none), max
# keys, then (op, field, value) triples, op "s" set or "d" delete. 1; false if
# not alive; -2 if the field that must exist does not; {-1, count} if the
# session would have more than max keys. Nothing is written unless 1.
_MODIFY = """
if not alive(KEYS[1], ARGV[1], tonumber(ARGV[2])) then return false end
local clear = ARGV[3] == '1'
if ARGV[4] ~= '' and redis.call('HEXISTS', KEYS[1], ARGV[4]) == 0 then return -2 end
local count = 0
if not clear then count = data_count(KEYS[1]) end
local final, order = {}, {}
for i = 6, #ARGV, 3 do
  local field = ARGV[i + 1]
  local had = final[field]
  if had == nil then
    had = (not clear) and redis.call('HEXISTS', KEYS[1], field) == 1
    table.insert(order, field)
  else
    had = had ~= false
  end
  if ARGV[i] == 's' then
    if not had then count = count + 1 end
    final[field] = ARGV[i + 2]
  else
    if had then count = count - 1 end
    final[field] = false
  end
end
if count > tonumber(ARGV[5]) then return {-1, count} end
if clear then
  local doomed = {}
  for _, field in ipairs(redis.call('HKEYS', KEYS[1])) do
    if string.sub(field, 1, 1) == '.' then table.insert(doomed, field) end
  end
  for i = 1, #doomed, 1000 do
    redis.call('HDEL', KEYS[1], unpack(doomed, i, math.min(i + 999, #doomed)))
  end
end
local sets, dels = {}, {}
for _, field in ipairs(order) do
  if final[field] then
    table.insert(sets, field)
    table.insert(sets, final[field])
  elseif not clear then
    table.insert(dels, field)
  end
end
hset_from(KEYS[1], sets, 1)
for i = 1, #dels, 1000 do
  redis.call('HDEL', KEYS[1], unpack(dels, i, math.min(i + 999, #dels)))
end
return 1
"""

# gc: ARGV: now, ref, index prefix. 0 if the key is missing; {1, expiry} if
# alive; else removes it and returns {2, HGETALL}.
_REAP = """
local now = tonumber(ARGV[1])
local f = redis.call('HMGET', KEYS[1], '#d', '#i', '#h', '#u')
if not f[1] then return 0 end
local idle, hard = deadline(f[2]), deadline(f[3])
if now < idle and now < hard then return {1, string.format('%.17g', math.min(idle, hard))} end
local all = redis.call('HGETALL', KEYS[1])
redis.call('DEL', KEYS[1])
if ARGV[3] ~= '' and f[4] then redis.call('ZREM', ARGV[3] .. f[4], ARGV[2]) end
return {2, all}
"""


class _Fields(NamedTuple):
    """One session's hash, parsed (the data still encoded)."""

    digest: bytes
    created_at: float
    ttl: float
    idle: float
    hard: float
    user: str | None
    meta: bytes | None
    data: dict[str, bytes]

    @property
    def expires_at(self) -> float:
        return min(self.idle, self.hard)

    def live_at(self, now: float) -> bool:
        return now < self.idle and now < self.hard

    def info(self, with_data: dict[str, Any] | None = None) -> SessionInfo:
        return SessionInfo(
            ref=tokens.ref_of(self.digest),
            user=self.user,
            meta=None if self.meta is None else JSON.decode(self.meta),
            created_at=self.created_at,
            expires_at=self.expires_at,
            last_seen=self.idle - self.ttl,
            data=with_data,
        )


def _text(value: float) -> bytes:
    """A deadline or duration as the hash holds it (exact: repr round-trips)."""
    return b"inf" if value == math.inf else repr(float(value)).encode()


def _pairs_to_dict(flat: list[bytes]) -> dict[bytes, bytes]:
    """A script's ``HGETALL`` reply (a flat list) as a dict."""
    return dict(zip(flat[::2], flat[1::2], strict=True))


def _parse(h: Mapping[bytes, bytes]) -> _Fields | None:
    """The session in a hash, or None for an empty (missing) or foreign one."""
    digest = h.get(_DIGEST)
    if digest is None:
        return None
    user = h.get(_USER)
    return _Fields(
        digest,
        float(h[_CREATED]),
        float(h[_TTL]),
        float(h[_IDLE]),
        float(h[_HARD]),
        None if user is None else user.decode("utf-8", "surrogatepass"),
        h.get(_META),
        {k[1:].decode(): v for k, v in h.items() if k[:1] == _DATA},
    )


def _address(client: Any) -> str:
    """Where *client* connects, for error messages: host:port, a socket path, a
    Sentinel service name, or a cluster's nodes."""
    if isinstance(client, redis.cluster.RedisCluster):
        try:
            names = [node.name for node in client.get_primaries()]  # type: ignore[no-untyped-call]
        except Exception:  # no topology yet
            names = []
        return "redis cluster " + (",".join(names) or "(no reachable node)")
    pool = getattr(client, "connection_pool", None)
    service = getattr(pool, "service_name", None)
    if service:
        sentinels = getattr(getattr(pool, "sentinel_manager", None), "sentinels", ())
        via = ",".join(_address(sentinel).removeprefix("redis ") for sentinel in sentinels)
        return f"redis sentinel service {service}" + (f" (sentinels {via})" if via else "")
    kwargs = getattr(pool, "connection_kwargs", {}) or {}
    if "path" in kwargs:
        return f"redis unix socket {kwargs['path']}"
    return f"redis {kwargs.get('host', 'localhost')}:{kwargs.get('port', 6379)}"


class RedisStore:
    """Web sessions in Redis (a server, a Sentinel master or a Cluster), with the API
    and semantics of :class:`walsess.Store`; see the module documentation for what
    Redis holds, what is atomic and what each call costs.

    Thread-safe, and usable from any number of processes at once (open one
    per process: redis-py reconnects in a forked child by itself).

    :param client: a redis-py client (``redis.Redis``, ``Sentinel.master_for(...)``
        or ``redis.cluster.RedisCluster``) made with ``decode_responses=False``
        (the default). The caller keeps owning it: :meth:`close` leaves it open.
    :param options: a :class:`walsess.Options` whose settings apply
        (:data:`SETTINGS`); any keyword *settings* replace them.
    :param prefix: the first part of every key this store writes; stores with
        different prefixes share a Redis without meeting.

    Example::

        client = redis.Redis(host="10.0.0.5")
        store = walsess.RedisStore(client, default_ttl=3600, prefix="myapp")
    """

    #: Changes are as durable as the Redis server makes them (its AOF / RDB
    #: settings); nothing waits for an fsync here, so the integrations never
    #: move a call to a thread for it.
    durability = "redis"

    def __init__(
        self,
        client: Any,
        options: Options | None = None,
        *,
        prefix: str = "walsess",
        **settings: Any,
    ) -> None:
        """Use *client* with *options*; see the class documentation."""
        unknown = sorted(set(settings) - set(SETTINGS))
        if unknown:
            shared = set(NAMES) & set(unknown)
            raise ValidationError(
                f"{', '.join(unknown)} {'does' if len(unknown) == 1 else 'do'} not apply to a"
                f" RedisStore{' (a setting of the embedded store)' if shared else ''};"
                f" its settings are {', '.join(SETTINGS)}"
            )
        opts = Options.of(options, **settings)
        ignored = [
            name
            for name in NAMES
            if name not in SETTINGS and getattr(opts, name) != getattr(_DEFAULTS, name)
        ]
        if ignored:
            raise ValidationError(
                f"options {', '.join(ignored)} do not apply to a RedisStore;"
                f" its settings are {', '.join(SETTINGS)}"
            )
        if not isinstance(prefix, str) or not _PREFIX.fullmatch(prefix):
            # No ":" (one store's key pattern must not match another's keys), no
            # braces (the hash tag) and no glob characters (SCAN patterns).
            raise ValidationError(
                f"prefix must be 1 to 64 letters, digits, '_', '-' or '.', not {short_repr(prefix)}"
            )
        encoder = getattr(client, "get_encoder", None)
        if encoder is None:
            raise ValidationError(
                f"client must be a redis-py client (redis.Redis, a Sentinel master or"
                f" redis.cluster.RedisCluster), not {short_repr(client)}"
            )
        if encoder().decode_responses:
            raise ValidationError(
                "the redis client must be made with decode_responses=False: sessions hold"
                " bytes (token digests, encoded values)"
            )
        self.options = opts
        self.default_ttl: float = opts.default_ttl
        self.max_lifetime: float | None = opts.max_lifetime
        self.touch_granularity: float = opts.touch_granularity
        self.max_value_bytes: int = opts.max_value_bytes
        self.codec: Codec = opts.resolved_codec
        self.decode = self.codec.decode
        self.decode_all = decoder_of_all(self.codec)
        self._encode = self.codec.encode
        #: The clock deadlines are judged by (the ``clock`` setting).
        self.clock = opts.clock
        self.prefix = prefix
        # redis-py's stubs type every command as sync-or-async (ResponseT), so
        # the client is held as Any rather than cast at each of its calls.
        self._r: Any = client
        self.cluster = isinstance(client, redis.cluster.RedisCluster)
        #: The address error messages name.
        self.address = _address(client)
        self._owns_client = False
        self._lock = threading.Lock()
        self._hooks: list[Hook] = []
        self._watchers: list[_ExpiryWatcher] = []
        #: True once closed. Set only by the store.
        self.closed = False
        # The owner's index is kept by the scripts on a single server, by the
        # client (outside them) in a cluster: see the module documentation.
        self._index_prefix = b"" if self.cluster else self._index_key("").encode()
        self._s_create = client.register_script(_LUA_PRELUDE + _CREATE)
        self._s_put = client.register_script(_LUA_PRELUDE + _PUT)
        self._s_get = client.register_script(_LUA_PRELUDE + _GET)
        self._s_touch = client.register_script(_LUA_PRELUDE + _TOUCH)
        self._s_destroy = client.register_script(_LUA_PRELUDE + _DESTROY)
        self._s_regenerate = client.register_script(_LUA_PRELUDE + _REGENERATE)
        self._s_set = client.register_script(_LUA_PRELUDE + _SET)
        self._s_modify = client.register_script(_LUA_PRELUDE + _MODIFY)
        self._s_reap = client.register_script(_LUA_PRELUDE + _REAP)

    @classmethod
    def from_url(
        cls, url: str, options: Options | None = None, *, prefix: str = "walsess", **settings: Any
    ) -> RedisStore:
        """A store on the Redis at *url*, on a client it makes and :meth:`close` closes.

        ``redis://[user:password@]host[:port][/db]``, ``rediss://`` (TLS) or
        ``unix:///path/to/socket`` connect to one server (redis-py's
        ``Redis.from_url``). ``redis+cluster://host:port`` (or any URL with
        ``?cluster=1``) connects to a Redis Cluster through that node. For
        Sentinel, make the client (``Sentinel(...).master_for(name)``) and
        pass it to :class:`RedisStore`. Connecting is lazy: the first command
        raises :class:`walsess.RedisUnavailable` if the server is not there
        (call :meth:`ping` at start-up to find out then).
        """
        if not isinstance(url, str):
            raise ValidationError(f"url must be a str, not {short_repr(url)}")
        try:
            if url.startswith("redis+cluster://") or "cluster=1" in url.partition("?")[2]:
                plain = "redis://" + url.partition("://")[2]
                plain = plain.replace("?cluster=1", "?").replace("&cluster=1", "").rstrip("?")
                client: Any = redis.cluster.RedisCluster.from_url(plain)
            else:
                client = redis.Redis.from_url(url)
        except (ValueError, redis.exceptions.RedisError) as exc:
            cause = RedisUnavailable if isinstance(exc, redis.exceptions.ConnectionError) else None
            if cause is not None:
                raise cause(f"cannot connect to {url.rpartition('@')[2]}: {exc}") from exc
            raise ValidationError(f"not a Redis URL ({exc}): {url.rpartition('@')[2]}") from None
        try:
            store = cls(client, options, prefix=prefix, **settings)
        except BaseException:
            client.close()
            raise
        store._owns_client = True
        return store

    # -- lifecycle --------------------------------------------------------------

    def __enter__(self) -> RedisStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Stop expiry watching; close the client if :meth:`from_url` made it.
        Every later call raises :class:`walsess.StoreClosed`. Harmless twice."""
        with self._lock:
            if self.closed:
                return
            self.closed = True
            watchers, self._watchers = self._watchers, []
        for watcher in watchers:
            watcher.stop()
        if self._owns_client:
            self._r.close()

    def _check_open(self) -> None:
        if self.closed:
            raise StoreClosed(f"RedisStore on {self.address} is closed")

    def ping(self) -> None:
        """Check the store is open and its Redis answers (one round trip); raises
        :class:`walsess.StoreClosed` or :class:`walsess.RedisUnavailable`."""
        self._check_open()
        self._call(self._r.ping)

    def now(self) -> float:
        """The store's clock (seconds since the epoch; the ``clock`` setting)."""
        return self.clock()

    def wait_synced(self) -> None:
        """Nothing to wait for: a change is in Redis when its call returns. (The
        request seam calls this on every store.)"""

    def _call(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """``fn(*args, **kwargs)`` with redis-py's errors as walsess errors."""
        try:
            return fn(*args, **kwargs)
        except redis.exceptions.RedisError as exc:
            raise self._error(exc) from exc

    def _eval(self, script: Script, keys: list[Any], args: list[Any]) -> Any:
        """Run *script* on *keys* and *args*: one ``EVALSHA``.

        redis-py's ``Script.__call__`` costs about 8 µs of Python a call, as much
        as the script's own run on the server, so the SHA is sent directly. When
        the server answers ``NOSCRIPT`` (it was restarted, failed over or had
        ``SCRIPT FLUSH``), the script is loaded and run again: two more round
        trips, once per server.
        """
        try:
            return self._r.evalsha(script.sha, len(keys), *keys, *args)
        except redis.exceptions.NoScriptError:
            self._call(self._r.script_load, script.script)
            return self._call(self._r.evalsha, script.sha, len(keys), *keys, *args)
        except redis.exceptions.RedisError as exc:
            raise self._error(exc) from exc

    def _error(self, exc: redis.exceptions.RedisError) -> StorageError:
        """The walsess error for redis-py's *exc*."""
        if isinstance(exc, redis.sentinel.MasterNotFoundError):
            # redis-py's text for this holds the repr of every Sentinel client (a
            # screenful); the chained cause keeps it for a traceback.
            return RedisUnavailable(
                f"{self.address} is unavailable: no Sentinel named a live primary for it"
                " (the Sentinels are unreachable, do not know the service, or see its"
                " primary down)"
            )
        if isinstance(exc, (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError)):
            return RedisUnavailable(f"{self.address} is unavailable: {exc}")
        return StorageError(f"{self.address} refused a command: {exc}")

    # -- keys --------------------------------------------------------------------

    def _key(self, ref: str) -> str:
        """The session hash of *ref* (16 hex digits); its first two are the hash tag."""
        return f"{self.prefix}:s:{{{ref[:2]}}}:{ref}"

    def _index_key(self, user: str) -> str:
        """The sorted set of *user*'s refs, scored by expiry."""
        return f"{self.prefix}:u:{user}"

    def _session_pattern(self) -> str:
        return f"{self.prefix}:s:*"

    # -- sessions ----------------------------------------------------------------

    def _ttl_and_lifetime(
        self, ttl: float | None, max_lifetime: float | None
    ) -> tuple[float, float]:
        if ttl is None:
            ttl = self.default_ttl
        else:
            check_positive("ttl", ttl)
            ttl = float(ttl)
        if max_lifetime is None:
            lifetime = math.inf if self.max_lifetime is None else self.max_lifetime
        else:
            check_positive("max_lifetime", max_lifetime)
            lifetime = float(max_lifetime)
        return ttl, lifetime

    def create(
        self,
        data: Mapping[str, Any] | None = None,
        *,
        ttl: float | None = None,
        max_lifetime: float | None = None,
        user: str | None = None,
        meta: Mapping[str, Any] | None = None,
    ) -> RedisSession:
        """A new session holding *data*, with a fresh 256-bit token: one script
        (plus, in a cluster, one ``ZADD`` to the owner's index first).

        The parameters are those of :meth:`walsess.Store.create`.
        """
        ttl, lifetime = self._ttl_and_lifetime(ttl, max_lifetime)
        check_user(user)
        meta_b = encode_meta(meta, self.max_value_bytes)
        check_data(data)
        values = encode_items(self._encode, data.items() if data else (), self.max_value_bytes)
        keys = rec.keys_bytes(values)
        self._check_open()
        now = self.clock()
        idle = now + ttl
        hard = now + lifetime
        expiry = _text(min(idle, hard))
        fields: list[bytes] = [
            _CREATED, _text(now), _TTL, _text(ttl), _IDLE, _text(idle), _HARD, _text(hard),
        ]  # fmt: skip
        if user is not None:
            fields += [_USER, user.encode()]
        if meta_b is not None:
            fields += [_META, meta_b]
        for kb, vb in zip(keys, values.values(), strict=True):
            fields += [_DATA + kb, vb]
        index = b"" if user is None else self._index_key(user).encode()
        while True:
            token = tokens.new_token()
            digest = tokens.digest(token)
            ref = tokens.ref_of(digest)
            if self.cluster and user is not None:
                # Listed before it exists: the index never misses a live session.
                self._call(self._r.zadd, index, {ref: float(expiry)})
            created = self._eval(
                self._s_create,
                [self._key(ref)],
                [_text(now), expiry, ref, b"" if self.cluster else index, _DIGEST, digest,
                 *fields],
            )  # fmt: skip
            if created:
                return RedisSession(self, token, digest)
            # A 64-bit ref collision: draw again (the index entry is the other session's).

    def _find(self, token: object) -> tuple[bytes, str] | None:
        """(digest, key) for a plausible token, or None (never raises for odd ones)."""
        self._check_open()
        if type(token) is not str or len(token) > 512:
            return None
        digest = tokens.digest(token)
        return digest, self._key(tokens.ref_of(digest))

    def get(self, token: str, *, wait: bool = True) -> RedisSession | None:
        """The session for *token*, or None if unknown or expired: one script that
        checks it, extends its idle deadline if that moves it by the touch
        granularity, and returns it whole (the handle's first :meth:`~RedisSession.encoded`
        uses that copy). *wait* is accepted for :meth:`walsess.Store.get`'s sake."""
        found = self._find(token)
        if found is None:
            return None
        digest, key = found
        reply = self._eval(
            self._s_get, [key], [digest, _text(self.clock()), self.touch_granularity]
        )
        if reply is None:
            return None
        data = {k[1:].decode(): v for k, v in zip(reply[::2], reply[1::2], strict=True)}
        return RedisSession(self, token, digest, data)

    def _fields(self, key: str) -> _Fields | None:
        return _parse(self._call(self._r.hgetall, key))

    def exists(self, token: str) -> bool:
        """True if *token* names a live session; one ``HMGET``, no expiry extension."""
        found = self._find(token)
        if found is None:
            return False
        digest, key = found
        stored, idle, hard = self._call(self._r.hmget, key, [_DIGEST, _IDLE, _HARD])
        now = self.clock()
        return stored == digest and now < float(idle) and now < float(hard)

    __contains__ = exists

    def touch(self, token: str, ttl: float | None = None) -> bool:
        """Extend the idle deadline to now + *ttl* (default: the session's own), making
        *ttl* its idle timeout from now on: one script. False if not live."""
        if ttl is not None:
            check_positive("ttl", ttl)
        found = self._find(token)
        if found is None:
            return False
        digest, key = found
        ttl_arg = b"" if ttl is None else _text(ttl)
        return bool(self._eval(self._s_touch, [key], [digest, _text(self.clock()), ttl_arg]))

    def _remove(self, ref: str, digest: bytes, reason: str, owner: str | None = None) -> bool:
        """Destroy the session *ref* if it is live and has *digest* (b"" any) and,
        if given, *owner*; run the hooks with *reason*. One script (and, in a
        cluster, one ``ZREM`` after it)."""
        owner_arg = b"" if owner is None else b"=" + owner.encode()
        reply = self._eval(
            self._s_destroy,
            [self._key(ref)],
            [digest, _text(self.clock()), ref, self._index_prefix, owner_arg],
        )
        if not reply:
            return False
        gone = _parse(_pairs_to_dict(reply))
        assert gone is not None
        if self.cluster and gone.user is not None:
            self._call(self._r.zrem, self._index_key(gone.user), ref)
        self._notify([gone], reason)
        return True

    def destroy(self, token: str) -> bool:
        """Destroy the session; True if it was live. Its token is dead at once."""
        found = self._find(token)
        if found is None:
            return False
        digest, _key = found
        return self._remove(tokens.ref_of(digest), digest, "destroyed")

    def revoke(self, ref: str) -> bool:
        """Destroy the session named by its public *ref* (as shown in device lists)."""
        self._check_open()
        if tokens.parse_ref(ref) is None:
            return False
        return self._remove(ref.lower(), b"", "revoked")

    def regenerate(self, token: str, *, user: Any = MISSING) -> RedisSession:
        """Give the session a new token (do this at login); the old token is dead.

        One script renames the session's key to the new ref's: the old token
        stops working and the new one works at the same instant. Data,
        metadata and expiry carry over; *user* as in
        :meth:`walsess.Store.regenerate`. Destroy hooks see the old session as
        "regenerated".
        """
        if user is not MISSING:
            check_user(user)
        found = self._find(token)
        if found is None:
            raise SessionNotFound("cannot regenerate: no live session has this token")
        old_digest, old_key = found
        old_ref = tokens.ref_of(old_digest)
        mode = b"k" if user is MISSING else b"n" if user is None else b"=" + user.encode()
        owner: str | None = None
        expires_at = 0.0
        if self.cluster:
            current = self._fields(old_key)
            if current is None or current.digest != old_digest or not current.live_at(self.clock()):
                raise SessionNotFound("cannot regenerate: no live session has this token")
            owner = current.user if user is MISSING else user
            expires_at = current.expires_at
        while True:
            if self.cluster:
                # RENAME needs both keys on one node: the same hash tag.
                new_token, new_digest = tokens.new_token_tagged(old_digest[0])
            else:
                new_token = tokens.new_token()
                new_digest = tokens.digest(new_token)
            new_ref = tokens.ref_of(new_digest)
            if self.cluster and owner is not None:
                # Listed before it exists: the index never misses a live session.
                self._call(self._r.zadd, self._index_key(owner), {new_ref: expires_at})
            reply = self._eval(
                self._s_regenerate,
                [old_key, self._key(new_ref)],
                [old_digest, _text(self.clock()), new_digest, mode, old_ref, new_ref,
                 self._index_prefix],
            )  # fmt: skip
            if reply == 0:
                continue  # the new ref is taken: draw again
            break
        if not reply:
            if self.cluster and owner is not None:
                self._call(self._r.zrem, self._index_key(owner), new_ref)
            raise SessionNotFound("cannot regenerate: the session was removed meanwhile")
        gone = _parse(_pairs_to_dict(reply))
        assert gone is not None
        if self.cluster and gone.user is not None:
            self._call(self._r.zrem, self._index_key(gone.user), old_ref)
        self._notify([gone], "regenerated")
        return RedisSession(self, new_token, new_digest)

    def put_state(
        self,
        digest: bytes,
        *,
        created_at: float,
        ttl: float,
        idle_remaining: float,
        hard_remaining: float | None,
        user: str | None,
        meta: bytes | None,
        data: Mapping[str, bytes],
    ) -> bool:
        """Write one session exactly as given, replacing what its ref holds: for
        moving sessions from another store (``walsess export``). Idempotent:
        writing the same state twice leaves the same session.

        :param digest: the token's 32-byte SHA-256 digest (:func:`walsess.tokens.digest`);
            the ref, and so the key, follow from it. The token itself is never needed.
        :param created_at: creation time, seconds since the epoch.
        :param ttl: the idle timeout in seconds.
        :param idle_remaining: seconds from now (this store's clock) to the idle deadline.
        :param hard_remaining: seconds from now to the absolute deadline, or None.
        :param user: the owner, or None.
        :param meta: the metadata as the embedded store keeps it (compact JSON
            bytes of a mapping, :attr:`walsess.table.SessionState.meta`), or None.
        :param data: key -> value encoded by this store's codec.
        :returns: False (and nothing written) if the session has no time left.

        One script (plus, in a cluster, a ``ZADD`` to the owner's index first).
        """
        if type(digest) is not bytes or len(digest) != 32:
            raise ValidationError("digest must be the 32 bytes of a token's SHA-256")
        check_positive("ttl", ttl)
        for name, value in (
            ("created_at", created_at),
            ("idle_remaining", idle_remaining),
            ("hard_remaining", 0.0 if hard_remaining is None else hard_remaining),
        ):
            if (
                not isinstance(value, (int, float))
                or isinstance(value, bool)
                or not math.isfinite(value)
            ):
                raise ValidationError(f"{name} must be a finite number, not {short_repr(value)}")
        check_user(user)
        if meta is not None:
            if type(meta) is not bytes:
                raise ValidationError("meta must be the JSON bytes of a mapping, or None")
            if not isinstance(JSON.decode(meta), dict):
                raise ValidationError("meta must be the JSON bytes of a mapping")
        fields: list[bytes] = []
        for key, vb in data.items():
            if type(vb) is not bytes:
                raise ValidationError(f"encoded value of {key!r} must be bytes")
            if len(vb) > self.max_value_bytes:
                raise too_large(vb, self.max_value_bytes)
            fields += [_DATA + rec.key_bytes(key), vb]
        if len(data) > rec.MAX_KEYS:
            raise too_many_keys(len(data))
        self._check_open()
        if idle_remaining <= 0 or (hard_remaining is not None and hard_remaining <= 0):
            return False
        now = self.clock()
        idle = now + float(idle_remaining)
        hard = math.inf if hard_remaining is None else now + float(hard_remaining)
        expiry = _text(min(idle, hard))
        ref = tokens.ref_of(digest)
        fields += [
            _DIGEST, digest, _CREATED, _text(created_at), _TTL, _text(ttl),
            _IDLE, _text(idle), _HARD, _text(hard),
        ]  # fmt: skip
        if user is not None:
            fields += [_USER, user.encode()]
        if meta is not None:
            fields += [_META, meta]
        index = b"" if user is None else self._index_key(user).encode()
        if self.cluster and user is not None:
            self._call(self._r.zadd, index, {ref: float(expiry)})
        self._eval(
            self._s_put,
            [self._key(ref)],
            [_text(now), expiry, ref, b"" if self.cluster else index, *fields],
        )
        return True

    # -- changes through a RedisSession -----------------------------------------------

    def _gone_error(self, digest: bytes) -> SessionNotFound:
        return SessionNotFound(
            f"session {tokens.ref_of(digest)} no longer exists (destroyed, regenerated or expired)"
        )

    def live_fields(self, digest: bytes) -> _Fields:
        """The session of *digest* whole (one ``HGETALL``), or :class:`SessionNotFound`."""
        self._check_open()
        fields = self._fields(self._key(tokens.ref_of(digest)))
        if fields is None or fields.digest != digest or not fields.live_at(self.clock()):
            raise self._gone_error(digest)
        return fields

    def read_key(self, digest: bytes, key: str) -> bytes | None:
        """The encoded value of *key* in the session of *digest* (None if absent):
        one ``HMGET``; :class:`SessionNotFound` if the session is not live."""
        self._check_open()
        field = _DATA + key.encode("utf-8", "surrogatepass")
        stored, idle, hard, value = self._call(
            self._r.hmget, self._key(tokens.ref_of(digest)), [_DIGEST, _IDLE, _HARD, field]
        )
        now = self.clock()
        if stored != digest or not (now < float(idle) and now < float(hard)):
            raise self._gone_error(digest)
        return value  # type: ignore[no-any-return]

    def set_key(self, digest: bytes, key: str, value: Any) -> None:
        """Set *key* to *value* in the session of *digest*: one script."""
        vb = self._encode(value)
        if len(vb) > self.max_value_bytes:
            raise too_large(vb, self.max_value_bytes)
        field = _DATA + rec.key_bytes(key)
        self._check_open()
        done = self._eval(
            self._s_set,
            [self._key(tokens.ref_of(digest))],
            [digest, _text(self.clock()), field, vb, rec.MAX_KEYS],
        )
        if not done:
            raise self._gone_error(digest)
        if done == -1:
            raise too_many_keys(rec.MAX_KEYS + 1)

    def modify(
        self,
        digest: bytes,
        clear: bool,
        items: Iterable[tuple[Any, Any]],
        must_exist: str | None = None,
    ) -> None:
        """Clear first if *clear*, then set each key (delete it for
        :data:`~walsess.session.MISSING`): one script, all or nothing."""
        encode = self._encode
        limit = self.max_value_bytes
        changes: list[tuple[str, bytes | None]] = []
        for key, value in items:
            if value is MISSING:
                changes.append((key, None))
                continue
            vb = encode(value)
            if len(vb) > limit:
                raise too_large(vb, limit)
            changes.append((key, vb))
        self.modify_encoded(digest, clear, changes, must_exist)

    def modify_encoded(
        self,
        digest: bytes,
        clear: bool,
        changes: list[tuple[str, bytes | None]],
        must_exist: str | None = None,
    ) -> None:
        """Set each key to already-encoded bytes, or delete it (None): one script."""
        limit = self.max_value_bytes
        args: list[Any] = []
        for key, vb in changes:
            field = _DATA + rec.key_bytes(key)
            if vb is None:
                args += [b"d", field, b""]
            else:
                if type(vb) is not bytes:
                    raise ValidationError(f"encoded value of {key!r} must be bytes")
                if len(vb) > limit:
                    raise too_large(vb, limit)
                args += [b"s", field, vb]
        if len(changes) > rec.MAX_KEYS:
            raise too_many_changes(len(changes))
        self._check_open()
        must = b"" if must_exist is None else _DATA + rec.key_bytes(must_exist)
        done = self._eval(
            self._s_modify,
            [self._key(tokens.ref_of(digest))],
            [digest, _text(self.clock()), b"1" if clear else b"0", must, rec.MAX_KEYS, *args],
        )
        if not done:
            raise self._gone_error(digest)
        if done == -2:
            raise KeyError(must_exist)
        if isinstance(done, list):
            raise too_many_keys(int(done[1]))

    # -- whole store: listing ---------------------------------------------------------

    def _scan(self, pattern: str) -> Iterator[bytes]:
        """Every key matching *pattern*, on every node (``SCAN``, 1000 at a time)."""
        keys = iter(self._call(self._r.scan_iter, match=pattern, count=1000))
        while True:
            try:
                key = self._call(next, keys)
            except StopIteration:
                return
            yield key

    def _read_many(self, keys: list[bytes]) -> list[_Fields | None]:
        """The sessions under *keys*, in one pipeline (grouped by node in a cluster)."""
        pipe = self._r.pipeline(transaction=False)
        for key in keys:
            pipe.hgetall(key)
        return [_parse(h) for h in self._call(pipe.execute)]

    def _all(self) -> Iterator[_Fields]:
        """Every stored session (live or not), 500 at a time."""
        batch: list[bytes] = []
        for key in self._scan(self._session_pattern()):
            batch.append(key)
            if len(batch) == 500:
                yield from (f for f in self._read_many(batch) if f is not None)
                batch = []
        if batch:
            yield from (f for f in self._read_many(batch) if f is not None)

    def sessions(self) -> Iterator[SessionInfo]:
        """Every live session as a :class:`SessionInfo` (never the token). Scans
        every session key: O(n) round trips of 500, for tools, not requests."""
        self._check_open()
        now = self.clock()
        infos = [f.info() for f in self._all() if f.live_at(now)]
        return iter(infos)

    def __len__(self) -> int:
        """Live sessions; scans every session key: O(n)."""
        self._check_open()
        now = self.clock()
        return sum(1 for f in self._all() if f.live_at(now))

    def _of_user(self, user: str) -> list[tuple[str, _Fields]]:
        """*user*'s live sessions by ref, oldest first, pruning the index on the way:
        an entry whose score (expiry) has passed and whose session is dead goes;
        one that is alive gets its score corrected."""
        index = self._index_key(user)
        entries = self._call(self._r.zrange, index, 0, -1, withscores=True)
        refs = [ref.decode() for ref, _score in entries]
        found = self._read_many([self._key(ref).encode() for ref in refs])
        now = self.clock()
        live: list[tuple[str, _Fields]] = []
        dead: list[str] = []
        rescore: dict[str, float] = {}
        for (ref, score), fields in zip(
            zip(refs, (s for _r, s in entries), strict=True), found, strict=True
        ):
            alive = fields is not None and fields.user == user and fields.live_at(now)
            if alive:
                assert fields is not None
                live.append((ref, fields))
                if score <= now:
                    rescore[ref] = fields.expires_at
            elif score <= now:
                # Only entries past their score: a newer one may be a session a
                # cluster create has listed and not yet written.
                dead.append(ref)
        if dead:
            self._call(self._r.zrem, index, *dead)
        if rescore:
            self._call(self._r.zadd, index, rescore, xx=True)
        live.sort(key=lambda item: item[1].created_at)
        return live

    def sessions_of(self, user: str) -> list[SessionInfo]:
        """The live sessions of *user*, oldest first, as infos: an "active devices"
        list. One ``ZRANGE`` of the owner's index and one pipelined read."""
        check_user(user, allow_none=False)
        self._check_open()
        return [fields.info() for _ref, fields in self._of_user(user)]

    def destroy_user(self, user: str, keep: Iterable[str] = ()) -> int:
        """Destroy every live session of *user* except those in *keep* (tokens or refs):
        "log out my other devices". Returns how many were destroyed; hooks see
        "revoked". One script per session (not atomic as a whole)."""
        check_user(user, allow_none=False)
        self._check_open()
        kept = kept_ref_keys(keep)
        done = 0
        for ref, _fields in self._of_user(user):
            if bytes.fromhex(ref) in kept:
                continue
            if self._remove(ref, b"", "revoked", owner=user):
                done += 1
        return done

    # -- expiry ------------------------------------------------------------------------

    def gc(self) -> int:
        """Remove the sessions whose deadline has passed on this store's clock but
        that Redis still holds (its TTLs remove the others by themselves), running
        the destroy hooks with "expired", and prune every owner's index of dead
        entries. Returns how many sessions were removed.

        Scans every session key and every index: O(n), for a cron job or
        ``manage.py clearsessions``; a running application does not need it.
        """
        self._check_open()
        now = self.clock()
        removed = 0
        gone: list[_Fields] = []
        for fields in list(self._all()):
            if fields.live_at(now):
                continue
            ref = tokens.ref_of(fields.digest)
            reply = self._eval(
                self._s_reap, [self._key(ref)], [_text(now), ref, self._index_prefix]
            )
            if isinstance(reply, list) and int(reply[0]) == 2:
                was = _parse(_pairs_to_dict(reply[1]))
                assert was is not None
                removed += 1
                gone.append(was)
                if self.cluster and was.user is not None:
                    self._call(self._r.zrem, self._index_key(was.user), ref)
        prefix = self._index_key("").encode()
        for index in list(self._scan(self._index_key("*"))):
            self._of_user(index[len(prefix) :].decode("utf-8", "surrogatepass"))
        self._notify(gone, "expired")
        return removed

    def index_size(self, user: str) -> int:
        """Entries in *user*'s index, dead ones not yet pruned included: one ``ZCARD``.
        For monitoring and tests: it stays near the number of live sessions."""
        self._check_open()
        return int(self._call(self._r.zcard, self._index_key(user)))

    # -- hooks -------------------------------------------------------------------------

    def on_destroy(self, fn: Hook) -> Callable[[], None]:
        """Call ``fn(info, reason)`` after each session is gone; returns an unsubscribe
        function. As :meth:`walsess.Store.on_destroy`, for the sessions this process
        destroys, regenerates, revokes or removes in :meth:`gc`; for those Redis
        expires, see :meth:`watch_expiry`."""
        with self._lock:
            self._hooks = [*self._hooks, fn]

        def unsubscribe() -> None:
            with self._lock:
                self._hooks = [h for h in self._hooks if h is not fn]

        return unsubscribe

    def _notify(self, gone: list[_Fields], reason: str) -> None:
        hooks = self._hooks
        if not hooks:
            return
        for fields in gone:
            try:
                info = fields.info(self.decode_all(fields.data))
            except Exception:
                log.exception(
                    "walsess: on_destroy hooks skipped for session %s: its data could not"
                    " be decoded (the session is gone all the same)",
                    tokens.ref_of(fields.digest),
                )
                continue
            self._run_hooks(hooks, info, reason)

    @staticmethod
    def _run_hooks(hooks: list[Hook], info: SessionInfo, reason: str) -> None:
        for hook in hooks:
            try:
                hook(info, reason)
            except Exception:
                log.exception("walsess: on_destroy hook %r raised", hook)

    def watch_expiry(self, *, configure: bool = False) -> Callable[[], None]:
        """Run the destroy hooks with "expired" for sessions Redis expires, from
        keyspace notifications, in one background thread per master node; returns
        a function that stops watching (:meth:`close` does too).

        The limits are in the module documentation: the info holds only the
        ref, events come when Redis removes the key (possibly seconds late) and
        only to processes subscribed then. With *configure*, the servers'
        ``notify-keyspace-events`` is set to ``Ex`` (``CONFIG SET``; needs the
        right to run it); otherwise it must already include expired events.
        """
        self._check_open()
        if self.cluster:
            nodes = [self._r.get_redis_connection(n) for n in self._r.get_primaries()]
        else:
            nodes = [self._r]
        if configure:
            for node in nodes:
                self._call(node.config_set, "notify-keyspace-events", "Ex")
        watchers = [_ExpiryWatcher(self, node) for node in nodes]
        for watcher in watchers:
            watcher.start()
        with self._lock:
            self._watchers += watchers

        def stop() -> None:
            for watcher in watchers:
                watcher.stop()

        return stop

    def _expired_key(self, key: bytes) -> None:
        """A keyspace notification: *key* expired in Redis."""
        marker = f"{self.prefix}:s:".encode()
        if not key.startswith(marker):
            return
        ref = key.rpartition(b":")[2].decode("ascii", "replace")
        nan = math.nan
        info = SessionInfo(ref=ref, user=None, meta=None, created_at=nan, expires_at=nan,
                           last_seen=nan)  # fmt: skip
        self._run_hooks(self._hooks, info, "expired")

    # -- stats -------------------------------------------------------------------------

    def stats(self) -> dict[str, Any]:
        """Counters for monitoring: live and stored sessions (a scan: O(n)), the
        servers' memory, the codec."""
        self._check_open()
        now = self.clock()
        stored = live = 0
        for fields in self._all():
            stored += 1
            live += fields.live_at(now)
        if self.cluster:
            memory = self._call(
                self._r.info, "memory", target_nodes=redis.cluster.RedisCluster.PRIMARIES
            )
            used = sum(int(node_info.get("used_memory", 0)) for node_info in memory.values())
        else:
            used = int(self._call(self._r.info, "memory").get("used_memory", 0))
        return {
            "sessions": live,
            "stored_sessions": stored,
            "expired_pending_gc": stored - live,
            "server_memory_bytes": used,
            "address": self.address,
            "cluster": self.cluster,
            "durability": self.durability,
            "codec": self.codec.name,
        }

    def __repr__(self) -> str:
        state = "closed" if self.closed else "open"
        return f"<walsess.RedisStore {self.address} prefix={self.prefix!r} {state}>"


class _ExpiryWatcher:
    """One thread listening to one node's expired-key events for a store."""

    def __init__(self, store: RedisStore, node: Any) -> None:
        self._store = store
        self._pubsub = node.pubsub(ignore_subscribe_messages=True)
        # The store's database only: another database may hold the same prefix.
        db = getattr(node, "connection_pool", None)
        db = (getattr(db, "connection_kwargs", None) or {}).get("db", 0)
        self._channel = f"__keyevent@{db}__:expired"
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="walsess-expiry", daemon=True)

    def start(self) -> None:
        self._store._call(self._pubsub.subscribe, self._channel)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                message = self._pubsub.get_message(timeout=0.5)
            except redis.exceptions.RedisError:
                if self._stop.is_set():
                    return
                log.exception("walsess: expiry notifications from Redis interrupted")
                self._stop.wait(1.0)  # then redis-py reconnects and resubscribes
                continue
            if message is not None and message.get("type") == "message":
                self._store._expired_key(message["data"])

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(timeout=5)
        with contextlib.suppress(redis.exceptions.RedisError):
            self._pubsub.close()


class RedisSession(SessionAttributes):
    """One session in a :class:`RedisStore`: the API of :class:`walsess.Session`.

    Every read goes to Redis (one ``HMGET`` for a key, one ``HGETALL`` for
    the whole session), so a handle sees what other processes wrote; every
    change is one script that first checks the session is still the one this
    handle's token names and is live, else raises :class:`SessionNotFound`.
    The one exception: the first :meth:`encoded` of a handle :meth:`RedisStore.get`
    returned gives the data that lookup read, saving a round trip for a
    request's load.

    Example::

        s = store.create({"user_id": 42})
        s["cart"] = [1, 2]          # one script
        s.update(a=1, b=2)          # one script: both or neither
    """

    __slots__ = ("_digest", "_loaded", "_store", "id")

    def __init__(
        self,
        store: RedisStore,
        token: str,
        digest: bytes,
        loaded: dict[str, bytes] | None = None,
    ) -> None:
        self._store = store
        self._digest = digest
        self._loaded = loaded
        #: The token: the secret the client presents. Never stored in Redis.
        self.id = token

    def _live(self) -> _Fields:
        self._loaded = None
        return self._store.live_fields(self._digest)

    # -- mapping ------------------------------------------------------------

    def __getitem__(self, key: str) -> Any:
        if not isinstance(key, str):
            raise KeyError(key)
        raw = self._store.read_key(self._digest, key)
        if raw is None:
            raise KeyError(key)
        return self._store.decode(raw)

    def get(self, key: str, default: Any = None) -> Any:
        if not isinstance(key, str):
            return default
        raw = self._store.read_key(self._digest, key)
        return default if raw is None else self._store.decode(raw)

    def __contains__(self, key: object) -> bool:
        return isinstance(key, str) and self._store.read_key(self._digest, key) is not None

    def __setitem__(self, key: str, value: Any) -> None:
        self._loaded = None
        self._store.set_key(self._digest, key, value)

    def __delitem__(self, key: str) -> None:
        self._loaded = None
        self._store.modify(self._digest, False, ((key, MISSING),), must_exist=key)

    def update(self, other: Any = (), /, **kwargs: Any) -> None:
        """Set several keys in one script: all of them, or (on any error) none."""
        items = pairs_of(other)
        items.extend(kwargs.items())
        self._loaded = None
        self._store.modify(self._digest, False, items)

    def clear(self) -> None:
        """Remove every key, in one script."""
        self._loaded = None
        self._store.modify(self._digest, True, ())

    def replace(self, data: Mapping[str, Any] | Iterable[tuple[str, Any]]) -> None:
        """Make the data exactly *data*, in one script (clear, then set each key)."""
        self._loaded = None
        self._store.modify(self._digest, True, pairs_of(data))

    def encoded(self) -> dict[str, bytes]:
        """Every key's stored bytes, read at one moment: a copy (see the class
        documentation for the first call after :meth:`RedisStore.get`)."""
        loaded = self._loaded
        if loaded is not None:
            self._loaded = None
            return loaded
        return self._live().data

    def write_encoded(self, changes: Mapping[str, bytes | None]) -> None:
        """Set each key to already-encoded bytes, or delete it (``None``), in one script."""
        if not isinstance(changes, Mapping):
            raise ValidationError(f"changes must be a mapping, not {type(changes).__name__}")
        self._loaded = None
        self._store.modify_encoded(self._digest, False, list(changes.items()))

    def to_dict(self) -> dict[str, Any]:
        """A decoded copy of all keys, read at one moment."""
        return self._store.decode_all(self._live().data)

    def __eq__(self, other: object) -> bool:
        if isinstance(other, RedisSession):
            return self._store is other._store and self._digest == other._digest
        return super().__eq__(other)


if TYPE_CHECKING:

    def _meets_the_protocol(store: RedisStore) -> SessionStore:
        """mypy checks here that a RedisStore is what the integrations take."""
        return store
