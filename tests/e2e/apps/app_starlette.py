"""The Starlette application (see the package docstring), served by one uvicorn worker."""

from __future__ import annotations

import contextlib
import os
from collections.abc import AsyncIterator

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse
from starlette.routing import Route

import walsess
from walsess.starlette import SessionMiddleware, logout, regenerate

store = walsess.open(os.environ["WALSESS_E2E_STORE"], durability="interval")


@contextlib.asynccontextmanager
async def lifespan(app: Starlette) -> AsyncIterator[None]:
    yield
    store.close()  # a clean stop syncs the log; the tests' SIGKILL skips this on purpose


async def health(request: Request) -> PlainTextResponse:
    return PlainTextResponse("ok")


async def stats(request: Request) -> JSONResponse:
    s = store.stats()
    return JSONResponse({k: s[k] for k in ("sessions", "records_appended", "log_bytes")})


async def get(request: Request) -> JSONResponse:
    return JSONResponse(dict(request.session))


async def set_(request: Request) -> JSONResponse:
    q = request.query_params
    request.session[q["key"]] = q["value"]
    return JSONResponse({"ok": True})


async def append(request: Request) -> JSONResponse:
    q = request.query_params
    items = request.session.get(q["key"])
    if items is None:
        request.session[q["key"]] = [q["value"]]
    else:
        items.append(q["value"])
    return JSONResponse({"ok": True})


async def login(request: Request) -> JSONResponse:
    user = request.query_params["user"]
    await regenerate(request, user=user)
    request.session["user"] = user
    return JSONResponse({"ok": True})


async def logout_(request: Request) -> JSONResponse:
    await logout(request)
    return JSONResponse({"ok": True})


app = Starlette(
    routes=[
        Route("/health", health),
        Route("/stats", stats),
        Route("/get", get),
        Route("/set", set_, methods=["POST"]),
        Route("/append", append, methods=["POST"]),
        Route("/login", login, methods=["POST"]),
        Route("/logout", logout_, methods=["POST"]),
    ],
    lifespan=lifespan,
)
app.add_middleware(SessionMiddleware, store=store)
