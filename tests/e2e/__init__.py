"""End-to-end tests: each framework's adapter behind a real server process on 127.0.0.1."""
