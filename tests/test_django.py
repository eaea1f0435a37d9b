"""walsess.django: SESSION_ENGINE = "walsess.django", tested two ways.

1. ``SessionStore`` directly, for every behaviour Django's own session test
   suite checks for each backend (written here as our own tests).
2. Through Django's test ``Client`` with the real SessionMiddleware and
   AuthenticationMiddleware and a urlconf in this module: login, cycle and
   logout; nested changes; unknown, expired and malformed cookies; cookie
   attributes; nothing stored and nothing written when nothing changed; two
   overlapping requests; a logout racing a change.

Django's settings are process-global: they are configured once, below, and
each test gets its own store directory (``WALSESS_PATH``) and ManualClock
through the ``django_store`` fixture (``close_store()`` + ``override_settings``).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import threading
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import django
import pytest
from django.conf import settings
from django.contrib.auth import get_user_model
from django.contrib.auth import login as auth_login
from django.contrib.auth import logout as auth_logout
from django.contrib.sessions.backends.base import CreateError, UpdateError
from django.core.management import call_command
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.test import Client, override_settings
from django.urls import path

import walsess
from walsess import django as walsess_django
from walsess.clock import ManualClock
from walsess.django import SessionStore

COOKIE = "sessionid"
DAY = 86400

if not settings.configured:
    settings.configure(
        SECRET_KEY="walsess-tests-only",
        ALLOWED_HOSTS=["testserver"],
        ROOT_URLCONF=__name__,
        INSTALLED_APPS=[
            "django.contrib.contenttypes",
            "django.contrib.auth",
            "django.contrib.sessions",
        ],
        MIDDLEWARE=[
            "django.contrib.sessions.middleware.SessionMiddleware",
            "django.contrib.auth.middleware.AuthenticationMiddleware",
        ],
        SESSION_ENGINE="walsess.django",
        DATABASES={"default": {"ENGINE": "django.db.backends.sqlite3", "NAME": ":memory:"}},
        PASSWORD_HASHERS=["django.contrib.auth.hashers.MD5PasswordHasher"],
        DEFAULT_AUTO_FIELD="django.db.models.AutoField",
        USE_TZ=True,
    )
    django.setup()


# -- the app ------------------------------------------------------------------------------

#: Set by the overlap test: both requests wait here after loading the session.
BARRIER: threading.Barrier | None = None


def noop(request: HttpRequest) -> HttpResponse:
    return HttpResponse("ok")


def read(request: HttpRequest, key: str) -> JsonResponse:
    return JsonResponse({"value": request.session.get(key)})


def dump(request: HttpRequest) -> JsonResponse:
    return JsonResponse(dict(request.session.items()))


def set_key(request: HttpRequest, key: str, value: str) -> HttpResponse:
    request.session[key] = value
    return HttpResponse("ok")


def append(request: HttpRequest, key: str, item: int) -> HttpResponse:
    # A change inside a value: Django's own backends need session.modified = True.
    request.session[key].append(item)
    return HttpResponse("ok")


def start_cart(request: HttpRequest) -> HttpResponse:
    request.session["cart"] = []
    return HttpResponse("ok")


def expiry(request: HttpRequest, seconds: int) -> HttpResponse:
    request.session["x"] = 1
    request.session.set_expiry(seconds)
    return HttpResponse("ok")


def cycle(request: HttpRequest) -> HttpResponse:
    request.session.cycle_key()
    return HttpResponse("ok")


def login(request: HttpRequest, username: str) -> HttpResponse:
    auth_login(request, get_user_model().objects.get(username=username))
    return HttpResponse("ok")


def logout(request: HttpRequest) -> HttpResponse:
    auth_logout(request)
    return HttpResponse("ok")


def whoami(request: HttpRequest) -> JsonResponse:
    user = request.user
    return JsonResponse({"user": user.get_username() if user.is_authenticated else None})


def slow_set(request: HttpRequest, key: str, value: str) -> HttpResponse:
    request.session.get(key)  # loaded before the other request commits
    assert BARRIER is not None
    BARRIER.wait(timeout=10)
    request.session[key] = value
    return HttpResponse("ok")


def logout_elsewhere_then_set(request: HttpRequest) -> HttpResponse:
    request.session.get("a")
    SessionStore(request.session.session_key).delete()  # a logout in another request
    request.session["a"] = "changed"
    return HttpResponse("ok")


urlpatterns = [
    path("noop", noop),
    path("read/<str:key>", read),
    path("dump", dump),
    path("set/<str:key>/<str:value>", set_key),
    path("append/<str:key>/<int:item>", append),
    path("cart", start_cart),
    path("expiry/<int:seconds>", expiry),
    path("cycle", cycle),
    path("login/<str:username>", login),
    path("logout", logout),
    path("whoami", whoami),
    path("slow-set/<str:key>/<str:value>", slow_set),
    path("logout-elsewhere", logout_elsewhere_then_set),
]


# -- fixtures -----------------------------------------------------------------------------


@pytest.fixture
def django_store(tmp_path: Path, clock: ManualClock) -> Iterator[walsess.Store]:
    """This test's store: its own directory and clock, reopened by the next use."""
    walsess_django.close_store()
    options = {"clock": clock, "cleanup_interval": None}
    with override_settings(WALSESS_PATH=str(tmp_path / "sessions"), WALSESS_OPTIONS=options):
        try:
            yield walsess_django.get_store()
        finally:
            walsess_django.close_store()


