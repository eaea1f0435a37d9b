"""Example applications built on walsess: run ``python -m examples.app`` from the checkout."""
