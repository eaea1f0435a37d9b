"""Every public entry point, given odd arguments, raises a walsess error (or
gives its documented result) and leaves the store directory as it was.

Odd means any type, lone surrogates, ints too large for a float, NaN and
infinities, bytes, containers, and plain objects. Issue 10, defect 7: these
used to escape as UnicodeEncodeError, OverflowError, AttributeError, plain
ValueError/TypeError, and ``open`` with a bad ``durability`` ran recovery
(cutting a torn tail, deleting temporary files) before refusing.
"""

from __future__ import annotations

import dataclasses
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import walsess

ODD: st.SearchStrategy[Any] = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.sampled_from([10**400, -(10**400), 1e308, -0.0, 2**64]),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=20),
    st.sampled_from(["\ud800", "a\udfffb", "", "x" * 70_000, "\x00", "0123456789abcdef"]),
    st.binary(max_size=20),
    st.lists(st.integers(), max_size=3),
    st.lists(st.tuples(st.text(max_size=3), st.integers()), max_size=3),
    st.dictionaries(st.text(max_size=3), st.integers(), max_size=3),
    st.sampled_from([{"\ud800": 1}, {1: 2}, {"a": "\ud800"}, {"a": {1, 2}}, ("a", 1), object()]),
)

Call = Callable[[walsess.Store, walsess.Session, Any], object]

#: A background thread that dies of an odd option (a wait too long for the OS) fails the test.
pytestmark = pytest.mark.filterwarnings("error::pytest.PytestUnhandledThreadExceptionWarning")

CALLS: dict[str, Call] = {
    "get": lambda store, s, a: store.get(a),
    "exists": lambda store, s, a: store.exists(a),
    "contains": lambda store, s, a: a in store,
    "touch": lambda store, s, a: store.touch(a),
    "touch ttl": lambda store, s, a: store.touch(s.id, ttl=a),
    "destroy": lambda store, s, a: store.destroy(a),
    "revoke": lambda store, s, a: store.revoke(a),
    "regenerate": lambda store, s, a: store.regenerate(a),
    "regenerate user": lambda store, s, a: store.regenerate(s.id, user=a),
    "create data": lambda store, s, a: store.create(a),
    "create ttl": lambda store, s, a: store.create({}, ttl=a),
    "create max_lifetime": lambda store, s, a: store.create({}, max_lifetime=a),
    "create user": lambda store, s, a: store.create({}, user=a),
    "create meta": lambda store, s, a: store.create({}, meta=a),
    "sessions_of": lambda store, s, a: store.sessions_of(a),
    "destroy_user": lambda store, s, a: store.destroy_user(a),
    "destroy_user keep": lambda store, s, a: store.destroy_user("u", keep=[a]),
    "session set key": lambda store, s, a: s.__setitem__(a, 1),
    "session set value": lambda store, s, a: s.__setitem__("k", a),
    "session get": lambda store, s, a: s.get(a),
    "session contains": lambda store, s, a: a in s,
    "session update": lambda store, s, a: s.update(a),
    "session replace": lambda store, s, a: s.replace(a),
    "session write_encoded": lambda store, s, a: s.write_encoded(a),
    "session write_encoded value": lambda store, s, a: s.write_encoded({"k": a}),
}

#: Mapping lookups answer KeyError for a key that is not there, as any mapping does.
KEY_ERROR_OK = {"session getitem", "session delitem"}
CALLS["session getitem"] = lambda store, s, a: s[a]
CALLS["session delitem"] = lambda store, s, a: s.__delitem__(a)


def listing(directory: str) -> dict[str, int]:
    return {name: os.path.getsize(os.path.join(directory, name)) for name in os.listdir(directory)}


@pytest.mark.parametrize("name", sorted(CALLS))
@settings(max_examples=60)
@given(arg=ODD)
def test_odd_arguments_raise_walsess_errors_and_write_nothing(name: str, arg: Any) -> None:
    call = CALLS[name]
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "s")
        with walsess.open(path, cleanup_interval=None, compact_ratio=None) as store:
            s = store.create({"a": 1}, user="u")
            before = listing(path)
            try:
                call(store, s, arg)
            except walsess.WalsessError:
                assert listing(path) == before, "a refused call changed the store's files"
            except KeyError:
                assert name in KEY_ERROR_OK
                assert listing(path) == before


