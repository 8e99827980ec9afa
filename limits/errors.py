"""Errors raised by `limits/`.

    LimitsError
     ├── StoreUnavailable      Redis did not answer (connection, timeout, cluster down):
     │                          the caller applies `store.on_unavailable` (closed | open)
     ├── UnknownKey            an API key that does not exist or was revoked
     │    ├── ExpiredKey        a key past its expiry, or a rotated secret past its overlap
     │    └── UnknownCredential an organization's admin credential, unknown or revoked
     └── CreditError           a credit operation refused (bad amount, identity already used)

Refusals of a request by a limit are not exceptions: they are returned as a `Decision`.
"""

from __future__ import annotations


class LimitsError(Exception):
    pass


class StoreUnavailable(LimitsError):
    """The Redis-compatible store could not be reached or did not answer in time."""


class UnknownKey(LimitsError):
    pass


class ExpiredKey(UnknownKey):
    """The key existed but is no longer valid: its message says since when."""


class UnknownCredential(UnknownKey):
    pass


class CreditError(LimitsError):
    pass
