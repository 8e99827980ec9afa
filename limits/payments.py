"""The payment seam used by auto-reload: a `PaymentProvider` charges an organization.

Contract of `PaymentProvider.charge`:

- it charges `amount_micro` (integer micro-USD, > 0) to the organization's registered
  payment method, or fails; it never raises for a refused or failed payment, it answers a
  `PaymentResult` with ``ok`` False and a short ``error``;
- ``ok`` True comes with a ``payment_id`` (the provider's reference, kept on the lot);
- `idempotency_key` names one purchase: a retry of the same purchase passes the same key,
  so a provider that supports it charges at most once per key.

Credits are created by the caller (``Credits.buy``) only after a successful charge; a
provider never touches the store. Implementations: `NoPaymentProvider` here (no payment
method registered), ``tollway.proxy.runtime.payment_webhook.WebhookPaymentProvider``
(HTTP, hence in ``proxy/``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True, slots=True)
class PaymentResult:
    ok: bool
    payment_id: str | None = None
    error: str | None = None


class PaymentProvider(Protocol):
    async def charge(self, org: str, amount_micro: int, idempotency_key: str) -> PaymentResult:
        """Charge the organization; see the module docstring."""
        ...


class NoPaymentProvider:
    """No payment method registered: every charge fails, nothing is ever paid."""

    async def charge(self, org: str, amount_micro: int, idempotency_key: str) -> PaymentResult:
        return PaymentResult(False, None, "no payment method registered")
