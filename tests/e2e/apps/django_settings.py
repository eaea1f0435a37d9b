"""Settings of the Django application (see the package docstring): no database, no apps,
only Django's session middleware with walsess as its engine."""

from __future__ import annotations

import os

SECRET_KEY = "walsess-e2e-not-secret"
DEBUG = False
ALLOWED_HOSTS = ["127.0.0.1"]
ROOT_URLCONF = "django_urls"
INSTALLED_APPS: list[str] = []
DATABASES: dict[str, object] = {}
MIDDLEWARE = ["django.contrib.sessions.middleware.SessionMiddleware"]
USE_TZ = True

SESSION_ENGINE = "walsess.django"
WALSESS_PATH = os.environ["WALSESS_E2E_STORE"]
WALSESS_OPTIONS = {"durability": "interval"}

# A failing view's traceback goes to the server's stderr, which the tests show on failure.
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"stderr": {"class": "logging.StreamHandler"}},
    "loggers": {"django.request": {"handlers": ["stderr"], "level": "ERROR"}},
}
