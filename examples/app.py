"""A small shop on walsess: sign in, a cart, "your devices", the store's live figures.

Run it from the checkout's root (it needs FastAPI and uvicorn, both in the
``[dev]`` extra)::

    python -m examples.app              # then open http://127.0.0.1:8000/
    uvicorn examples.app:app            # the same app, under uvicorn's own command line

The sessions live in an embedded store in ``examples/var/sessions``, or in the
directory ``WALSESS_EXAMPLE_DIR`` names. Stop the server, even with
``kill -9``, start it again, and everyone is still signed in with their cart.

Page by page:

- ``/``: a cart, a nested list changed in place (``line[1] += 1``) and saved
  without any "modified" flag, before and after signing in. Signing in takes
  only a user name (there is no password store: this is a demo); it gives the
  session a new token, keeping the cart (no session fixation), and makes the
  session that user's. Signing out destroys the session.
- ``/devices``: the user's sessions (``store.sessions_of``) by their public
  ref, with the user agent and IP recorded when each was created; sign out
  one of them (``store.revoke(ref)``) or all but this one
  (``store.destroy_user(user, keep=[this token])``).
- ``/stats``: the store's own figures (``store.stats()``), and a button to
  compact it. A real application would put this page behind an admin login.

Every change of state is a POST form, and the session cookie is HttpOnly and
SameSite=Lax (the middleware's defaults), so another site cannot submit these
forms with the user's cookie. Every piece of text that comes from a user or a
browser goes through ``html.escape`` before it is put in a page.

The store is in "interval" durability mode, where the store calls the pages
make (``revoke``, ``destroy_user``) take microseconds and run inline; in
"always" mode each waits for an fsync and belongs in a worker thread
(``anyio.to_thread.run_sync``), as the middleware's own commits do.
"""

from __future__ import annotations

import argparse
import contextlib
import html
import os
from collections.abc import AsyncIterator
from datetime import datetime, timezone
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

from fastapi import FastAPI, HTTPException, Request
from fastapi.responses import HTMLResponse, PlainTextResponse, RedirectResponse
from starlette.requests import HTTPConnection

import walsess
from walsess.request import RequestSession
from walsess.starlette import SessionMiddleware, logout, regenerate

#: Where the sessions are kept: next to this file unless the environment says otherwise.
STORE_DIR = os.environ.get("WALSESS_EXAMPLE_DIR") or str(
    Path(__file__).with_name("var") / "sessions"
)
#: What the shop sells; the cart holds ``[product, quantity]`` pairs.
PRODUCTS = ("apples", "bread", "coffee", "tea")
#: A user name's longest form; any text is accepted (and escaped wherever it is shown).
MAX_NAME = 40

# Opened at import, so a store that another process holds fails the server's
# start, not its first request.
store = walsess.open(STORE_DIR, durability="interval")


@contextlib.asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    yield
    store.close()


def device(conn: HTTPConnection) -> dict[str, str]:
    """The session's metadata, recorded once, by the request that creates the session."""
    return {
        "agent": conn.headers.get("user-agent", "")[:300],
        "ip": conn.client.host if conn.client is not None else "",
    }


app = FastAPI(title="walsess example", lifespan=lifespan, openapi_url=None)
app.add_middleware(SessionMiddleware, store=store, meta=device)


# -- helpers --------------------------------------------------------------------------------


def walsess_session(request: Request) -> RequestSession:
    """The request's session as walsess's own type, for what a dict does not have
    (``token``, ``handle``); Starlette types ``request.session`` as a plain dict."""
    view = request.scope["session"]
    assert isinstance(view, RequestSession)
    return view


async def form(request: Request) -> dict[str, str]:
    """The fields of a posted HTML form (URL-encoded), the last value of each.

    Parsed here rather than with FastAPI's ``Form()``, which needs the
    python-multipart package for this one job.
    """
    body = await request.body()
    if len(body) > 4096:  # these forms have one short field
        raise HTTPException(status_code=413, detail="form too large")
    fields = parse_qs(body.decode("utf-8", "replace"))
    return {name: values[-1] for name, values in fields.items()}


def see_other(path: str) -> RedirectResponse:
    """After a POST, send the browser to *path* with a GET (so a reload does not post again)."""
    return RedirectResponse(path, status_code=303)


def when(timestamp: float) -> str:
    """A store timestamp (seconds since the epoch) as a UTC date and time, to the minute."""
    moment = datetime.fromtimestamp(timestamp, timezone.utc)
    return moment.strftime("%Y-%m-%d %H:%M UTC")


def button(action: str, label: str, **fields: str) -> str:
    """A one-button POST form, with *fields* as hidden inputs."""
    hidden = "".join(
        f'<input type="hidden" name="{html.escape(name)}" value="{html.escape(value)}">'
        for name, value in fields.items()
    )
    return (
        f'<form method="post" action="{html.escape(action)}">{hidden}'
        f"<button>{html.escape(label)}</button></form>"
    )


