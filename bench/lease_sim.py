"""Simulation of leased bucket slices: one organization served by N replicas whose admissions
no longer go to the organization's primary one by one (docs/scaling.md).

The model. The organization's token bucket (capacity ``C`` tokens, refill ``r`` tokens/s,
exactly as `limits/scripts/common.lua` refills it) stays on its primary. A replica admits a
request against a *lease*: a slice of at most ``L`` tokens taken from that bucket in one
round trip, kept locally for at most ``T`` seconds. A request that finds its replica's
lease too small asks the primary for a new slice; the primary grants what the bucket has
(never more), so the bucket never goes below what settlements alone push it to, and says
when it will next have tokens: until then the replica refuses locally, without a round
trip (the retry time a 429 carries anyway). At the end
of its life a lease's unused remainder goes back to the bucket. A replica that dies loses
its lease: those tokens are stranded (refused capacity, never extra capacity) until the
bucket refills them.

What the simulation checks, per run, over every sliding window of ``W`` seconds:

    admitted tokens in the window  <=  C + r * W + N * L          (the stated bound)

(the last term: each replica can carry one slice taken before the window into it), and it
measures what the scheme costs: primary round trips per request (the point of it), and
refusals that an exact central bucket would not have made (capacity stranded in slices).

Run by hand: ``python -m bench.lease_sim`` prints a table for bursts, steady load and
replica loss; ``tests/unit/test_lease_sim.py`` runs small cases and asserts the bound.
"""

from __future__ import annotations

import argparse
import random
from collections import deque
from dataclasses import dataclass, field


@dataclass
class Params:
    replicas: int = 8
    capacity: int = 6_000_000  # tokens (the per-minute limit: 6M TPM)
    rate: float = 6_000_000 / 60  # tokens per second
    lease: int = 20_000  # L: the largest slice a replica takes (~18 requests)
    lease_ttl: float = 2.0  # T: seconds before an unused remainder goes back
    window: float = 10.0  # W: the sliding window the bound is checked on
    seconds: float = 120.0
    mean_rps: float = 90.0  # offered load: ~99k tokens/s, just under the refill rate
    tokens: tuple[int, int] = (200, 2_000)  # each request's tokens, uniform
    burst_at: float | None = 30.0  # a burst: 10x the load for burst_len seconds
    burst_len: float = 5.0
    kill_at: float | None = None  # replicas killed at this instant (their leases lost)
    kill: int = 0
    seed: int = 7


@dataclass
class Bucket:
    """The organization's bucket on its primary (continuous refill, as common.lua)."""

    capacity: int
    rate: float
    level: float = 0.0
    at: float = 0.0
    round_trips: int = 0

    def refill(self, now: float) -> None:
        self.level = min(self.capacity, self.level + (now - self.at) * self.rate)
        self.at = now

    def take_up_to(self, now: float, need: int, want: int) -> tuple[int, float]:
        """A slice of at most `want` tokens when the bucket holds at least `need` (else
        none), and when it will next hold `need`."""
        self.round_trips += 1
        self.refill(now)
        if self.level < need:
            return 0, now + (need - self.level) / self.rate
        granted = min(want, int(self.level))
        self.level -= granted
        return granted, now

    def take_all_or_nothing(self, now: float, want: int) -> bool:
        """Today's admission: one round trip per request, all or nothing."""
        self.round_trips += 1
        self.refill(now)
        if self.level < want:
            return False
        self.level -= want
        return True

    def give_back(self, now: float, amount: int) -> None:
        self.round_trips += 1
        self.refill(now)
        self.level = min(self.capacity, self.level + amount)


@dataclass
class Replica:
    alive: bool = True
    balance: int = 0
    expires: float = 0.0
    empty_until: float = 0.0  # the primary said its bucket is empty until then


@dataclass
class Result:
    requests: int = 0
    admitted: int = 0
    refused: int = 0
    round_trips: int = 0
    worst_window: int = 0  # most tokens admitted in any window
    exact_worst_window: int = 0  # the same for today's one-round-trip-per-request bucket
    bound: int = 0
    admitted_tokens: int = 0
    exact_admitted_tokens: int = 0  # what today's exact bucket admits of the same traffic
    admitted_log: list[tuple[float, int]] = field(default_factory=list)

    @property
    def holds(self) -> bool:
        return self.worst_window <= self.bound


