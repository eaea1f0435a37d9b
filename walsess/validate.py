"""The input checks every store makes, in one place: users, metadata, values, key counts.

:class:`walsess.Store` and :class:`walsess.RedisStore` call these before they
write anything, so both refuse the same input with the same error and
message. Each is a few dict or length checks; none touches storage.

Example::

    >>> check_user("42") is None
    True
    >>> encode_meta({"ip": "10.0.0.1"}, 1 << 20)
    b'{"ip":"10.0.0.1"}'
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any

from . import record as rec
from . import tokens
from .codec import JSON
from .errors import CodecError, TooManyKeys, ValidationError, ValueTooLarge

__all__ = [
    "check_data",
    "check_user",
    "encode_items",
    "encode_meta",
    "kept_ref_keys",
    "too_large",
    "too_many_changes",
    "too_many_keys",
]


def check_user(user: object, allow_none: bool = True) -> None:
    """Raise :class:`ValidationError` unless *user* is a storable owner (a str of at
    most 65,535 UTF-8 bytes, or None where *allow_none*)."""
    if user is None and allow_none:
        return
    if not isinstance(user, str):
        raise ValidationError(f"user must be a str, not {type(user).__name__}")
    try:
        size = len(user.encode())
    except UnicodeEncodeError:
        raise ValidationError("user is not valid Unicode (it has a lone surrogate)") from None
    if size > rec.MAX_KEY_BYTES:
        raise ValidationError("user is longer than 65,535 UTF-8 bytes")


def encode_meta(meta: object, max_value_bytes: int) -> bytes | None:
    """Session metadata as the compact JSON bytes stores keep (None stays None)."""
    if meta is None:
        return None
    if not isinstance(meta, Mapping):
        raise ValidationError("meta must be a mapping")
    try:
        meta_b = JSON.encode(dict(meta))
    except CodecError as exc:
        raise CodecError(f"meta must be JSON: {exc}") from None
    if len(meta_b) > max_value_bytes:
        raise ValueTooLarge("meta is larger than max_value_bytes")
    return meta_b


def check_data(data: object) -> None:
    """Raise :class:`ValidationError` unless *data* (a new session's) is a mapping or None."""
    if data is not None and not isinstance(data, Mapping):
        raise ValidationError(f"data must be a mapping, not {type(data).__name__}")


def too_large(vb: bytes, max_value_bytes: int) -> ValueTooLarge:
    """The error for an encoded value longer than *max_value_bytes*."""
    return ValueTooLarge(f"encoded value is {len(vb)} bytes; max_value_bytes is {max_value_bytes}")


def too_many_keys(count: int) -> TooManyKeys:
    """The error for a change that would leave a session with *count* keys."""
    return TooManyKeys(
        f"a session may hold at most {rec.MAX_KEYS:,} keys; this change would give it {count:,}"
    )


def too_many_changes(count: int) -> TooManyKeys:
    """The error for one change that sets or deletes *count* keys, more than
    :data:`walsess.record.MAX_KEYS` (the reader refuses a longer change list)."""
    return TooManyKeys(f"one change may set or delete at most {rec.MAX_KEYS:,} keys, not {count:,}")


def encode_items(
    encode: Callable[[Any], bytes], items: Iterable[tuple[Any, Any]], max_value_bytes: int
) -> dict[str, bytes]:
    """*items* as key -> encoded value, each value checked against *max_value_bytes*
    and the count against :data:`walsess.record.MAX_KEYS` (keys are checked by the
    caller, with :func:`walsess.record.keys_bytes`)."""
    data: dict[str, bytes] = {}
    for key, value in items:
        vb = encode(value)
        if len(vb) > max_value_bytes:
            raise too_large(vb, max_value_bytes)
        data[key] = vb
    if len(data) > rec.MAX_KEYS:
        raise too_many_keys(len(data))
    return data


def kept_ref_keys(keep: Iterable[str]) -> set[bytes]:
    """The ref keys (:func:`walsess.tokens.ref_key`) of ``destroy_user``'s *keep*:
    tokens or refs; anything else keeps nothing."""
    if isinstance(keep, str):
        raise ValidationError("keep must be a collection of tokens or refs, not one string")
    kept: set[bytes] = set()
    for item in keep:
        key = tokens.parse_ref(item)
        if key is None and isinstance(item, str):
            key = tokens.ref_key(tokens.digest(item))
        if key is not None:
            kept.add(key)
    return kept