STYLE = """
body { font: 16px/1.45 system-ui, sans-serif; margin: 0; color: #222; }
nav { background: #234; padding: .6em 1.5em; }
nav a { color: #fff; margin-right: 1.5em; text-decoration: none; }
main { padding: .5em 1.5em 2em; }
table { border-collapse: collapse; margin: .5em 0 1em; }
th, td { border-bottom: 1px solid #ccc; padding: .35em .8em .35em 0; text-align: left;
         vertical-align: top; white-space: nowrap; }
td.agent { font-size: .8em; min-width: 18em; max-width: 24em; white-space: normal;
           overflow-wrap: anywhere; }
tr.current { background: #eef6ee; }
form { display: inline; margin: 0 .3em 0 0; }
button { font: inherit; padding: .15em .7em; }
.note { color: #666; font-size: .9em; }
.error { color: #a00; }
"""


def page(title: str, body: str, status_code: int = 200) -> HTMLResponse:
    """A whole HTML page around *body*, which must already be escaped HTML."""
    return HTMLResponse(
        f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{html.escape(title)} - walsess example</title><style>{STYLE}</style></head>
<body><nav><a href="/">Shop</a><a href="/devices">Your devices</a><a href="/stats">Store</a></nav>
<main><h1>{html.escape(title)}</h1>
{body}
</main></body></html>""",
        status_code=status_code,
    )


# -- the shop: sign in, cart, sign out ------------------------------------------------------


def shop_page(request: Request, error: str = "") -> HTMLResponse:
    user = request.session.get("user")
    if user is None:
        problem = f'<p class="error">{html.escape(error)}</p>' if error else ""
        account = f"""{problem}
<form method="post" action="/login" id="login">
  <label>User name <input name="user" maxlength="{MAX_NAME}" required autofocus></label>
  <button>Sign in</button></form>
<p class="note">No password: this demo has no password store, and takes any name.
Sign in as the same name in two browsers to see two devices.</p>"""
    else:
        account = (
            f'<p id="signed-in">Signed in as <strong>{html.escape(user)}</strong>. '
            f"{button('/logout', 'Sign out')}</p>"
        )
    lines = [
        f"<tr><td>{html.escape(str(product))}</td><td>{html.escape(str(quantity))}</td>"
        f"<td>{button('/cart/remove', 'Remove one', product=str(product))}</td></tr>"
        for product, quantity in request.session.get("cart", [])
    ]
    cart = (
        f'<table id="cart"><tr><th>Product</th><th>Quantity</th><th></th></tr>{"".join(lines)}'
        "</table>"
        if lines
        else '<p id="cart">Your cart is empty.</p>'
    )
    offers = " ".join(
        button("/cart/add", f"Add {product}", product=product) for product in PRODUCTS
    )
    return page(
        "Shop",
        f"""{account}
<h2>Cart</h2>
{cart}
<p>{offers}</p>
<p class="note">The cart is kept in the session on the server; only a random token is in
the cookie. It survives signing in, and a restart (even a crash) of the server.</p>""",
        status_code=400 if error else 200,
    )


@app.get("/", response_class=HTMLResponse)
async def shop(request: Request) -> HTMLResponse:
    return shop_page(request)


@app.post("/login", response_model=None)
async def login(request: Request) -> RedirectResponse | HTMLResponse:
    name = (await form(request)).get("user", "").strip()
    if not name or len(name) > MAX_NAME:
        return shop_page(request, error=f"A user name has 1 to {MAX_NAME} characters.")
    # A new token for the signed-in session (the old one is dead at once), same data.
    await regenerate(request, user=name)
    request.session["user"] = name
    return see_other("/")


@app.post("/logout")
async def signout(request: Request) -> RedirectResponse:
    await logout(request)  # destroyed now, and the cookie deleted
    return see_other("/")


@app.post("/cart/add")
async def cart_add(request: Request) -> RedirectResponse:
    product = (await form(request)).get("product", "")
    if product in PRODUCTS:
        cart: list[list[Any]] = request.session.setdefault("cart", [])
        for line in cart:
            if line[0] == product:
                line[1] += 1  # changed in place: the session notices by itself
                break
        else:
            cart.append([product, 1])
    return see_other("/")


@app.post("/cart/remove")
async def cart_remove(request: Request) -> RedirectResponse:
    product = (await form(request)).get("product", "")
    cart: list[list[Any]] = request.session.get("cart", [])
    for line in cart:
        if line[0] == product:
            line[1] -= 1
            if line[1] <= 0:
                cart.remove(line)
            break
    return see_other("/")


# -- your devices ---------------------------------------------------------------------------


@app.get("/devices", response_model=None)
async def devices(request: Request) -> RedirectResponse | HTMLResponse:
    user = request.session.get("user")
    if user is None:
        return see_other("/")
    current = walsess_session(request).handle
    rows = []
    for info in store.sessions_of(user):  # never the tokens: refs are safe to show
        meta = info.meta or {}
        here = current is not None and info.ref == current.ref
        action = "this device" if here else button("/devices/revoke", "Sign out", ref=info.ref)
        rows.append(
            f'<tr class="{"current" if here else "other"}">'
            f"<td><code>{html.escape(info.ref)}</code></td>"
            f'<td class="agent">{html.escape(str(meta.get("agent", "")))}</td>'
            f"<td>{html.escape(str(meta.get('ip', '')))}</td>"
            f"<td>{when(info.created_at)}</td><td>{when(info.last_seen)}</td>"
            f"<td>{when(info.expires_at)}</td><td>{action}</td></tr>"
        )
    return page(
        "Your devices",
        f"""<p>Where <strong>{html.escape(user)}</strong> is signed in:</p>
<table id="devices"><tr><th>Session</th><th>Browser</th><th>IP</th><th>Created</th>
<th>Last seen</th><th>Expires</th><th></th></tr>
{"".join(rows)}</table>
<p>{button("/devices/sign-out-others", "Sign out all other devices")}</p>
<p class="note">Each row is one session, named by its ref: a public name, unlike the
token, which never leaves the cookie. A session idle for 14 days expires.</p>""",
    )


@app.post("/devices/revoke")
async def revoke(request: Request) -> RedirectResponse:
    user = request.session.get("user")
    ref = (await form(request)).get("ref", "")
    # Only one of the user's own sessions: a ref is public, so it proves nothing.
    if user is not None and any(info.ref == ref for info in store.sessions_of(user)):
        store.revoke(ref)
    return see_other("/devices")


@app.post("/devices/sign-out-others")
async def sign_out_others(request: Request) -> RedirectResponse:
    user = request.session.get("user")
    token = walsess_session(request).token
    if user is not None and token is not None:
        store.destroy_user(user, keep=[token])
    return see_other("/devices")


# -- the store ------------------------------------------------------------------------------


@app.get("/stats", response_class=HTMLResponse)
async def stats() -> HTMLResponse:
    figures = store.stats()
    compaction = figures["last_compaction"]
    gc = figures["last_gc"]
    rows = {
        "live sessions": figures["sessions"],
        "expired, not yet removed": figures["expired_pending_gc"],
        "snapshot bytes": figures["snapshot_bytes"],
        "log bytes": figures["log_bytes"],
        "live data bytes (estimate)": figures["live_bytes_estimate"],
        "memory bytes (estimate)": figures["memory_bytes_estimate"],
        "records appended since start": figures["records_appended"],
        "log generation": figures["log_generation"],
        "last compaction": (
            "none since the server started"
            if compaction is None
            else f"{when(compaction.started_at)}, {compaction.seconds * 1000:.1f} ms:"
            f" a snapshot of {compaction.snapshot_bytes} bytes ({compaction.sessions} sessions)"
        ),
        "last gc": (
            "none since the server started (it runs every minute)"
            if gc is None
            else f"{when(gc['at'])}: {gc['removed']} removed, {gc['seconds'] * 1000:.1f} ms"
        ),
        "durability": figures["durability"],
        "directory": STORE_DIR,
    }
    table = "".join(
        f"<tr><th>{html.escape(name)}</th><td>{html.escape(str(value))}</td></tr>"
        for name, value in rows.items()
    )
    return page(
        "Store",
        f"""<table id="stats">{table}</table>
<p>{button("/stats/compact", "Compact now")}</p>
<p class="note">Compaction writes the live sessions as a snapshot and starts a new log; the
store also does it by itself once the files outgrow the live data. From a shell,
<code>walsess stats DIR</code> reads similar figures from the files, also while the server
runs.</p>""",
    )


@app.post("/stats/compact")
def compact() -> RedirectResponse:
    # A plain def: FastAPI runs it in a worker thread, since compaction writes
    # and fsyncs a snapshot, which would stall every other request on the event loop.
    store.compact()
    return see_other("/stats")


@app.get("/health", response_class=PlainTextResponse)
async def health() -> str:
    """For load balancers and the tests: never touches the session, so sets no cookie."""
    return "ok"


def main() -> None:
    """``python -m examples.app``: serve the app with uvicorn on 127.0.0.1."""
    import uvicorn  # only here: ``uvicorn examples.app:app`` brings its own

    parser = argparse.ArgumentParser(
        prog="python -m examples.app", description="Serve the walsess example app."
    )
    parser.add_argument("--port", type=int, default=8000, help="port on 127.0.0.1 (8000)")
    args = parser.parse_args()
    print(f"walsess example: open http://127.0.0.1:{args.port}/ in a browser (Ctrl-C stops)")
    print(f"sessions are kept in {STORE_DIR}")
    uvicorn.run(app, host="127.0.0.1", port=args.port, log_level="warning")


if __name__ == "__main__":
    main()