@pytest.fixture(scope="module")
def users() -> None:
    call_command("migrate", verbosity=0, interactive=False)
    model = get_user_model()
    for name in ("alice", "bob"):
        if not model.objects.filter(username=name).exists():
            model.objects.create_user(name, password="pw")


def reopen() -> walsess.Store:
    """Close the store and open it again: what follows is read back from the files."""
    walsess_django.close_store()
    return walsess_django.get_store()


def appended(store: walsess.Store) -> int:
    return int(store.stats()["records_appended"])


def token_of(client: Client) -> str:
    return str(client.cookies[COOKIE].value)


# == SessionStore: what Django's suite checks for every backend ==========================


@pytest.fixture
def session(django_store: walsess.Store) -> SessionStore:
    return SessionStore()


def test_new_session(session: SessionStore) -> None:
    assert session.modified is False
    assert session.accessed is False


def test_get_empty(session: SessionStore) -> None:
    assert session.get("cat") is None


def test_store(session: SessionStore) -> None:
    session["cat"] = "dog"
    assert session.modified is True
    assert session.pop("cat") == "dog"


def test_pop(session: SessionStore) -> None:
    session["some key"] = "exists"
    session.accessed = False
    session.modified = False
    assert session.pop("some key") == "exists"
    assert session.accessed is True
    assert session.modified is True
    assert session.get("some key") is None


def test_pop_default(session: SessionStore) -> None:
    assert session.pop("some key", "does not exist") == "does not exist"
    assert session.pop("some key", default="does not exist") == "does not exist"
    assert session.accessed is True
    assert session.modified is False


def test_pop_no_default_raises_key_error(session: SessionStore) -> None:
    with pytest.raises(KeyError):
        session.pop("some key")


def test_setdefault(session: SessionStore) -> None:
    assert session.setdefault("foo", "bar") == "bar"
    assert session.setdefault("foo", "baz") == "bar"
    assert session.accessed is True
    assert session.modified is True


def test_update(session: SessionStore) -> None:
    session.update({"update key": 1})
    assert session.accessed is True
    assert session.modified is True
    assert session.get("update key") == 1


def test_has_key(session: SessionStore) -> None:
    session["some key"] = 1
    session.modified = False
    session.accessed = False
    assert "some key" in session
    assert session.has_key("some key")
    assert session.accessed is True
    assert session.modified is False


def test_values_keys_items(session: SessionStore) -> None:
    assert list(session.values()) == []
    assert session.accessed is True
    session["x"] = 1
    session.modified = False
    session.accessed = False
    assert list(session.values()) == [1]
    assert list(session.keys()) == ["x"]
    assert list(session.items()) == [("x", 1)]
    assert session.accessed is True
    assert session.modified is False


def test_clear(session: SessionStore) -> None:
    session["x"] = 1
    session.modified = False
    session.accessed = False
    assert list(session.items()) == [("x", 1)]
    session.clear()
    assert list(session.items()) == []
    assert session.accessed is True
    assert session.modified is True


