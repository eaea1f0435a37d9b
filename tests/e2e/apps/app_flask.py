"""The Flask application (see the package docstring), served by gunicorn ``-w 1 --threads 8``."""

from __future__ import annotations

import atexit
import os
from typing import Any

from flask import Flask, request, session

import walsess
import walsess.flask

store = walsess.open(os.environ["WALSESS_E2E_STORE"], durability="interval")
atexit.register(store.close)  # a clean stop syncs the log; the tests' SIGKILL skips this

app = Flask(__name__)
walsess.flask.init_app(app, store)

OK = {"ok": True}


@app.get("/health")
def health() -> str:
    return "ok"


@app.get("/stats")
def stats() -> dict[str, Any]:
    s = store.stats()
    return {k: s[k] for k in ("sessions", "records_appended", "log_bytes")}


@app.get("/get")
def get() -> dict[str, Any]:
    return dict(session)


@app.post("/set")
def set_() -> dict[str, Any]:
    session[request.args["key"]] = request.args["value"]
    return OK


@app.post("/append")
def append() -> dict[str, Any]:
    key, value = request.args["key"], request.args["value"]
    items = session.get(key)
    if items is None:
        session[key] = [value]
    else:
        items.append(value)
    return OK


@app.post("/login")
def login() -> dict[str, Any]:
    user = request.args["user"]
    walsess.flask.regenerate(user=user)
    session["user"] = user
    return OK


@app.post("/logout")
def logout() -> dict[str, Any]:
    walsess.flask.logout()
    return OK
