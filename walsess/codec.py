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
from collections.abc import Callable, Mapping
from typing import Any, Protocol, runtime_checkable

from .errors import CodecError, ValidationError

__all__ = ["JSON", "PICKLE", "Codec", "JSONCodec", "PickleCodec", "decoder_of_all", "resolve_codec"]


@runtime_checkable
class Codec(Protocol):
    """Turns values into bytes and back. ``encode`` raises on what it cannot store.

    A codec may also have ``decode_all(mapping) -> dict``, decoding every
    value of a mapping at once (a whole-session read); see :func:`decoder_of_all`.
    """

    name: str

    def encode(self, value: Any) -> bytes: ...

    def decode(self, data: bytes) -> Any: ...


_quote = json.encoder.encode_basestring_ascii


def _not_json(obj: Any) -> Any:
    raise TypeError(f"Object of type {type(obj).__name__} is not JSON serializable")


class JSONCodec:
    """Compact ASCII JSON; rejects NaN/Infinity and anything json cannot encode.

    JSON turns tuples into lists and non-str dict keys into strings, as it
    does everywhere. It drives the json module's C encoder and scanner
    directly, built once, which is several times faster than ``json.dumps``
    and ``json.loads`` for the small values sessions hold.
    """

    name = "json"

    def __init__(self) -> None:
        make_encoder = getattr(json.encoder, "c_make_encoder", None)
        if make_encoder is not None:
            # markers=None: no circularity bookkeeping; a cycle ends in RecursionError.
            self._chunks: Any = make_encoder(
                None, _not_json, _quote, None, ":", ",", False, False, False,
            )  # fmt: skip
        else:  # pragma: no cover - Pythons without the _json accelerator
            encoder = json.JSONEncoder(
                separators=(",", ":"), ensure_ascii=True, allow_nan=False, default=_not_json
            )
            self._chunks = lambda value, _level: (encoder.encode(value),)
        self._scan = json.JSONDecoder().scan_once  # type: ignore[attr-defined]

    def encode(self, value: Any) -> bytes:
        try:
            # str and int, the commonest session values, skip the general
            # encoder: the same bytes json.dumps gives, in a third of the time.
            t = type(value)
            if t is str:
                return _quote(value).encode()
            if t is int:
                return str(value).encode()
            return "".join(self._chunks(value, 0)).encode("ascii")
        except (TypeError, ValueError, RecursionError) as exc:
            raise CodecError(f"value cannot be stored as JSON: {exc}") from None

    def decode(self, data: bytes) -> Any:
        text = data.decode("ascii")
        try:
            value, end = self._scan(text, 0)
        except StopIteration:
            end = -1
        if end != len(text):
            raise json.JSONDecodeError("not a single JSON value", text, max(end, 0))
        return value

    def decode_all(self, data: Mapping[str, bytes]) -> dict[str, Any]:
        """``{key: decode(value)}``, in one loop with no call per value (a session
        read whole). Faster than joining the values into one array to scan: the
        join and the dict building cost more than the scans they save."""
        scan = self._scan
        out = {}
        for key, raw in data.items():
            text = raw.decode("ascii")
            try:
                out[key], end = scan(text, 0)
            except StopIteration:
                end = -1
            if end != len(text):
                raise json.JSONDecodeError("not a single JSON value", text, max(end, 0))
        return out


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


def decoder_of_all(codec: Codec) -> Callable[[Mapping[str, bytes]], dict[str, Any]]:
    """*codec*'s ``decode_all`` (an optional method: decode every value of a
    mapping), or the same built from its ``decode``."""
    decode_all: Callable[[Mapping[str, bytes]], dict[str, Any]] | None = getattr(
        codec, "decode_all", None
    )
    if decode_all is not None:
        return decode_all
    decode = codec.decode
    return lambda data: {key: decode(raw) for key, raw in data.items()}


def resolve_codec(codec: str | Codec) -> Codec:
    """The codec named ``"json"`` or ``"pickle"``, or *codec* itself if it is one."""
    if isinstance(codec, str):
        if codec == "json":
            return JSON
        if codec == "pickle":
            return PICKLE
        raise ValidationError(
            f"unknown codec {codec[:40]!r}; use 'json', 'pickle' or a Codec object"
        )
    if not isinstance(codec, Codec):
        raise ValidationError(
            f"codec must be 'json', 'pickle' or a Codec object, not {type(codec).__name__}"
        )
    return codec
