"""The settings of a store, their defaults and their checks, in one place.

:func:`walsess.open` takes them as keyword arguments or as an :class:`Options`;
the Django adapter takes them from ``WALSESS_OPTIONS`` and ``walsess compact``
builds one. Every setting is checked when the object is built, so a bad one is
refused before any file of the store is touched.

Example::

    options = walsess.Options(durability="always", default_ttl=3600)
    with walsess.open("var/sessions", options) as store:
        ...
    test_options = dataclasses.replace(options, clock=walsess.ManualClock(1.7e9))
"""

from __future__ import annotations

import dataclasses
import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from . import record as rec
from .codec import Codec, resolve_codec
from .durability import MODES
from .errors import ValidationError
from .fileio import OS, FileSystem

__all__ = ["NAMES", "Clock", "Options", "check_positive", "short_repr"]

Clock = Callable[[], float]


def short_repr(value: object) -> str:
    """``repr(value)``, cut to 60 characters: error messages quote what they refuse."""
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def check_positive(name: str, value: object, allow_none: bool = False) -> None:
    """Raise :class:`ValidationError` unless *value* is a positive finite number.

    Bools are refused, and so are ints too large for a float (they would
    overflow where the store does arithmetic with them).
    """
    if value is None and allow_none:
        return
    try:
        ok = (
            isinstance(value, (int, float))
            and not isinstance(value, bool)
            and math.isfinite(value)  # an int too large for a float overflows here
            and value > 0
        )
    except OverflowError:
        ok = False
    if not ok:
        raise ValidationError(
            f"{name} must be a positive finite number of seconds, not {short_repr(value)}"
        )


