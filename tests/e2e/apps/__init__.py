"""The applications the end-to-end tests serve, one per framework, all alike.

Each is imported by a real server process (gunicorn or uvicorn) with this
directory on ``PYTHONPATH``, and opens (or, for Django, has the engine open)
the store in the directory named by ``WALSESS_E2E_STORE`` in "interval"
durability mode when the server loads it, so a store another process holds
fails start-up. Every change reaches write(2) before its response is sent,
so a killed process loses nothing a client was told succeeded.

Endpoints:

- ``GET /health``: "ok"; never touches the session.
- ``GET /stats``: the store's ``sessions``, ``records_appended`` and ``log_bytes``
  (from ``stats()``) as JSON; never touches the session.
- ``GET /get``: the session as a JSON object.
- ``POST /set?key=K&value=V``: ``session[K] = V``.
- ``POST /append?key=K&value=V``: appends V to the list ``session[K]``, in
  place (a nested change, saved with no "modified" flag), or stores ``[V]``.
- ``POST /login?user=U``: the framework's regenerate (new token, data kept),
  then ``session["user"] = U``.
- ``POST /logout``: the framework's logout (session destroyed, cookie deleted).

The session is committed before the response is sent, so a 200 means the
change was acknowledged.
"""
