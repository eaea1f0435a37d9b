"""The Django application's WSGI entry point, served by gunicorn ``-w 1 --threads 8``.

Building it loads the middleware chain, which imports ``SESSION_ENGINE``
(``walsess.django``), which opens the store: a store held by another process
fails here, at start-up.
"""

from __future__ import annotations

import os

from django.core.wsgi import get_wsgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "django_settings")

application = get_wsgi_application()