def arrivals(p: Params) -> list[tuple[float, int, int]]:
    """(time, replica, tokens) for every request: Poisson arrivals, 10x during the burst."""
    rnd = random.Random(p.seed)
    t, out = 0.0, []
    while t < p.seconds:
        busy = p.burst_at is not None and p.burst_at <= t < p.burst_at + p.burst_len
        t += rnd.expovariate(p.mean_rps * (10 if busy else 1))
        out.append((t, rnd.randrange(p.replicas), rnd.randint(*p.tokens)))
    return out


def simulate(p: Params) -> Result:
    central = Bucket(p.capacity, p.rate, level=p.capacity)
    exact = Bucket(p.capacity, p.rate, level=p.capacity)  # the one-primary reference
    replicas = [Replica() for _ in range(p.replicas)]
    res = Result(bound=int(p.capacity + p.rate * p.window + p.replicas * p.lease))
    killed = False
    exact_log: list[tuple[float, int]] = []
    for now, i, tokens in arrivals(p):
        if p.kill_at is not None and not killed and now >= p.kill_at:
            for r in replicas[: p.kill]:
                r.alive, r.balance = False, 0  # its lease is stranded, never returned
            killed = True
        for r in replicas:
            if r.alive and r.balance and r.expires <= now:
                central.give_back(now, r.balance)
                r.balance = 0
        r = replicas[i]
        if not r.alive:
            i = next(j for j, x in enumerate(replicas) if x.alive)  # the balancer moves it
            r = replicas[i]
        res.requests += 1
        if exact.take_all_or_nothing(now, tokens):
            exact_log.append((now, tokens))
        if r.balance < tokens and now >= r.empty_until:
            need = tokens - r.balance
            got, r.empty_until = central.take_up_to(now, need, max(p.lease, tokens) - r.balance)
            if got:
                r.balance += got
                r.expires = now + p.lease_ttl
        if r.balance >= tokens:
            r.balance -= tokens
            res.admitted += 1
            res.admitted_log.append((now, tokens))
        else:
            res.refused += 1
    res.round_trips = central.round_trips
    res.worst_window = worst_window(res.admitted_log, p.window)
    res.exact_worst_window = worst_window(exact_log, p.window)
    res.admitted_tokens = sum(k for _, k in res.admitted_log)
    res.exact_admitted_tokens = sum(k for _, k in exact_log)
    return res


def worst_window(log: list[tuple[float, int]], window: float) -> int:
    """The most tokens admitted in any interval of `window` seconds (two pointers)."""
    best = total = 0
    q: deque[tuple[float, int]] = deque()
    for t, k in log:
        q.append((t, k))
        total += k
        while q[0][0] <= t - window:
            total -= q.popleft()[1]
        best = max(best, total)
    return best


SCENARIOS = {
    "steady, 8 replicas": Params(burst_at=None),
    "burst 10x, 8 replicas": Params(),
    "burst 10x, 32 replicas": Params(replicas=32),
    "burst + 3 of 8 replicas lost": Params(kill_at=32.0, kill=3),
    "burst, big slices (L=200k)": Params(lease=200_000),
    "overload 3x, 8 replicas": Params(mean_rps=270.0, burst_at=None),
    "flood 100x for 10 s, 8 replicas": Params(burst_at=30.0, burst_len=10.0, mean_rps=900.0),
    "flood + 4 of 16 replicas lost": Params(
        replicas=16, burst_at=30.0, burst_len=10.0, mean_rps=900.0, kill_at=33.0, kill=4
    ),
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=float, default=120.0)
    args = ap.parse_args()
    print(
        "| scenario | requests | admitted | worst 10 s window (exact bucket) "
        "| bound C+rW+NL | holds | primary round trips per request (exact: 1) "
        "| tokens admitted vs exact bucket |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for name, p in SCENARIOS.items():
        p.seconds = args.seconds
        r = simulate(p)
        print(
            f"| {name} | {r.requests} | {r.admitted} | {r.worst_window} "
            f"({r.exact_worst_window}) | {r.bound} | {'yes' if r.holds else 'NO'} "
            f"| {r.round_trips / r.requests:.3f} "
            f"| {r.admitted_tokens / r.exact_admitted_tokens:.2%} |"
        )


if __name__ == "__main__":
    main()
