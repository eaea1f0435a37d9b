"""Value codecs: the JSON fast paths give exactly the json module's bytes and
values, and a whole-session read decodes exactly what key-by-key reads do."""

from __future__ import annotations

import json
from typing import Any

import pytest
from conftest import FakeClock
from hypothesis import given
from hypothesis import strategies as st

import walsess
from walsess.codec import JSON, PICKLE, decoder_of_all

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=12,
)


def reference(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=True, allow_nan=False).encode()


@given(json_values)
def test_encode_is_the_json_modules_compact_ascii_text(value: Any) -> None:
    assert JSON.encode(value) == reference(value)
    assert JSON.decode(JSON.encode(value)) == json.loads(reference(value))


@given(st.dictionaries(st.text(max_size=8), json_values, max_size=6))
def test_decode_all_is_decode_of_each_value(data: dict[str, Any]) -> None:
    raw = {k: JSON.encode(v) for k, v in data.items()}
    assert JSON.decode_all(raw) == {k: JSON.decode(v) for k, v in raw.items()}
    assert list(JSON.decode_all(raw)) == list(raw)  # key order kept


@pytest.mark.parametrize("bad", [b"", b"1,2", b"[1", b'"x', b"nul", b"1 2", b"\xff"])
def test_decode_all_rejects_what_decode_rejects(bad: bytes) -> None:
    raw = {"ok": b"1", "bad": bad}
    with pytest.raises(ValueError):
        JSON.decode(bad)
    with pytest.raises(ValueError):
        JSON.decode_all(raw)


def test_encode_fast_paths_keep_errors_and_subclasses() -> None:
    class Flag(int):
        def __repr__(self) -> str:
            return "Flag()"

    assert JSON.encode(Flag(3)) == b"3"  # the general encoder, as json.dumps does
    assert JSON.encode(True) == b"true"
    with pytest.raises(walsess.CodecError):
        JSON.encode(float("nan"))
    with pytest.raises(walsess.CodecError):
        JSON.encode(10**5000)  # beyond Python's int-to-str limit
    with pytest.raises(walsess.CodecError):
        JSON.encode({1j: 1})


class Rot13:
    """A codec with no decode_all: the store builds one from decode."""

    name = "rot13"

    def encode(self, value: Any) -> bytes:
        return bytes(b ^ 13 for b in reference(value))

    def decode(self, data: bytes) -> Any:
        return json.loads(bytes(b ^ 13 for b in data))


def test_decoder_of_all_for_codecs_with_and_without_it() -> None:
    raw = {"a": PICKLE.encode([1]), "b": PICKLE.encode("x")}
    assert decoder_of_all(PICKLE)(raw) == {"a": [1], "b": "x"}
    rot = Rot13()
    assert decoder_of_all(rot)({"a": rot.encode({"k": [1, 2]})}) == {"a": {"k": [1, 2]}}


def test_to_dict_through_a_custom_codec(store_dir: str, clock: FakeClock) -> None:
    with walsess.open(store_dir, clock=clock, codec=Rot13()) as store:
        s = store.create({"a": 1, "b": [2, "three"]})
        assert s.to_dict() == {"a": 1, "b": [2, "three"]}
    with walsess.open(store_dir, clock=clock, codec=Rot13()) as store:
        got = store.get(s.id)
        assert got is not None and got.to_dict() == {"a": 1, "b": [2, "three"]}