def test_save_creates_even_an_empty_session(
    session: SessionStore, django_store: walsess.Store
) -> None:
    session.save()
    assert session.exists(session.session_key) is True
    assert len(reopen()) == 1


def test_save_keeps_data_and_writes_it(session: SessionStore) -> None:
    session["a"] = "b"
    session.save()
    assert session["a"] == "b"  # save doesn't clear data
    assert reopen().get(session.session_key) == {"a": "b"}


def test_delete(session: SessionStore) -> None:
    session.save()
    session.delete(session.session_key)
    assert session.exists(session.session_key) is False
    assert len(reopen()) == 0


def test_flush(session: SessionStore) -> None:
    session["foo"] = "bar"
    session.save()
    prev_key = session.session_key
    session.flush()
    assert session.exists(prev_key) is False
    assert session.session_key is None
    assert session.modified is True
    assert session.accessed is True
    assert len(reopen()) == 0


def test_cycle(session: SessionStore, django_store: walsess.Store) -> None:
    session["a"], session["b"] = "c", "d"
    session.save()
    prev_key = session.session_key
    prev_data = list(session.items())
    before = appended(django_store)
    session.cycle_key()
    assert appended(django_store) == before + 1  # one CHANGE_ID record, data not rewritten
    assert session.exists(prev_key) is False
    assert session.session_key != prev_key
    assert list(session.items()) == prev_data
    assert reopen().get(session.session_key) == {"a": "c", "b": "d"}


def test_cycle_with_no_session_cache(session: SessionStore) -> None:
    session["a"], session["b"] = "c", "d"
    session.save()
    prev_key = session.session_key
    fresh = SessionStore(prev_key)
    assert not hasattr(fresh, "_session_cache")
    fresh.cycle_key()
    assert sorted(fresh.items()) == [("a", "c"), ("b", "d")]
    assert fresh.session_key != prev_key
    assert fresh.exists(prev_key) is False


def test_cycle_of_a_session_not_stored_yet_keys_it_at_save(session: SessionStore) -> None:
    session["a"] = 1
    session.cycle_key()
    assert session.session_key is None  # like signed_cookies: the key exists once saved
    session.save()
    assert session.exists(session.session_key)
    assert SessionStore(session.session_key)["a"] == 1


def test_invalid_key(django_store: walsess.Store) -> None:
    session = SessionStore("1")
    session.save()
    assert session.session_key != "1"
    assert session.get("cat") is None
    session.delete()
    session.delete("1")
    assert len(django_store) == 0


@pytest.mark.parametrize("key", ["", "1234567"])
def test_session_key_empty_or_too_short_is_invalid(session: SessionStore, key: str) -> None:
    session._session_key = key
    assert session.session_key is None


def test_session_key_valid_string_is_kept_until_load(session: SessionStore) -> None:
    session._session_key = "12345678"
    assert session.session_key == "12345678"
    session.load()  # the store does not know it: never adopted
    assert session.session_key is None


def test_session_key_is_read_only(session: SessionStore) -> None:
    with pytest.raises(AttributeError):
        session.session_key = "a" * 43  # type: ignore[misc]


def test_default_expiry(session: SessionStore) -> None:
    assert session.get_expiry_age() == settings.SESSION_COOKIE_AGE
    session.set_expiry(0)  # a browser-length cookie, with the default age in the store
    assert session.get_expiry_age() == settings.SESSION_COOKIE_AGE


def test_custom_expiry_seconds(session: SessionStore) -> None:
    modification = datetime.now().astimezone()
    session.set_expiry(10)
    assert session.get_expiry_date(modification=modification) == modification + timedelta(
        seconds=10
    )
    assert session.get_expiry_age(modification=modification) == 10


def test_custom_expiry_timedelta_uses_the_store_clock(
    session: SessionStore, clock: ManualClock
) -> None:
    session.set_expiry(timedelta(seconds=10))
    assert session.get_expiry_age() == 10
    clock.advance(4)
    assert session.get_expiry_age() == 6
    modification = SessionStore._now()
    assert session.get_expiry_date() == modification + timedelta(seconds=6)


def test_custom_expiry_datetime(session: SessionStore) -> None:
    modification = SessionStore._now()
    session.set_expiry(modification + timedelta(seconds=10))
    assert session.get_expiry_date(modification=modification) == modification + timedelta(
        seconds=10
    )
    assert session.get_expiry_age(modification=modification) == 10


