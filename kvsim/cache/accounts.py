"""Admin accounts with salted password hashes.

The reference stores passwords in plain text and never checks them; kvsim stores
``pbkdf2_sha256$<iterations>$<salt hex>$<hash hex>`` (PBKDF2-HMAC-SHA256, 16-byte salt) and can verify
a password. The salt comes from an injected source (the manager's seeded RNG by default, ``os.urandom``
in a live service), never from a global generator.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Callable
from dataclasses import dataclass

from kvsim.cache.types import AccountRole

SALT_BYTES = 16
DEFAULT_ITERATIONS = 200_000
_SCHEME = "pbkdf2_sha256"


@dataclass(frozen=True, slots=True)
class AccountRecord:
    """A stored account: name, role and the encoded password hash (never the password)."""

    user_name: str
    role: AccountRole
    password_hash: str


class PasswordHasher:
    """Hashes and verifies passwords.

    Args:
        salt_source: returns ``n`` random bytes (e.g. ``rng.bytes`` or ``os.urandom``).
        iterations: PBKDF2 rounds for new hashes (verification reads them from the hash).
    """

    def __init__(self, salt_source: Callable[[int], bytes], iterations: int = DEFAULT_ITERATIONS) -> None:
        if iterations <= 0:
            raise ValueError(f"iterations: must be > 0, got {iterations}")
        self._salt_source = salt_source
        self._iterations = iterations

    def hash(self, password: str) -> str:
        """Return the encoded salted hash of ``password``."""
        salt = self._salt_source(SALT_BYTES)
        if len(salt) != SALT_BYTES:
            raise ValueError(f"salt_source returned {len(salt)} bytes, wanted {SALT_BYTES}")
        digest = hashlib.pbkdf2_hmac("sha256", password.encode("utf-8"), salt, self._iterations)
        return f"{_SCHEME}${self._iterations}${salt.hex()}${digest.hex()}"

    @staticmethod
    def verify(password: str, encoded: str) -> bool:
        """True when ``password`` matches ``encoded`` (constant-time comparison)."""
        try:
            scheme, rounds, salt_hex, digest_hex = encoded.split("$")
            if scheme != _SCHEME:
                return False
            digest = hashlib.pbkdf2_hmac(
                "sha256", password.encode("utf-8"), bytes.fromhex(salt_hex), int(rounds)
            )
        except ValueError:
            return False
        return hmac.compare_digest(digest.hex(), digest_hex)

    @staticmethod
    def is_encoded(value: str) -> bool:
        """True when ``value`` looks like a hash this class produced (used to vet snapshots)."""
        parts = value.split("$")
        return len(parts) == 4 and parts[0] == _SCHEME and parts[1].isdigit() and int(parts[1]) > 0
