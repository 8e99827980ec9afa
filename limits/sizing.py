"""Sizing help: recommended rate limits for an organization of N users (SPEC §3).

The table gives per-user TPM and RPM ranges that fall as teams grow, because fewer people
are active at once. The organization's limits are N times the per-user figures; they are
shared, so one person can use far more than an equal share while others are idle, and the
per-user limits only stop a single user from taking it all.

Pure functions, exact arithmetic (``Decimal``: RPM may have up to 3 decimals in the config).
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal

# (largest team size of the row or None, label, TPM per user (low, high), RPM per user)
TABLE: tuple[tuple[int | None, str, tuple[int, int], tuple[Decimal, Decimal]], ...] = (
    (5, "1-5", (200_000, 300_000), (Decimal("5"), Decimal("7"))),
    (20, "5-20", (100_000, 150_000), (Decimal("2.5"), Decimal("3.5"))),
    (50, "20-50", (50_000, 75_000), (Decimal("1.25"), Decimal("1.75"))),
    (100, "50-100", (25_000, 35_000), (Decimal("0.62"), Decimal("0.87"))),
    (500, "100-500", (15_000, 20_000), (Decimal("0.37"), Decimal("0.47"))),
    (None, "500+", (10_000, 15_000), (Decimal("0.25"), Decimal("0.35"))),
)


@dataclass(frozen=True, slots=True)
class Recommendation:
    users: int
    row: str  # the table row used, e.g. "100-500"
    user_tpm: tuple[int, int]  # per user, (low, high)
    user_rpm: tuple[Decimal, Decimal]
    org_tpm: tuple[int, int]  # users x per user
    org_rpm: tuple[Decimal, Decimal]

    @property
    def limits(self) -> dict[str, dict[str, Decimal | int]]:
        """The values to configure: the upper end of each range (the SPEC's example,
        200 users x 20k = 4M TPM)."""
        return {
            "organization": {"rpm": self.org_rpm[1], "tpm": self.org_tpm[1]},
            "per_user": {"rpm": self.user_rpm[1], "tpm": self.user_tpm[1]},
        }


def recommend(users: int) -> Recommendation:
    """The recommendation for a team of ``users`` (>= 1; ValueError otherwise). A size on
    a boundary of two rows (5, 20, 50, 100, 500) takes the smaller team's row."""
    if isinstance(users, bool) or not isinstance(users, int) or users < 1:
        raise ValueError(f"the number of users must be a whole number >= 1, got {users!r}")
    for top, label, tpm, rpm in TABLE:
        if top is None or users <= top:
            return Recommendation(
                users,
                label,
                tpm,
                rpm,
                (users * tpm[0], users * tpm[1]),
                (users * rpm[0], users * rpm[1]),
            )
    raise AssertionError("unreachable: the last row has no upper bound")
