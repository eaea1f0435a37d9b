"""The example app (``examples/app.py``) used as a person uses it: in a real browser.

The app runs as a real server process, one uvicorn worker as the README runs
it, on a free 127.0.0.1 port and a store in a temporary directory. Each
"device" is a headless Chromium with a profile of its own (so cookies of its
own), driven through Selenium. Chromium and its driver are Debian's packages
(``apt-get install chromium chromium-driver``; .ci/run installs them when
missing), and Selenium is given both paths: Selenium Manager, which would try
to download a browser, never runs. Without them the tests are skipped.

With ``WALSESS_SCREENSHOT=1`` the devices test also saves the page to
``docs/example-devices.png``, the README's picture; otherwise the tests leave
the tree alone.
"""

from __future__ import annotations

import importlib.util
import os
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from .harness import CHECKOUT, EXAMPLE_APP, Server

try:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.remote.webelement import WebElement
    from selenium.webdriver.support import expected_conditions
    from selenium.webdriver.support.wait import WebDriverWait
except ImportError:  # the tests are skipped, saying so
    HAVE_SELENIUM = False
else:
    HAVE_SELENIUM = True

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
SCREENSHOT = CHECKOUT / "docs" / "example-devices.png"
#: The longest any one page load or wait may take, in seconds: a bound, never a sleep.
WAIT = 20.0

_MISSING = [name for name in ("fastapi", "uvicorn") if importlib.util.find_spec(name) is None]
if not HAVE_SELENIUM:
    _MISSING.append("selenium")
pytestmark = [
    pytest.mark.skipif(
        bool(_MISSING),
        reason=f"the browser tests need {', '.join(_MISSING)}: pip install -e '.[test]'",
    ),
    pytest.mark.skipif(
        not (CHROMIUM.is_file() and CHROMEDRIVER.is_file()),
        reason=f"no browser: {CHROMIUM} and {CHROMEDRIVER} come from apt-get install chromium"
        " chromium-driver",
    ),
    pytest.mark.skipif(
        not sys.platform.startswith("linux"),
        reason="the harness waits for server processes through Linux's /proc and pidfds",
    ),
]


class Device:
    """One browser with its own profile, hence its own cookies: one of a user's devices."""

    def __init__(self, profile: Path) -> None:
        options = webdriver.ChromeOptions()
        options.binary_location = str(CHROMIUM)
        for arg in (
            "--headless=new",
            # Chromium's sandbox refuses to run as root, which CI is.
            "--no-sandbox",
            "--disable-dev-shm-usage",
            f"--user-data-dir={profile}",
            "--window-size=1280,720",
        ):
            options.add_argument(arg)
        # The driver's path given: Selenium skips Selenium Manager, which downloads.
        service = Service(executable_path=str(CHROMEDRIVER))
        self.driver = webdriver.Chrome(service=service, options=options)
        self.driver.set_page_load_timeout(WAIT)
        self.server: Server | None = None

    def open(self, server: Server, path: str) -> None:
        """Load *path* from *server* (cookies are per host, not per port: a restarted
        server on a new port gets the same cookies)."""
        self.server = server
        self.driver.get(server.url + path)

    def find(self, css: str) -> list[WebElement]:
        return self.driver.find_elements(By.CSS_SELECTOR, css)

    def text(self, css: str) -> str:
        found = self.find(css)
        assert found, f"nothing matches {css!r} on {self.driver.current_url}:\n{self.page()}"
        return str(found[0].text)

    def page(self) -> str:
        """The page's text, and the server's output, for failure messages."""
        body = self.driver.find_element(By.TAG_NAME, "body").text
        server = "" if self.server is None else "\n--- server ---\n" + self.server.log()
        return f"{body}{server}"

    def press(self, action: str, **fields: str) -> None:
        """Press the button of the form posting to *action* whose hidden fields hold
        *fields*, and wait until the page it leads to has loaded."""
        match = "".join(f"[input[@name='{k}' and @value='{v}']]" for k, v in fields.items())
        forms = self.driver.find_elements(By.XPATH, f"//form[@action='{action}']{match}")
        assert len(forms) == 1, f"{len(forms)} forms post to {action} {fields}:\n{self.page()}"
        self._submit(forms[0].find_element(By.TAG_NAME, "button"))

    def sign_in(self, user: str) -> None:
        self.find("#login input[name=user]")[0].send_keys(user)
        self._submit(self.find("#login button")[0])

    def _submit(self, button: WebElement) -> None:
        before = self.driver.find_element(By.TAG_NAME, "html")
        button.click()
        wait = WebDriverWait(self.driver, WAIT)
        wait.until(expected_conditions.staleness_of(before))
        wait.until(lambda d: d.execute_script("return document.readyState") == "complete")

    def signed_in_as(self) -> str | None:
        """The user name the page says is signed in, or None on the sign-in form."""
        if self.find("#login"):
            return None
        return self.text("#signed-in strong")

    def cart(self) -> list[tuple[str, str]]:
        """The cart's (product, quantity) lines as the shop page shows them."""
        lines = []
        for row in self.find("#cart tr")[1:]:  # after the header row
            product, quantity = (td.text for td in row.find_elements(By.TAG_NAME, "td")[:2])
            lines.append((product, quantity))
        return lines


