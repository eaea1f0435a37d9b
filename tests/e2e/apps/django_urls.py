"""Views and URLs of the Django application (see the package docstring)."""

from __future__ import annotations

from django.http import HttpRequest, HttpResponse, JsonResponse
from django.urls import path

from walsess.django import get_store


def ok() -> JsonResponse:
    return JsonResponse({"ok": True})


def health(request: HttpRequest) -> HttpResponse:
    return HttpResponse("ok", content_type="text/plain")


def stats(request: HttpRequest) -> JsonResponse:
    s = get_store().stats()
    return JsonResponse({k: s[k] for k in ("sessions", "records_appended", "log_bytes")})


def get(request: HttpRequest) -> JsonResponse:
    return JsonResponse(dict(request.session.items()))


def set_(request: HttpRequest) -> JsonResponse:
    request.session[request.GET["key"]] = request.GET["value"]
    return ok()


def append(request: HttpRequest) -> JsonResponse:
    key, value = request.GET["key"], request.GET["value"]
    items = request.session.get(key)
    if items is None:
        request.session[key] = [value]
    else:
        items.append(value)  # no request.session.modified = True: the engine sees it
    return ok()


def login(request: HttpRequest) -> JsonResponse:
    user = request.GET["user"]
    request.session.cycle_key()
    request.session["user"] = user
    return ok()


def logout(request: HttpRequest) -> JsonResponse:
    request.session.flush()
    return ok()


urlpatterns = [
    path("health", health),
    path("stats", stats),
    path("get", get),
    path("set", set_),
    path("append", append),
    path("login", login),
    path("logout", logout),
]
