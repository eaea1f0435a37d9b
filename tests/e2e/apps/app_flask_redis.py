"""The Flask application on a :class:`walsess.RedisStore`, served by gunicorn ``-w 4``
(four worker processes sharing one Redis; see tests/e2e/test_redis_workers.py).

Every answer carries ``pid``, the worker process that served it, so the tests
can tell which worker read what another one wrote.
"""

from __future__ import annotations

import atexit
import os
import time
from typing import Any

import redis
from flask import Flask, request, session

import walsess
import walsess.flask

URL = os.environ["WALSESS_E2E_REDIS"]
# Each worker imports the app after gunicorn forks it: a store and a client per process.
store = walsess.RedisStore.from_url(URL, prefix="e2e")
atexit.register(store.close)
rendezvous = redis.Redis.from_url(URL)

#: How long /meet waits for the other requests it is told to meet.
MEET_SECONDS = 10.0

app = Flask(__name__)
walsess.flask.init_app(app, store)


@app.get("/health")
def health() -> str:
    return "ok"


@app.get("/get")
def get() -> dict[str, Any]:
    return {"pid": os.getpid(), "data": dict(session)}


@app.post("/set")
def set_() -> dict[str, Any]:
    session[request.args["key"]] = request.args["value"]
    return {"pid": os.getpid()}


@app.post("/meet")
def meet() -> tuple[dict[str, Any], int]:
    """Load the session, wait until ``n`` requests named ``name`` have all loaded it,
    then set one key: every one of them read the session before any wrote, so a
    store that wrote whole sessions back would keep only the last one's change."""
    before = dict(session)  # the load: the session as it is before any of them writes
    name = f"e2e-meet:{request.args['name']}"
    rendezvous.incr(name)
    deadline = time.monotonic() + MEET_SECONDS
    while int(rendezvous.get(name) or 0) < int(request.args["n"]):
        if time.monotonic() > deadline:
            return {"pid": os.getpid(), "error": "the other requests never came"}, 504
        time.sleep(0.002)  # polling the other workers' progress (bounded), not waiting for time
    session[request.args["key"]] = request.args["value"]
    return {"pid": os.getpid(), "before": before}, 200