@pytest.fixture
def devices(tmp_path: Path) -> Iterator[Callable[[], Device]]:
    """A factory of browsers, each with a fresh profile, all closed at the end."""
    made: list[Device] = []

    def make() -> Device:
        device = Device(tmp_path / f"profile-{len(made)}")
        made.append(device)
        return device

    yield make
    for device in made:
        device.driver.quit()


def test_devices_page_signs_out_another_device(
    servers: Callable[..., Server], devices: Callable[[], Device], tmp_path: Path
) -> None:
    server = servers(EXAMPLE_APP, tmp_path / "store")
    laptop, phone = devices(), devices()
    for device in (laptop, phone):
        device.open(server, "/")
        assert device.signed_in_as() is None
        device.sign_in("alice")
        assert device.signed_in_as() == "alice", device.page()

    # Both sessions are alice's, each marked as the current one in its own browser.
    laptop.open(server, "/devices")
    assert len(laptop.find("#devices tr.current")) == 1, laptop.page()
    assert len(laptop.find("#devices tr.other")) == 1, laptop.page()
    laptop_ref = laptop.text("#devices tr.current code")
    phone.open(server, "/devices")
    assert phone.text("#devices tr.other code") == laptop_ref, phone.page()
    phone_ref = phone.text("#devices tr.current code")
    if os.environ.get("WALSESS_SCREENSHOT") == "1":
        laptop.open(server, "/devices")
        laptop.driver.save_screenshot(str(SCREENSHOT))

    # "Sign out" on the phone's row, from the laptop: the phone's next page is signed out.
    laptop.open(server, "/devices")
    laptop.press("/devices/revoke", ref=phone_ref)
    assert not laptop.find("#devices tr.other"), laptop.page()
    phone.open(server, "/")
    assert phone.signed_in_as() is None, phone.page()
    laptop.open(server, "/")
    assert laptop.signed_in_as() == "alice", laptop.page()

    # "Sign out all other devices" ends every session of alice's but this one.
    phone.sign_in("alice")
    third = devices()
    third.open(server, "/")
    third.sign_in("alice")
    laptop.open(server, "/devices")
    assert len(laptop.find("#devices tr.other")) == 2, laptop.page()
    laptop.press("/devices/sign-out-others")
    assert not laptop.find("#devices tr.other"), laptop.page()
    assert laptop.text("#devices tr.current code") == laptop_ref
    for device in (phone, third):
        device.open(server, "/")
        assert device.signed_in_as() is None, device.page()

    # Signing out destroys the session: the devices page is gone with it.
    laptop.open(server, "/")
    laptop.press("/logout")
    assert laptop.signed_in_as() is None, laptop.page()
    laptop.open(server, "/devices")
    assert laptop.find("#login"), laptop.page()  # sent back to the shop's sign-in form


def test_cart_survives_signing_in_and_a_killed_server(
    servers: Callable[..., Server], devices: Callable[[], Device], tmp_path: Path
) -> None:
    store_dir = tmp_path / "store"
    server = servers(EXAMPLE_APP, store_dir)
    shopper = devices()
    shopper.open(server, "/")
    for product in ("apples", "apples", "tea", "coffee"):
        shopper.press("/cart/add", product=product)
    shopper.press("/cart/remove", product="tea")
    cart = [("apples", "2"), ("coffee", "1")]
    assert shopper.cart() == cart, shopper.page()
    shopper.sign_in("bob")  # a new token, the same cart
    assert shopper.signed_in_as() == "bob", shopper.page()
    assert shopper.cart() == cart, shopper.page()
    shopper.press("/cart/add", product="bread")
    cart.append(("bread", "1"))

    server.kill()  # SIGKILL: no close, no final fsync
    server = servers(EXAMPLE_APP, store_dir)
    shopper.open(server, "/")
    assert shopper.signed_in_as() == "bob", shopper.page()
    assert shopper.cart() == cart, shopper.page()

    shopper.open(server, "/stats")  # the store's figures, after the replay
    assert shopper.text("#stats").startswith("live sessions 1"), shopper.page()