def test_custom_expiry_reset(session: SessionStore) -> None:
    session.set_expiry(None)
    session.set_expiry(10)
    session.set_expiry(None)
    assert session.get_expiry_age() == settings.SESSION_COOKIE_AGE


@pytest.mark.parametrize("at_browser_close", [False, True])
def test_get_expire_at_browser_close(session: SessionStore, at_browser_close: bool) -> None:
    with override_settings(SESSION_EXPIRE_AT_BROWSER_CLOSE=at_browser_close):
        session.set_expiry(10)
        assert session.get_expire_at_browser_close() is False
        session.set_expiry(0)
        assert session.get_expire_at_browser_close() is True
        session.set_expiry(None)
        assert session.get_expire_at_browser_close() is at_browser_close


def test_expiry_is_the_store_ttl_and_slides(
    session: SessionStore, django_store: walsess.Store, clock: ManualClock
) -> None:
    session["foo"] = "bar"
    session.set_expiry(60)
    session.save()
    key = session.session_key
    handle = django_store.get(key)
    assert handle is not None and handle.ttl == 60
    clock.advance(50)
    assert SessionStore(key)["foo"] == "bar"  # a read extends the idle deadline
    clock.advance(50)
    assert SessionStore(key).get("foo") == "bar"
    clock.advance(61)
    gone = SessionStore(key)
    assert "foo" not in gone
    assert gone.session_key is None


def test_actual_expiry_past_datetime(session: SessionStore, django_store: walsess.Store) -> None:
    session["foo"] = "bar"
    session.set_expiry(-timedelta(seconds=10))
    session.save()
    assert session.session_key is None
    assert len(django_store) == 0
    assert "foo" not in SessionStore(session.session_key)


def test_actual_expiry_absolute_datetime_is_not_slid_by_reads(
    session: SessionStore, django_store: walsess.Store, clock: ManualClock
) -> None:
    session["foo"] = "bar"
    session.set_expiry(timedelta(seconds=100))  # at a fixed time, not idle
    session.save()
    key = session.session_key
    clock.advance(50)
    assert SessionStore(key)["foo"] == "bar"  # the store slides its own deadline to 150
    clock.advance(51)
    late = SessionStore(key)
    assert "foo" not in late
    assert late.session_key is None
    assert django_store.exists(key) is False  # destroyed at that load


def test_non_positive_age_destroys_a_stored_session(
    session: SessionStore, django_store: walsess.Store
) -> None:
    session["foo"] = "bar"
    session.save()
    key = session.session_key
    session.set_expiry(SessionStore._now() - timedelta(seconds=1))
    session.save()
    assert django_store.exists(key) is False
    assert session.session_key is None


def test_session_load_does_not_create_record(django_store: walsess.Store) -> None:
    before = appended(django_store)
    session = SessionStore("someunknownkey")
    assert session.load() == {}
    assert session.session_key is None
    assert session.exists(session.session_key) is False
    assert appended(django_store) == before
    assert len(django_store) == 0


def test_save_does_not_resurrect_session_logged_out_elsewhere(
    django_store: walsess.Store,
) -> None:
    s1 = SessionStore()
    s1["test_data"] = "value1"
    s1.save(must_create=True)
    key = s1.session_key
    SessionStore(key).delete()  # logout in another context
    s1["test_data"] = "value2"
    with pytest.raises(UpdateError):
        s1.save()
    assert s1.load() == {}
    assert len(reopen()) == 0


def test_save_after_load_does_not_resurrect_either(django_store: walsess.Store) -> None:
    s1 = SessionStore()
    s1["n"] = 1
    s1.save()
    s2 = SessionStore(s1.session_key)
    assert s2["n"] == 1  # loaded while live
    s1.delete()
    s2["n"] = 2
    with pytest.raises(UpdateError):
        s2.save()
    assert len(reopen()) == 0


def test_save_must_create_raises_create_error_if_it_exists(session: SessionStore) -> None:
    session["a"] = 1
    session.save()
    with pytest.raises(CreateError):
        session.save(must_create=True)
    with pytest.raises(CreateError):
        SessionStore(session.session_key).save(must_create=True)


