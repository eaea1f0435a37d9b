"""``python -m walsess``: the same as the ``walsess`` command."""

import sys

from .cli import main

sys.exit(main())