OPEN_OPTIONS = [field.name for field in dataclasses.fields(walsess.Options)]


def test_the_options_are_the_settings_open_has_always_had() -> None:
    """A setting added or dropped is a change of the public API: say so here."""
    assert OPEN_OPTIONS == [
        "durability",
        "fsync_interval",
        "default_ttl",
        "max_lifetime",
        "touch_granularity",
        "codec",
        "max_value_bytes",
        "compact_ratio",
        "compact_min_bytes",
        "cleanup_interval",
        "max_sessions",
        "clock",
        "fs",
    ]


@pytest.mark.parametrize("option", OPEN_OPTIONS)
@settings(max_examples=40)
@given(arg=ODD)
def test_open_refuses_odd_options_before_touching_any_file(option: str, arg: Any) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "s")
        try:
            store = walsess.open(path, **{option: arg})
        except walsess.WalsessError:
            assert not os.path.exists(path), "a refused open created the store"
        else:
            store.close()


def test_a_refused_open_does_not_recover_the_store(tmp_path: Path) -> None:
    """Before: open(DIR, durability="fsync") cut a torn tail and then refused."""
    path = str(tmp_path / "s")
    with walsess.open(path) as store:
        store.create({"a": 1})
    log = next(p for p in os.listdir(path) if p.endswith(".log"))
    with open(os.path.join(path, log), "ab") as f:
        f.write(b"\x01\x02\x03")  # a torn tail that recovery would cut
    before = listing(path)
    with pytest.raises(walsess.ValidationError, match="durability"):
        walsess.open(path, durability="fsync")
    with pytest.raises(walsess.ValidationError, match="codec"):
        walsess.open(path, codec="yaml")
    assert listing(path) == before


# -- Options ------------------------------------------------------------------------------


@pytest.mark.parametrize("option", OPEN_OPTIONS)
@settings(max_examples=40)
@given(arg=ODD)
def test_options_refuse_what_open_refuses(option: str, arg: Any) -> None:
    """One check for both doors: Options(x=v) raises exactly when open(x=v) does."""
    try:
        walsess.Options(**{option: arg})
    except walsess.ValidationError as refused:
        with (
            tempfile.TemporaryDirectory() as tmp,
            pytest.raises(walsess.ValidationError) as opening,
        ):
            walsess.open(os.path.join(tmp, "s"), **{option: arg})
        assert str(opening.value) == str(refused)
    # Any other exception escapes and fails the test.


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"durability": "fsync"}, "durability must be one of always, interval, never, not 'fsync'"),
        ({"clock": 3}, "clock must be a callable giving seconds, not 3"),
        ({"fs": "os"}, "fs must be a walsess.fileio.FileSystem, not 'os'"),
        ({"compact_min_bytes": -1}, "compact_min_bytes must be an int >= 0, not -1"),
        ({"max_value_bytes": 1.0}, "max_value_bytes must be an int, not 1.0"),
        ({"max_value_bytes": 0}, "max_value_bytes must be in 1.."),
        ({"default_ttl": 0}, "default_ttl must be a positive finite number of seconds, not 0"),
        ({"max_lifetime": True}, "max_lifetime must be a positive finite number of seconds"),
        ({"fsync_interval": 1e300}, "fsync_interval must be at most"),
        ({"touch_granularity": float("nan")}, "touch_granularity must be a positive finite"),
        ({"compact_ratio": 1}, "compact_ratio must be above 1 (2.0 is the default), not 1"),
        ({"cleanup_interval": -5}, "cleanup_interval must be a positive finite number"),
        ({"max_sessions": 0}, "max_sessions must be a positive int or None: 0"),
        ({"codec": "yaml"}, "unknown codec 'yaml'"),
        (
            {"default_ttl": "x" * 100},
            "default_ttl must be a positive finite number of seconds, not '" + "x" * 56 + "...",
        ),
    ],
)
def test_options_messages(settings: dict[str, Any], message: str) -> None:
    with pytest.raises(walsess.ValidationError) as refused:
        walsess.Options(**settings)
    assert str(refused.value).startswith(message)