def test_save_must_create_never_adopts_the_given_key(django_store: walsess.Store) -> None:
    session = SessionStore("x" * 43)
    session["a"] = 1
    session.save(must_create=True)
    assert session.session_key != "x" * 43
    assert django_store.exists("x" * 43) is False
    assert reopen().get(session.session_key) == {"a": 1}


def test_create_stores_a_new_session_now(session: SessionStore) -> None:
    session["a"] = 1
    session.create()
    assert session.modified is True
    assert session.exists(session.session_key)
    assert reopen().get(session.session_key) == {"a": 1}


def test_save_writes_only_the_changed_keys(
    session: SessionStore, django_store: walsess.Store
) -> None:
    session.update({"a": 1, "b": [1, 2]})
    session.save()
    key = session.session_key
    again = SessionStore(key)
    assert again["a"] == 1
    again.save()  # nothing changed, same expiry
    other = SessionStore(key)
    other["b"].append(3)  # nested: no modified flag needed
    assert other.modified is True
    before = appended(django_store)
    other.save()
    assert appended(django_store) == before + 1
    assert reopen().get(key) == {"a": 1, "b": [1, 2, 3]}


def test_clear_deletes_only_the_keys_this_request_saw(django_store: walsess.Store) -> None:
    first = SessionStore()
    first["a"] = 1
    first.save()
    key = first.session_key
    mine = SessionStore(key)
    assert mine["a"] == 1  # loaded before the other request adds "b"
    other = SessionStore(key)
    other["b"] = 2
    other.save()
    mine.clear()
    mine.save()
    assert reopen().get(key) == {"b": 2}


def test_clear_expired(django_store: walsess.Store, clock: ManualClock) -> None:
    keep = SessionStore()
    keep["foo"] = "bar"
    keep.set_expiry(3600)
    keep.save()
    old = SessionStore()
    old["foo"] = "bar"
    old.set_expiry(60)
    old.save()
    clock.advance(61)
    assert django_store.stats()["stored_sessions"] == 2
    call_command("clearsessions")  # SessionStore.clear_expired, as cron would run it
    assert django_store.stats()["stored_sessions"] == 1
    assert reopen().stats()["stored_sessions"] == 1


def test_async_api(session: SessionStore, clock: ManualClock) -> None:
    import asyncio

    async def run() -> tuple[str, Any]:
        await session.aset("a", 1)
        await session.aset_expiry(timedelta(seconds=10))
        clock.advance(4)
        assert await session.aget_expiry_age() == 6
        assert await session.aget_expiry_date() == SessionStore._now() + timedelta(seconds=6)
        await session.asave()
        key = session.session_key
        other = SessionStore(key)
        value = await other.aget("a")
        await other.acycle_key()
        assert other.session_key != key
        await other.aflush()
        return key, value

    key, value = asyncio.run(run())
    assert value == 1
    assert session.exists(key) is False


# == through Django's test Client and middleware =========================================


def test_no_session_and_no_cookie_for_a_request_that_stores_nothing(
    django_store: walsess.Store,
) -> None:
    client = Client()
    before = appended(django_store)
    for url in ("/noop", "/read/a", "/dump"):
        response = client.get(url)
        assert response.status_code == 200
        assert COOKIE not in response.cookies
    assert appended(django_store) == before
    assert len(django_store) == 0


def test_session_round_trip_and_no_record_for_an_unchanged_request(
    django_store: walsess.Store,
) -> None:
    client = Client()
    response = client.get("/set/a/1")
    token = response.cookies[COOKIE].value
    assert django_store.get(token) == {"a": "1"}
    before = appended(django_store)
    response = client.get("/read/a")
    assert response.json() == {"value": "1"}
    assert COOKIE not in response.cookies  # nothing to tell the client
    assert appended(django_store) == before
    with override_settings(SESSION_SAVE_EVERY_REQUEST=True):
        response = client.get("/read/a")
    assert response.cookies[COOKIE].value == token  # re-sent, and still nothing written
    assert appended(django_store) == before


