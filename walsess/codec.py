"""Value codecs: how session values become the bytes kept in memory and in the log.

A codec is any object with a ``name`` and ``encode``/``decode`` methods
(:class:`Codec`). Values are held encoded, so every read decodes a fresh
copy: mutating a returned list changes nothing until it is set again.

JSON is the default. Pickle is available only when asked for by name,
because unpickling data from a leaked or tampered store runs code.

Example::

    >>> JSON.decode(JSON.encode({"cart": [1, 2]}))
    {'cart': [1, 2]}
"""

from __future__ import annotations

import json
import pickle
from typing import Any, Protocol, runtime_checkable

from .errors import CodecError

__all__ = ["JSON", "PICKLE", "Codec", "JSONCodec", "PickleCodec", "resolve_codec"]


@runtime_checkable
class Codec(Protocol):
    """Turns values into bytes and back. ``encode`` raises on what it cannot store."""

    name: str

    def encode(self, value: Any) -> bytes: ...

    def decode(self, data: bytes) -> Any: ...


class JSONCodec:
    """Compact ASCII JSON; rejects NaN/Infinity and anything json cannot encode.

    JSON turns tuples into lists and non-str dict keys into strings, as it
    does everywhere. Cost: about 1 us to encode a small value.
    """

    name = "json"

    def __init__(self) -> None:
        self._encode = json.JSONEncoder(
            separators=(",", ":"), ensure_ascii=True, allow_nan=False
        ).encode
        self._decode = json.JSONDecoder().decode

    def encode(self, value: Any) -> bytes:
        try:
            return self._encode(value).encode("ascii")
        except (TypeError, ValueError, RecursionError) as exc:
            raise CodecError(f"value cannot be stored as JSON: {exc}") from None

    def decode(self, data: bytes) -> Any:
        return self._decode(data.decode("ascii"))


class PickleCodec:
    """Any picklable value. Only for stores whose files nobody else can write."""

    name = "pickle"

    def encode(self, value: Any) -> bytes:
        try:
            return pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL)
        except (pickle.PicklingError, TypeError, AttributeError, RecursionError) as exc:
            raise CodecError(f"value cannot be pickled: {exc}") from None

    def decode(self, data: bytes) -> Any:
        return pickle.loads(data)  # asked for by name; see the class docstring


JSON = JSONCodec()
PICKLE = PickleCodec()


def resolve_codec(codec: str | Codec) -> Codec:
    """The codec named ``"json"`` or ``"pickle"``, or *codec* itself if it is one."""
    if isinstance(codec, str):
        if codec == "json":
            return JSON
        if codec == "pickle":
            return PICKLE
        raise ValueError(f"unknown codec {codec!r}; use 'json', 'pickle' or a Codec object")
    if not isinstance(codec, Codec):
        raise TypeError(f"codec must be 'json', 'pickle' or a Codec object, not {codec!r}")
    return codec
