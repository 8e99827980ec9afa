"""Errors raised by `limits/`: one tree. Classes defined here unless a module is named
(those carry data of their module: a request, a statement).

    LimitsError
     ├── StoreUnavailable      Redis did not answer (connection, timeout, cluster down):
     │    │                     the caller applies `store.on_unavailable` (closed | open)
     │    ├── Stopped           the store went away during a journal replay (journal.py)
     │    └── LedgerUnavailable the ledger database did not answer (ledgerdb.py)
     ├── UnknownKey            an API key that does not exist or was revoked
     │    ├── ExpiredKey        a key past its expiry, or a rotated secret past its overlap
     │    └── UnknownCredential an organization's admin credential, unknown or revoked
     ├── CreditError           a credit operation refused (bad amount, identity already used)
     ├── SpendError            a spend, cap or limit-increase operation refused
     │    ├── UnknownName       an organization, user, tier, workspace or cap scope unknown
     │    ├── RequestPending    the user already has a pending limit-increase request
     │    │                     (increases.py)
     │    └── NoPendingRequest  no pending request to decide (increases.py)
     └── UserError             a run-time user operation refused (users.py)

    ValueError
     └── ReportError           a report asked with bad arguments (reports.py)

Nothing is changed when any of these is raised. Refusals of a request by a limit are not
exceptions: they are returned as a `Decision`.
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


class SpendError(LimitsError):
    """A spend, cap or limit-increase operation was refused; nothing changed."""


class UnknownName(SpendError):
    """An organization, user, seat tier, workspace or cap scope the config does not have."""