def test_save_every_request_gives_an_unknown_cookie_no_session(
    django_store: walsess.Store,
) -> None:
    client = Client()
    client.cookies[COOKIE] = "x" * 43
    with override_settings(SESSION_SAVE_EVERY_REQUEST=True):
        response = client.get("/noop")
    assert response.cookies[COOKIE].value == ""  # deleted, not replaced
    assert response.cookies[COOKIE]["max-age"] == 0
    assert len(django_store) == 0


def test_nested_mutation_is_saved(django_store: walsess.Store) -> None:
    client = Client()
    client.get("/cart")
    client.get("/append/cart/1")
    client.get("/append/cart/2")
    assert client.get("/read/cart").json() == {"value": [1, 2]}
    assert reopen().get(token_of(client)) == {"cart": [1, 2]}


@pytest.mark.parametrize(
    "cookie",
    ["bogus", "x" * 43, "../../etc/passwd", "a" * 600, "é" * 20],
    ids=["short", "unknown", "path", "long", "non-ascii"],
)
def test_unknown_or_malformed_cookie_is_never_adopted(
    django_store: walsess.Store, cookie: str
) -> None:
    client = Client()
    client.cookies[COOKIE] = cookie
    before = appended(django_store)
    response = client.get("/read/a")
    assert response.json() == {"value": None}
    assert appended(django_store) == before  # nothing created for it
    response = client.get("/set/a/1")
    token = response.cookies[COOKIE].value
    assert token != cookie
    assert django_store.exists(cookie) is False
    assert reopen().get(token) == {"a": "1"}


def test_expired_cookie_gets_a_new_session(django_store: walsess.Store, clock: ManualClock) -> None:
    client = Client()
    old = client.get("/set/a/1").cookies[COOKIE].value
    clock.advance(settings.SESSION_COOKIE_AGE + 1)
    assert client.get("/read/a").json() == {"value": None}
    new = client.get("/set/b/2").cookies[COOKIE].value
    assert new != old
    assert django_store.get(new) == {"b": "2"}
    assert django_store.exists(old) is False


def test_default_cookie_attributes(django_store: walsess.Store) -> None:
    cookie = Client().get("/set/a/1").cookies[COOKIE]
    assert cookie["httponly"] is True
    assert cookie["samesite"] == "Lax"
    assert cookie["secure"] == ""
    assert cookie["path"] == "/"
    assert cookie["domain"] == ""
    assert cookie["max-age"] == settings.SESSION_COOKIE_AGE
    handle = django_store.get(cookie.value)
    assert handle is not None and handle.ttl == settings.SESSION_COOKIE_AGE


def test_cookie_attributes_from_settings(django_store: walsess.Store) -> None:
    with override_settings(
        SESSION_COOKIE_NAME="sid",
        SESSION_COOKIE_SECURE=True,
        SESSION_COOKIE_DOMAIN="example.com",
        SESSION_COOKIE_PATH="/",
        SESSION_COOKIE_SAMESITE="Strict",
        SESSION_COOKIE_AGE=600,
    ):
        cookie = Client().get("/set/a/1").cookies["sid"]
    assert cookie["secure"] is True
    assert cookie["domain"] == "example.com"
    assert cookie["samesite"] == "Strict"
    assert cookie["httponly"] is True
    assert cookie["max-age"] == 600
    handle = django_store.get(cookie.value)
    assert handle is not None and handle.ttl == 600


def test_set_expiry_through_the_middleware(django_store: walsess.Store) -> None:
    client = Client()
    cookie = client.get("/expiry/300").cookies[COOKIE]
    assert cookie["max-age"] == 300
    handle = django_store.get(cookie.value)
    assert handle is not None and handle.ttl == 300
    cookie = client.get("/expiry/0").cookies[COOKIE]  # browser-length cookie
    assert cookie["max-age"] == "" and cookie["expires"] == ""
    handle = django_store.get(cookie.value)
    assert handle is not None and handle.ttl == settings.SESSION_COOKIE_AGE


def test_cycle_key_through_the_middleware(django_store: walsess.Store) -> None:
    client = Client()
    old = client.get("/set/a/1").cookies[COOKIE].value
    new = client.get("/cycle").cookies[COOKIE].value
    assert new != old
    assert django_store.exists(old) is False
    assert client.get("/read/a").json() == {"value": "1"}