@dataclass(frozen=True, slots=True)
class Options:
    """The settings of a store: what :func:`walsess.open` accepts as keywords.

    Immutable; derive a variant with :func:`dataclasses.replace`, which checks
    again. Building one checks every setting (raising
    :class:`~walsess.ValidationError`) and normalises it: numbers of seconds
    become floats, a codec name becomes the :class:`~walsess.Codec`, and a
    ``cleanup_interval`` of 0 becomes None. It costs a few microseconds and
    touches no file.

    Example::

        base = walsess.Options(default_ttl=3600, max_sessions=100_000)
        strict = dataclasses.replace(base, durability="always")
        store = walsess.open("var/sessions", strict)
    """

    #: ``"always"``, ``"interval"`` (default) or ``"never"``; see
    #: :mod:`walsess.durability` and the README for what each guarantees.
    durability: str = "interval"
    #: Seconds within which ``interval`` mode fsyncs a change.
    fsync_interval: float = 1.0
    #: Idle timeout of new sessions, in seconds; reads extend it.
    default_ttl: float = 1800.0
    #: Absolute lifetime of new sessions from creation, in seconds, or None.
    max_lifetime: float | None = None
    #: A read that extends a session's idle deadline writes a TOUCH record only
    #: once the deadline has moved by ``min(touch_granularity, ttl / 10)`` since
    #: the last one logged; after a restart a session may expire earlier by at
    #: most that much, never later.
    touch_granularity: float = 60.0
    #: ``"json"`` (default), ``"pickle"`` (only if you trust every writer of the
    #: files), or any :class:`~walsess.codec.Codec`. Held as the Codec object.
    codec: str | Codec = "json"
    #: The largest encoded value accepted (and replayed), in bytes.
    max_value_bytes: int = 1 << 20
    #: Compact in the background once snapshot plus log are larger than this
    #: many times the live data and larger than *compact_min_bytes*; above 1;
    #: None disables automatic compaction.
    compact_ratio: float | None = 2.0
    #: No automatic compaction while snapshot plus log are smaller than this.
    compact_min_bytes: int = 64 << 20
    #: Seconds between background :meth:`~walsess.Store.gc` runs (real time);
    #: 0 or None disables the cleanup thread (held as None).
    cleanup_interval: float | None = 60.0
    #: Refuse to create more live sessions than this (:class:`~walsess.StoreFull`,
    #: after a gc); live sessions are never evicted. None: no limit.
    max_sessions: int | None = None
    #: Seconds since the epoch; inject one in tests instead of sleeping.
    clock: Clock = time.time
    #: The file-system seam (tests inject faults through it).
    fs: FileSystem = OS

    def __post_init__(self) -> None:
        # The order of the checks is the order of the messages users have seen.
        if self.durability not in MODES:
            raise ValidationError(
                f"durability must be one of {', '.join(MODES)}, not {short_repr(self.durability)}"
            )
        if not callable(self.clock):
            raise ValidationError(
                f"clock must be a callable giving seconds, not {short_repr(self.clock)}"
            )
        if not isinstance(self.fs, FileSystem):
            raise ValidationError(
                f"fs must be a walsess.fileio.FileSystem, not {short_repr(self.fs)}"
            )
        if type(self.compact_min_bytes) is not int or self.compact_min_bytes < 0:
            raise ValidationError(
                f"compact_min_bytes must be an int >= 0, not {short_repr(self.compact_min_bytes)}"
            )
        if type(self.max_value_bytes) is not int:
            raise ValidationError(
                f"max_value_bytes must be an int, not {short_repr(self.max_value_bytes)}"
            )
        check_positive("default_ttl", self.default_ttl)
        check_positive("max_lifetime", self.max_lifetime, allow_none=True)
        check_positive("fsync_interval", self.fsync_interval)
        check_positive("touch_granularity", self.touch_granularity)
        if not 0 < self.max_value_bytes <= rec.MAX_PAYLOAD_BYTES // 2:
            raise ValidationError(f"max_value_bytes must be in 1..{rec.MAX_PAYLOAD_BYTES // 2}")
        if self.compact_ratio is not None:
            check_positive("compact_ratio", self.compact_ratio)
            if self.compact_ratio <= 1:
                # A snapshot of the live data is ~1x live: at or below 1 every
                # write would start another full compaction.
                raise ValidationError(
                    "compact_ratio must be above 1 (2.0 is the default),"
                    f" not {self.compact_ratio!r}"
                )
        if self.cleanup_interval:
            check_positive("cleanup_interval", self.cleanup_interval)
        for name, interval in (
            ("fsync_interval", self.fsync_interval),
            ("cleanup_interval", self.cleanup_interval),
        ):
            if interval and interval > threading.TIMEOUT_MAX:  # a thread waits this long
                raise ValidationError(f"{name} must be at most {threading.TIMEOUT_MAX:.0f} s")
        if self.max_sessions is not None and (
            type(self.max_sessions) is not int or self.max_sessions < 1
        ):
            raise ValidationError(
                f"max_sessions must be a positive int or None: {self.max_sessions!r}"
            )
        codec = resolve_codec(self.codec)
        # Normalised, so that equal settings compare equal: Options(codec="json")
        # == Options(codec=JSON), Options(cleanup_interval=0) == (...=None).
        # Frozen: the dataclass's own __setattr__ refuses, even here.
        set_field = object.__setattr__
        set_field(self, "fsync_interval", float(self.fsync_interval))
        set_field(self, "default_ttl", float(self.default_ttl))
        if self.max_lifetime is not None:
            set_field(self, "max_lifetime", float(self.max_lifetime))
        set_field(self, "touch_granularity", float(self.touch_granularity))
        set_field(self, "codec", codec)
        if self.compact_ratio is not None:
            set_field(self, "compact_ratio", float(self.compact_ratio))
        set_field(self, "cleanup_interval", float(self.cleanup_interval or 0) or None)

    @property
    def resolved_codec(self) -> Codec:
        """:attr:`codec` as the :class:`~walsess.Codec` it always is once built."""
        codec = self.codec
        assert not isinstance(codec, str)  # __post_init__ resolved the name
        return codec

    @classmethod
    def of(cls, base: Options | None = None, /, **settings: Any) -> Options:
        """*base* (the defaults if None) with the keyword *settings* in place of its own.

        This is how :func:`walsess.open` reads its arguments. A keyword that
        names no setting raises :class:`~walsess.ValidationError` listing the
        settings there are (before, the signature of ``open`` raised
        TypeError; a misspelt ``WALSESS_OPTIONS`` key deserves the list).

        Example::

            Options.of(durability="never") == Options(durability="never")
            Options.of(base, clock=clock) == dataclasses.replace(base, clock=clock)
        """
        if base is not None and not isinstance(base, Options):
            raise ValidationError(f"options must be a walsess.Options, not {short_repr(base)}")
        unknown = sorted(set(settings) - set(NAMES))
        if unknown:
            raise ValidationError(
                f"unknown option{'s' if len(unknown) > 1 else ''} {', '.join(unknown)};"
                f" the options are {', '.join(NAMES)}"
            )
        if base is None:
            return cls(**settings)
        return dataclasses.replace(base, **settings) if settings else base


#: The names of the settings, in declaration order.
NAMES: tuple[str, ...] = tuple(f.name for f in dataclasses.fields(Options))
