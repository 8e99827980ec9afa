"""Prometheus metrics, one registry per app (no module globals).

Label cardinality is bounded: organizations come from the config, models from the price
table (an unpriced model is refused before it is counted), routes from the route table.
No user or key labels.
"""

from __future__ import annotations

import functools

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from tollway.limits.outcomes import Refusal

LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5)
UPSTREAM_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)

CONTENT_TYPE = CONTENT_TYPE_LATEST


class Metrics:
    def __init__(self) -> None:
        r = self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter(
            "tollway_requests",
            "Requests by route and outcome (ok, upstream_error, failed, refused, "
            "bad_request, unauthorized, unavailable, fail_open).",
            ["route", "outcome", "org"],
            registry=r,
        )
        self.refusals = Counter(
            "tollway_refusals",
            "Admissions refused, by reason (" + ", ".join(Refusal) + ").",
            ["reason", "org"],
            registry=r,
        )
        self.tokens = Counter(
            "tollway_tokens",
            "Tokens settled, by kind (input, output, cache_write, cache_read).",
            ["kind", "org", "model"],
            registry=r,
        )
        self.spend = Counter(
            "tollway_spend_usd",
            "Spend settled at API prices, in USD.",
            ["org", "model"],
            registry=r,
        )
        self.overshoot = Counter(
            "tollway_overshoot_usd",
            "Extra spend past a monthly spend cap (each request's largest part past a cap), "
            "in USD.",
            ["org"],
            registry=r,
        )
        self.balance = Gauge(
            "tollway_credit_balance_usd",
            "Available credit of prepaid organizations after the last settlement, in USD.",
            ["org"],
            registry=r,
        )
        self.bucket_remaining = Gauge(
            "tollway_bucket_remaining",
            "What is left in a bucket of the organization scope after the last admission "
            "(requests or tokens).",
            ["org", "limit"],
            registry=r,
        )
        self.upstream_latency = Histogram(
            "tollway_upstream_latency_seconds",
            "Upstream time of metered requests, from sending the request to the last byte.",
            ["provider"],
            buckets=UPSTREAM_BUCKETS,
            registry=r,
        )
        self.upstream_ttfb = Histogram(
            "tollway_upstream_first_byte_seconds",
            "Upstream time to response headers.",
            ["provider"],
            buckets=UPSTREAM_BUCKETS,
            registry=r,
        )
        self.added_latency = Histogram(
            "tollway_added_latency_seconds",
            "Time Tollway adds before a request reaches the upstream (auth, body, "
            "estimate, admission).",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.store_latency = Histogram(
            "tollway_store_latency_seconds",
            "Latency of store (Redis) operations.",
            ["op"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.store_errors = Counter(
            "tollway_store_errors",
            "Store operations that failed because the store was unavailable.",
            ["op"],
            registry=r,
        )
        self.store_unavailable = Counter(
            "tollway_store_unavailable_requests",
            "Requests that met an unavailable store, by the policy applied (closed, open).",
            ["policy"],
            registry=r,
        )
        self.absurd_usage = Counter(
            "tollway_absurd_usage",
            "Answers whose reported usage was above the sanity ceiling "
            "(metering.max_tokens_per_request): charged at the ceiling, flagged in the ledger.",
            ["org"],
            registry=r,
        )
        self.settle_failures = Counter(
            "tollway_settle_failures",
            "Settlements that could not be written to the store.",
            registry=r,
        )
        self.journal_entries = Counter(
            "tollway_journal_entries",
            "Settlements in the local journal, by event: written (the store was "
            "unavailable), replayed (settled once it was back), dropped (the journal was "
            "full, or the entry could not be settled).",
            ["event"],
            registry=r,
        )
        self.journal_pending = Gauge(
            "tollway_journal_pending",
            "Settlements waiting in the local journal for the store to return.",
            registry=r,
        )
        self.config_reloads = Counter(
            "tollway_config_reloads",
            "Config reloads by result (success, failure).",
            ["result"],
            registry=r,
        )
        self.config_reload_failures = Counter(
            "tollway_config_reload_failures",
            "Config edits rejected whole (the previous config stays in force).",
            registry=r,
        )
        self.config_last_reload_ok = Gauge(
            "tollway_config_last_reload_successful",
            "1 when the last config reload succeeded (or none was tried yet), 0 while the "
            "edited file is rejected and the previous config is in force.",
            registry=r,
        )
        self.config_last_reload_ok.set(1)
        self.auto_reloads = Counter(
            "tollway_auto_reloads",
            "Auto-reload purchases by result (paid, failed, skipped).",
            ["org", "result"],
            registry=r,
        )
        self.ledger_backlog = Gauge(
            "tollway_ledger_backlog_events",
            "Ledger events waiting in Redis to be shipped to the ledger database.",
            registry=r,
        )
        self.ledger_backlog_age = Gauge(
            "tollway_ledger_backlog_oldest_seconds",
            "Age of the oldest ledger event waiting in Redis (0: none waits).",
            registry=r,
        )
        self.ledger_shipped = Counter(
            "tollway_ledger_shipped_events",
            "Ledger events shipped from Redis to the ledger database by this replica.",
            registry=r,
        )
        self.ledger_ship_failures = Counter(
            "tollway_ledger_ship_failures",
            "Shipping passes that failed (the database or Redis did not answer).",
            registry=r,
        )
        self.in_flight = Gauge("tollway_requests_in_flight", "Requests being served.", registry=r)
        # A label lookup validates the values, takes a lock and searches a dict: with ~10
        # per request it was ~3% of a request's CPU (bench/README.md). Each metric's
        # children are cached; Tollway never removes a child, so a cached one is the live
        # one, and labels are bounded (see above), so the cache is too.
        for metric in vars(self).values():
            if getattr(metric, "_labelnames", ()):
                metric.labels = functools.lru_cache(maxsize=4096)(metric.labels)

    def observe_journal(self, event: str, count: int) -> None:
        if event == "pending":
            self.journal_pending.set(count)
        else:
            self.journal_entries.labels(event).inc(count)

    def config_reloaded(self, ok: bool) -> None:
        """Count a config reload (success or failure) and record whether it took."""
        self.config_reloads.labels("success" if ok else "failure").inc()
        if not ok:
            self.config_reload_failures.inc()
        self.config_last_reload_ok.set(1 if ok else 0)

    def observe_store(self, op: str, seconds: float, failed: bool) -> None:
        self.store_latency.labels(op).observe(seconds)
        if failed:
            self.store_errors.labels(op).inc()

    def exposition(self) -> bytes:
        return generate_latest(self.registry)