def test_login_regenerates_binds_the_user_and_logout_destroys(
    django_store: walsess.Store, users: None
) -> None:
    client = Client()
    anonymous = client.get("/set/cart/3").cookies[COOKIE].value
    assert client.get("/whoami").json() == {"user": None}

    logged_in = client.get("/login/alice").cookies[COOKIE].value
    assert logged_in != anonymous
    assert django_store.exists(anonymous) is False  # no fixation
    assert client.get("/whoami").json() == {"user": "alice"}
    assert client.get("/read/cart").json() == {"value": "3"}  # data kept across login
    alice = str(get_user_model().objects.get(username="alice").pk)
    assert [i.ref for i in django_store.sessions_of(alice)] == [
        django_store.get(logged_in).ref  # type: ignore[union-attr]
    ]

    response = client.get("/logout")
    assert response.cookies[COOKIE].value == ""
    assert response.cookies[COOKIE]["max-age"] == 0
    assert django_store.exists(logged_in) is False
    assert django_store.sessions_of(alice) == []
    assert client.get("/whoami").json() == {"user": None}
    assert len(reopen()) == 0


def test_login_of_a_new_visitor_creates_one_owned_session(
    django_store: walsess.Store, users: None
) -> None:
    client = Client()
    before = appended(django_store)
    token = client.get("/login/bob").cookies[COOKIE].value
    assert appended(django_store) == before + 1  # one CREATE, with the owner
    bob = str(get_user_model().objects.get(username="bob").pk)
    handle = django_store.get(token)
    assert handle is not None and handle.user == bob


def test_login_as_another_user_flushes(django_store: walsess.Store, users: None) -> None:
    client = Client()
    alice_token = client.get("/login/alice").cookies[COOKIE].value
    client.get("/set/secret/alice-only")
    bob_token = client.get("/login/bob").cookies[COOKIE].value
    assert bob_token != alice_token
    assert django_store.exists(alice_token) is False
    assert client.get("/read/secret").json() == {"value": None}
    assert client.get("/whoami").json() == {"user": "bob"}


def test_test_client_force_login_and_logout(django_store: walsess.Store, users: None) -> None:
    client = Client()
    client.force_login(get_user_model().objects.get(username="alice"))
    token = token_of(client)
    assert django_store.exists(token)
    assert client.get("/whoami").json() == {"user": "alice"}
    client.logout()
    assert django_store.exists(token) is False


def test_logout_in_another_request_interrupts_a_change(django_store: walsess.Store) -> None:
    client = Client()
    token = client.get("/set/a/1").cookies[COOKIE].value
    response = client.get("/logout-elsewhere")
    assert response.status_code == 400  # SessionInterrupted, as Django's backends do
    assert django_store.exists(token) is False
    assert len(reopen()) == 0  # not resurrected, not re-created


def test_overlapping_requests_keep_both_changes(django_store: walsess.Store) -> None:
    global BARRIER
    seed = Client()
    seed.get("/set/a/0")
    seed.get("/set/b/0")
    token = token_of(seed)
    BARRIER = threading.Barrier(2)
    errors: list[BaseException] = []

    def run(key: str, value: str) -> None:
        client = Client()
        client.cookies[COOKIE] = token
        try:
            assert client.get(f"/slow-set/{key}/{value}").status_code == 200
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=run, args=kv) for kv in (("a", "1"), ("b", "2"))]
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=30)
    finally:
        BARRIER = None
    assert not errors
    assert seed.get("/dump").json() == {"a": "1", "b": "2"}
    assert reopen().get(token) == {"a": "1", "b": "2"}


# == start-up: the store opens when Django loads SESSION_ENGINE ==========================

_CHILD = textwrap.dedent(
    """
    import json, sys
    import django
    from django.conf import settings
    settings.configure(
        SECRET_KEY="x", ROOT_URLCONF=__name__, ALLOWED_HOSTS=["*"],
        INSTALLED_APPS=["django.contrib.sessions"],
        MIDDLEWARE=["django.contrib.sessions.middleware.SessionMiddleware"],
        SESSION_ENGINE="walsess.django", WALSESS_PATH=sys.argv[1],
    )
    urlpatterns = []
    django.setup()
    if sys.argv[2] == "app":
        from django.core.wsgi import get_wsgi_application
        get_wsgi_application()
        import walsess
        try:
            walsess.open(sys.argv[1])
        except walsess.LockedError:
            print("held before the first request")
    else:
        from django.core.management import call_command
        call_command("clearsessions")
    """
)


