"""Every public entry point, given odd arguments, raises a walsess error (or
gives its documented result) and leaves the store directory as it was.

Odd means any type, lone surrogates, ints too large for a float, NaN and
infinities, bytes, containers, and plain objects. Issue 10, defect 7: these
used to escape as UnicodeEncodeError, OverflowError, AttributeError, plain
ValueError/TypeError, and ``open`` with a bad ``durability`` ran recovery
(cutting a torn tail, deleting temporary files) before refusing.
"""

from __future__ import annotations

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


OPEN_OPTIONS = [
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
