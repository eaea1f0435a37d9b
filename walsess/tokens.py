"""Session tokens, the digests stored in their place, and non-secret refs.

The token is the secret a client holds. It is never written to disk and never
derived from anything the store keeps: the log holds only its
SHA-256 digest, so a stolen copy of the files cannot be used to take over a
session (a token has 256 bits of entropy, so its digest cannot be inverted or
guessed). The *ref* names a session in listings and tools without being
usable as a token; it is the first 8 bytes of the digest, in hex.

Example::

    >>> t = new_token()
    >>> len(t) >= 43 and digest(t) == digest(t) and len(ref_of(digest(t))) == 16
    True
"""

from __future__ import annotations

import hashlib
import secrets

__all__ = [
    "REF_BYTES",
    "TOKEN_BYTES",
    "digest",
    "new_token",
    "new_token_tagged",
    "parse_ref",
    "ref_key",
    "ref_of",
]

#: Entropy of a token: 256 bits.
TOKEN_BYTES = 32
REF_BYTES = 8


def new_token() -> str:
    """A fresh URL-safe token with 256 bits from :mod:`secrets` (43 characters)."""
    return secrets.token_urlsafe(TOKEN_BYTES)


def new_token_tagged(first: int) -> tuple[str, bytes]:
    """A fresh token whose digest starts with the byte *first*, and that digest.

    For Redis Cluster, where a regenerated session must keep its key's hash
    tag (the digest's first byte). Fixing a byte of the digest takes 8 bits
    of the token's entropy, so the token draws 264 bits (44 characters) and
    keeps 256 whatever byte it must match. About 256 draws: under 1 ms.
    """
    while True:
        token = secrets.token_urlsafe(TOKEN_BYTES + 1)
        d = digest(token)
        if d[0] == first:
            return token, d


def digest(token: str) -> bytes:
    """The 32-byte digest that stands for *token* on disk and in memory."""
    # surrogatepass: a string no client could send (a lone surrogate) still has a
    # digest, one that names no session, instead of raising from a lookup.
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).digest()


def ref_key(d: bytes) -> bytes:
    """The in-memory index key of a digest: its first 8 bytes."""
    return d[:REF_BYTES]


def ref_of(d: bytes) -> str:
    """The public ref of a digest: 16 hex characters, safe to show and log."""
    return d[:REF_BYTES].hex()


def parse_ref(ref: object) -> bytes | None:
    """The index key for a public *ref*, or None if it is not one."""
    if not isinstance(ref, str) or len(ref) != 2 * REF_BYTES:
        return None
    try:
        return bytes.fromhex(ref)
    except ValueError:
        return None