def _child(path: str, what: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ)
    root = str(Path(walsess.__file__).resolve().parent.parent)
    env["PYTHONPATH"] = root + os.pathsep + env.get("PYTHONPATH", "")
    return subprocess.run(
        [sys.executable, "-c", _CHILD, path, what],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )


def test_store_opens_at_application_start_up(tmp_path: Path) -> None:
    done = _child(str(tmp_path / "s"), "app")
    assert done.returncode == 0, done.stderr
    assert "held before the first request" in done.stdout


def test_locked_store_fails_start_up_with_what_to_do(tmp_path: Path) -> None:
    path = str(tmp_path / "s")
    with walsess.open(path, cleanup_interval=None):
        done = _child(path, "app")
    assert done.returncode != 0
    assert "LockedError" in done.stderr
    assert "gunicorn -w 1 --threads N" in done.stderr
    assert "held before the first request" not in done.stdout


def test_clearsessions_while_a_server_holds_the_store_says_why(tmp_path: Path) -> None:
    path = str(tmp_path / "s")
    with walsess.open(path, cleanup_interval=None):
        done = _child(path, "clearsessions")
    assert done.returncode != 0
    assert "clearsessions` is not needed while a server holds the store" in done.stderr


def test_missing_walsess_path_is_a_configuration_error(django_store: walsess.Store) -> None:
    from django.core.exceptions import ImproperlyConfigured

    walsess_django.close_store()
    with override_settings(WALSESS_PATH=None), pytest.raises(ImproperlyConfigured):
        walsess_django.get_store()


def test_walsess_options_may_be_an_options(tmp_path: Path, clock: ManualClock) -> None:
    walsess_django.close_store()
    options = walsess.Options(clock=clock, cleanup_interval=None, default_ttl=77)
    with override_settings(WALSESS_PATH=str(tmp_path / "sessions"), WALSESS_OPTIONS=options):
        try:
            assert walsess_django.get_store().options == options
        finally:
            walsess_django.close_store()


def test_a_misspelt_walsess_options_key_is_named_and_opens_nothing(tmp_path: Path) -> None:
    walsess_django.close_store()
    path = tmp_path / "sessions"
    misspelt = {"durabilty": "always"}
    with (
        override_settings(WALSESS_PATH=str(path), WALSESS_OPTIONS=misspelt),
        pytest.raises(walsess.ValidationError, match="unknown option durabilty; the options are"),
    ):
        walsess_django.get_store()
    assert not path.exists()


def test_close_store_then_next_use_reopens(django_store: walsess.Store) -> None:
    session = SessionStore()
    session["a"] = 1
    session.save()
    walsess_django.close_store()
    assert django_store.closed
    again = walsess_django.get_store()
    assert again is not django_store
    assert SessionStore(session.session_key)["a"] == 1
    assert json.dumps(again.get(session.session_key).to_dict()) == '{"a": 1}'  # type: ignore[union-attr]


def test_redis_url_setting_shares_sessions_between_processes(
    redis_url: str, clock: ManualClock
) -> None:
    """WALSESS_REDIS_URL: the store is a RedisStore, so a session saved by one
    process (here: before a close_store, which drops the process's store) is
    there for the next, and for any other RedisStore on that server."""
    walsess_django.close_store()
    with override_settings(
        WALSESS_PATH=None, WALSESS_REDIS_URL=redis_url, WALSESS_OPTIONS={"clock": clock}
    ):
        try:
            first = SessionStore()
            first["cart"] = [1, 2]
            first.save()
            store = walsess_django.get_store()
            assert isinstance(store, walsess.RedisStore)
            walsess_django.close_store()  # as if another worker process took over
            second = SessionStore(first.session_key)
            assert second["cart"] == [1, 2]
            second["user"] = "x"
            second.save()
            with walsess.RedisStore.from_url(redis_url, clock=clock) as elsewhere:
                got = elsewhere.get(first.session_key)  # type: ignore[arg-type]
                assert got is not None and got.to_dict() == {"cart": [1, 2], "user": "x"}
        finally:
            walsess_django.close_store()
