"""Session tokens, the digests stored in their place, and non-secret refs.

The token is the secret a client holds. It is never written to disk and never
derived from anything the store keeps: the log holds only its BLAKE2b-256
digest, so a stolen copy of the files cannot be used to take over a session.
The *ref* names a session in listings and tools without being usable as a
token; it is the first 8 bytes of the digest in hex.

Example::

    >>> t = new_token()
    >>> len(t) >= 43 and digest(t) == digest(t) and len(ref_of(digest(t))) == 16
    True
"""

from __future__ import annotations

import hashlib
import secrets

__all__ = ["TOKEN_BYTES", "digest", "new_token", "ref_key", "ref_of"]

#: Entropy of a token: 256 bits.
TOKEN_BYTES = 32
_PERSON = b"walsess-token"


def new_token() -> str:
    """A fresh URL-safe token with 256 bits from :mod:`secrets` (43 characters)."""
    return secrets.token_urlsafe(TOKEN_BYTES)


def digest(token: str) -> bytes:
    """The 32-byte digest that stands for *token* on disk and in memory."""
    return hashlib.blake2b(token.encode(), digest_size=32, person=_PERSON).digest()


def ref_key(d: bytes) -> int:
    """The in-memory index key of a digest: its first 8 bytes as an integer."""
    return int.from_bytes(d[:8], "big")


def ref_of(d: bytes) -> str:
    """The public ref of a digest: 16 hex characters, safe to show and log."""
    return d[:8].hex()