def test_options_normalise_so_equal_settings_compare_equal() -> None:
    options = walsess.Options(
        default_ttl=60, max_lifetime=3600, fsync_interval=2, touch_granularity=5, compact_ratio=3
    )
    assert (options.default_ttl, options.max_lifetime) == (60.0, 3600.0)
    assert (options.fsync_interval, options.touch_granularity, options.compact_ratio) == (
        2.0,
        5.0,
        3.0,
    )
    assert all(
        type(value) is float
        for value in (options.default_ttl, options.max_lifetime, options.compact_ratio)
    )
    assert walsess.Options(codec="json") == walsess.Options(codec=walsess.JSON)
    assert walsess.Options(codec="pickle").codec is walsess.PICKLE
    assert walsess.Options(cleanup_interval=0).cleanup_interval is None
    assert walsess.Options(cleanup_interval=0) == walsess.Options(cleanup_interval=None)
    assert walsess.Options() != walsess.Options(durability="always")


def test_options_are_frozen_and_replace_checks_again() -> None:
    options = walsess.Options(durability="never")
    with pytest.raises(dataclasses.FrozenInstanceError):
        options.durability = "always"  # type: ignore[misc]
    # Slots: no stray attributes either. (Python < 3.12 raises TypeError here, from the
    # frozen __setattr__ of a class that slots=True rebuilt.)
    with pytest.raises((AttributeError, TypeError)):
        options.colour = "blue"  # type: ignore[attr-defined]
    assert not hasattr(options, "__dict__")
    stricter = dataclasses.replace(options, durability="always", codec="pickle")
    assert (stricter.durability, stricter.codec) == ("always", walsess.PICKLE)
    assert options.durability == "never"
    with pytest.raises(walsess.ValidationError, match="compact_ratio must be above 1"):
        dataclasses.replace(options, compact_ratio=0.5)


def test_open_with_options_equals_open_with_keywords(tmp_path: Path) -> None:
    clock = walsess.ManualClock(1.7e9)
    keywords: dict[str, Any] = {
        "durability": "never",
        "default_ttl": 100,
        "cleanup_interval": None,
        "compact_ratio": None,
        "max_sessions": 5,
        "clock": clock,
    }
    with walsess.open(tmp_path / "a", **keywords) as by_keywords:
        pass
    with walsess.open(tmp_path / "b", walsess.Options(**keywords)) as by_options:
        pass
    with walsess.open(tmp_path / "c", options=walsess.Options(**keywords)) as by_name:
        pass
    assert by_keywords.options == by_options.options == by_name.options
    assert by_keywords.options == walsess.Options(**keywords)
    # The store's own attributes read the same settings.
    store = by_options
    assert (store.durability, store.default_ttl, store.max_sessions) == ("never", 100.0, 5)
    assert (store.cleanup_interval, store.compact_ratio, store.codec) == (None, None, walsess.JSON)
    assert store.max_value_bytes == walsess.Options().max_value_bytes


def test_open_keywords_override_options(tmp_path: Path) -> None:
    base = walsess.Options(durability="never", cleanup_interval=None, default_ttl=100)
    with walsess.open(tmp_path / "s", base, default_ttl=200) as store:
        assert store.options == dataclasses.replace(base, default_ttl=200)
        assert store.default_ttl == 200.0
    assert base.default_ttl == 100.0
    with walsess.open(tmp_path / "s") as store:
        assert store.options == walsess.Options()


@pytest.mark.parametrize("bad", [{"durabilty": "always"}, {"ttl": 60, "colour": "blue"}])
def test_open_refuses_an_unknown_keyword_naming_it_and_the_settings(
    tmp_path: Path, bad: dict[str, Any]
) -> None:
    path = tmp_path / "s"
    with pytest.raises(walsess.ValidationError) as refused:
        walsess.open(path, **bad)
    message = str(refused.value)
    for name in bad:
        assert name in message.split(";")[0]
    assert all(name in message for name in OPEN_OPTIONS)
    assert not path.exists()


def test_open_refuses_options_that_are_not_options(tmp_path: Path) -> None:
    path = tmp_path / "s"
    for bad in ({"durability": "always"}, "always"):
        with pytest.raises(walsess.ValidationError, match=r"options must be a walsess\.Options"):
            walsess.open(path, bad)  # type: ignore[arg-type]
        with pytest.raises(walsess.ValidationError, match=r"options must be a walsess\.Options"):
            walsess.open(path, bad, default_ttl=5)  # type: ignore[arg-type]
    assert not path.exists()
