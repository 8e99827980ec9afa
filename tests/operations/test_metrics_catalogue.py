"""The metrics catalogue: a scrape taken after varied traffic passes `promtool check
metrics`, every metric follows the naming rules and is documented in docs/metrics.md (and
everything documented exists), and labels stay bounded (no user or key labels; one route
value for every /v1/models/<id>).

promtool is extracted from Debian's `prometheus` package into .tools/bin by
tests/install-tools.sh (`make test` runs it; the package is never installed); this test
fails, not skips, without it.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import anthropic
import openai
import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families
from tollway.limits.credits import Credits
from tollway.proxy.gateway.routes import BY_PATH, UNKNOWN_ROUTE

from tests.support.tools import find_tool

DOCS = Path(__file__).resolve().parents[2] / "docs" / "metrics.md"
ORGS = """
organizations:
  acme:
    limits: {rpm: 1000, tpm: 1000000}
    users:
      slow: {limits: {rpm: 1}}
  paid:
    billing: {mode: prepaid, auto_reload: {threshold: 100, target: 200}}
  broke:
    billing: {mode: prepaid}
"""
# Only a store outage feeds these; they have no samples after ordinary traffic.
OUTAGE_ONLY = {
    "tollway_store_errors_total",
    "tollway_store_unavailable_requests_total",
    "tollway_journal_entries_total",
    "tollway_absurd_usage_total",  # only after an absurd usage report
    "tollway_overshoot_usd_total",  # only after a request took a spend cap past its amount
}
HELLO = [{"role": "user", "content": "Say hello"}]


def promtool() -> str:
    path = find_tool("promtool")
    if path is None:
        pytest.fail("promtool is missing: run tests/install-tools.sh (make test does)")
    return path


@pytest.fixture
def scrape(stack_factory) -> str:
    """/metrics after traffic that touches every kind of metric."""
    stack = stack_factory(ORGS)
    key, slow = stack.key("acme"), stack.key("acme", user="slow")
    stack.openai(key).chat.completions.create(model="gpt-4o-mini", messages=HELLO)
    list(stack.openai(key).chat.completions.create(model="gpt-4o", messages=HELLO, stream=True))
    stack.anthropic(key).messages.create(model="claude-haiku-4-5", max_tokens=20, messages=HELLO)
    stack.openai(slow).chat.completions.create(model="gpt-4o-mini", messages=HELLO)
    with pytest.raises(openai.RateLimitError):
        stack.openai(slow).chat.completions.create(model="gpt-4o-mini", messages=HELLO)
    stack.run(Credits(stack.store, stack.clock).buy("paid", 1_000_000))
    # Leaves the balance under the threshold: an auto-reload with no payment method.
    stack.openai(stack.key("paid")).chat.completions.create(model="gpt-4o", messages=HELLO)
    with pytest.raises(anthropic.BadRequestError):  # no credit: Anthropic's 400
        stack.anthropic(stack.key("broke")).messages.create(
            model="claude-haiku-4-5", max_tokens=20, messages=HELLO
        )
    with pytest.raises(openai.AuthenticationError):
        stack.openai("tw-not-a-key").chat.completions.create(model="gpt-4o-mini", messages=HELLO)
    stack.fake.behavior.status = 500
    with pytest.raises(openai.InternalServerError):
        stack.openai(key).chat.completions.create(model="gpt-4o-mini", messages=HELLO)
    stack.fake.reset()
    for model_id in ("gpt-4o", "anything/a-client-wrote", "x" * 100):
        requests.get(
            f"{stack.url}/v1/models/{model_id}",
            headers={"authorization": f"Bearer {key}"},
            timeout=10,
        )
    stack.write_config("organizations: {acme: {limits: {rpm: -1}}}\n")
    assert not stack.holder.reload()
    stack.reconfigure(ORGS)
    stack.wait_settled()
    return requests.get(stack.metrics_url + "/metrics", timeout=10).text


def test_promtool_check_metrics_passes(scrape, tmp_path):
    (tmp_path / "scrape.txt").write_text(scrape)
    result = subprocess.run(
        [promtool(), "check", "metrics"],
        input=scrape,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.strip() == "" and result.stderr.strip() == ""


def documented() -> dict[str, tuple[str, set[str]]]:
    """name -> (type, labels) from the table of docs/metrics.md."""
    out = {}
    for line in DOCS.read_text().splitlines():
        m = re.match(r"\| `(tollway_\w+)` \| (\w+) \| ([^|]*) \|", line)
        if m:
            labels = set(re.findall(r"`(\w+)`", m.group(3)))
            out[m.group(1)] = (m.group(2), labels)
    return out


def exposed(scrape: str) -> dict[str, tuple[str, set[str]]]:
    out = {}
    families = list(text_string_to_metric_families(scrape))
    bases = {f.name for f in families}
    for family in families:
        created = family.name.removesuffix("_created")
        if family.name.endswith("_created") and (created in bases or created + "_total" in bases):
            continue  # the creation time the Python client adds to counters and histograms
        name = family.name + ("_total" if family.type == "counter" else "")
        labels = {k for s in family.samples for k in s.labels if k not in ("le", "quantile")}
        out[name] = (family.type, labels if family.samples else None)
    return out


def test_every_metric_is_documented_and_named_by_the_rules(scrape):
    docs, metrics = documented(), exposed(scrape)
    assert set(docs) == set(metrics)
    for name, (kind, labels) in metrics.items():
        assert name.startswith("tollway_")
        if labels is None:  # no samples: the labels cannot be seen
            assert name in OUTAGE_ONLY, name
            assert docs[name][0] == kind
            continue
        assert docs[name] == (kind, labels), name
        if kind == "counter":
            assert name.endswith("_total")
        if kind == "histogram":
            assert name.endswith("_seconds")
        assert not (labels or set()) & {"user", "key", "key_id", "workspace", "session"}, name


def test_labels_stay_bounded(scrape):
    routes, orgs, models = set(), set(), set()
    for family in text_string_to_metric_families(scrape):
        for s in family.samples:
            routes.add(s.labels.get("route"))
            orgs.add(s.labels.get("org"))
            models.add(s.labels.get("model"))
    assert routes - {None} <= set(BY_PATH) | {UNKNOWN_ROUTE}
    assert "/v1/models/{model_id}" in routes
    assert orgs - {None} <= {"acme", "paid", "broke", "-"}
    assert models - {None} <= {"gpt-4o-mini", "gpt-4o", "claude-haiku-4-5"}
