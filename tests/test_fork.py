"""A store used after os.fork(): the child is refused, the parent keeps working.

Under gunicorn --preload, multiprocessing or a prefork task pool, a store
opened before the fork is inherited with its log descriptor and lock. Two
processes appending to one log lose one side's sessions at the next restart,
so the child must be refused, write nothing, and be able to open the store
itself once the parent has closed it. Tested with a real fork.
"""

from __future__ import annotations

import os
import pickle
from collections.abc import Callable
from typing import Any

import pytest

import walsess

pytestmark = pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")


def _fork(body: Callable[[], int]) -> int:
    """Run *body* in a forked child, whose exit status is its return value; the pid."""
    pid = os.fork()
    if pid == 0:  # pragma: no cover - runs in the child
        status = 99
        try:
            status = body()
        except BaseException as exc:
            os.write(2, f"child failed: {exc!r}\n".encode())
        finally:
            os._exit(status)
    return pid


def _exit_code(pid: int) -> int:
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status)


@pytest.mark.parametrize("durability", ["always", "interval", "never"])
def test_child_is_refused_and_parent_keeps_every_session(store_dir: str, durability: str) -> None:
    store = walsess.open(store_dir, durability=durability)
    handle = store.create({"n": 0}, user="u")
    token = handle.id
    log_bytes = store.stats()["log_bytes"]
    parent_to_child_r, parent_to_child_w = os.pipe()
    child_to_parent_r, child_to_parent_w = os.pipe()

    calls: list[tuple[str, Callable[[], Any]]] = [
        ("create", lambda: store.create({"x": 1})),
        ("get", lambda: store.get(token)),
        ("exists", lambda: store.exists(token)),
        ("touch", lambda: store.touch(token)),
        ("destroy", lambda: store.destroy(token)),
        ("regenerate", lambda: store.regenerate(token)),
        ("revoke", lambda: store.revoke(handle.ref)),
        ("set", lambda: handle.__setitem__("n", 1)),
        ("read", lambda: handle["n"]),
        ("update", lambda: handle.update(a=1)),
        ("sessions", lambda: list(store.sessions())),
        ("sessions_of", lambda: store.sessions_of("u")),
        ("destroy_user", lambda: store.destroy_user("u")),
        ("gc", lambda: store.gc()),
        ("compact", lambda: store.compact()),
        ("sync", lambda: store.sync()),
        ("stats", lambda: store.stats()),
        ("len", lambda: len(store)),
    ]

    def child() -> int:
        failures = 0
        for name, call in calls:
            try:
                call()
            except walsess.StoreForked as exc:
                if "--preload" not in str(exc) or str(os.getpid()) not in str(exc):
                    os.write(2, f"{name}: unhelpful message {exc}\n".encode())
                    failures += 1
            except BaseException as exc:
                os.write(2, f"{name}: {exc!r}\n".encode())
                failures += 1
            else:
                os.write(2, f"{name}: was not refused\n".encode())
                failures += 1
        store.close()  # harmless: must not unlock or sync the parent's store
        os.write(child_to_parent_w, b"checked")
        os.read(parent_to_child_r, 1)  # the parent has closed its store
        with walsess.open(store_dir) as own:  # now the child may open it
            own_session = own.get(token)
            if own_session is None or own_session["n"] != 50:
                return 2
            own.create({"from": "child"})
        return min(failures, 90)

    pid = _fork(child)
    assert os.read(child_to_parent_r, 16) == b"checked"
    # The child wrote nothing, and its close() left the parent's lock held.
    assert store.stats()["log_bytes"] == log_bytes
    with pytest.raises(walsess.LockedError):
        walsess.open(store_dir)
    for i in range(50):
        handle["n"] = i + 1
        store.create({"parent": i})
    store.close()
    os.write(parent_to_child_w, b"go")
    assert _exit_code(pid) == 0
    with walsess.open(store_dir) as again:
        assert len(again) == 52  # the first, 50 of the parent's, the child's own
        assert again.get(token)["n"] == 50  # type: ignore[index]


def test_session_handle_in_child_is_refused(store_dir: str) -> None:
    with walsess.open(store_dir) as store:
        s = store.create({"a": 1})

        def child() -> int:
            try:
                s.to_dict()
            except walsess.StoreForked:
                return 0
            return 1

        assert _exit_code(_fork(child)) == 0
        assert s.to_dict() == {"a": 1}


def test_store_cannot_be_pickled(store: walsess.Store) -> None:
    with pytest.raises(TypeError, match="cannot be pickled"):
        pickle.dumps(store)


def test_forked_error_is_a_closed_error() -> None:
    assert issubclass(walsess.StoreForked, walsess.StoreClosed)
    assert issubclass(walsess.StoreForked, walsess.WalsessError)
