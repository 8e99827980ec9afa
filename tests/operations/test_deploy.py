"""The files of deploy/ are checked by the tools that read them.

hadolint (Dockerfile), promtool (Prometheus config, alert rules and their unit tests) and
kubernetes-validate (Kubernetes manifests) must be installed: a missing tool FAILS these
tests, it does not skip them. The dashboard and the alert rules may only use metrics that
the app really exposes, which is checked against its /metrics after real traffic.
"""

from __future__ import annotations

import contextlib
import json
import re
import secrets
import subprocess
from pathlib import Path
from typing import Any

import openai
import pytest
import requests
import yaml
from tollway.config.loader import parse_config_text

from tests.support.tools import find_tool

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "k8s"
DASHBOARD = DEPLOY / "grafana" / "dashboards" / "tollway.json"
ALERTS = DEPLOY / "prometheus" / "alerts.yml"
METRIC = re.compile(r"\btollway_[a-z0-9_]+\b")
BY = re.compile(r"\bby\s*\(([^)]*)\)")


def tool(name: str) -> str:
    """A command, from .tools/bin (tests/install-tools.sh), the test environment or PATH."""
    path = find_tool(name)
    assert path, f"{name} is not installed (see the README's test command)"
    return path


def run(*cmd: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120, cwd=DEPLOY)


def load_all(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


# --- Dockerfile -------------------------------------------------------------------------


def test_dockerfile_passes_hadolint():
    result = run(tool("hadolint"), "--failure-threshold", "info", "Dockerfile")
    assert result.returncode == 0, result.stdout + result.stderr


def test_dockerfile_shape():
    text = (DEPLOY / "Dockerfile").read_text()
    assert len(re.findall(r"^FROM python:3\.\d+-slim", text, re.M)) == 2  # build, runtime
    assert re.search(r"^USER 10001", text, re.M)
    assert re.search(r"^HEALTHCHECK .*/healthz", text, re.M | re.S)
    assert "COPY --from=build /opt/tiktoken /opt/tiktoken" in text
    assert re.search(r"^ENV .*TIKTOKEN_CACHE_DIR=/opt/tiktoken", text, re.M | re.S)
    # The install and run commands are the documented ones.
    docs = (ROOT / "docs" / "deploy.md").read_text()
    assert "pip install --no-cache-dir ." in text and "pip install ." in docs
    cmd = re.search(r"^CMD \[(.*)\]", text, re.M)
    assert cmd is not None
    run_cmd = "tollway " + " ".join(json.loads(f"[{cmd.group(1)}]"))
    assert run_cmd in docs


# --- compose ----------------------------------------------------------------------------


def test_compose_file_parses_and_its_files_exist():
    compose = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    services = compose["services"]
    assert set(services) == {"tollway", "redis", "postgres", "prometheus", "grafana"}
    assert services["tollway"]["deploy"]["replicas"] == 2
    assert "--appendonly" in services["redis"]["command"]
    build = services["tollway"]["build"]
    assert (DEPLOY / build["context"] / build["dockerfile"]).is_file()
    for name, service in services.items():
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("."):
                assert (DEPLOY / source).exists(), f"{name}: {source} does not exist"
            else:
                assert source in compose["volumes"], f"{name}: undeclared volume {source}"
    config = DEPLOY / "../config/examples/tollway.yaml"
    assert services["tollway"]["environment"]["TOLLWAY_CONFIG"] == "/etc/tollway/tollway.yaml"
    assert config.is_file()


# --- Prometheus -------------------------------------------------------------------------


def test_prometheus_config_and_rules_pass_promtool():
    promtool = tool("promtool")
    for args in (
        ("check", "config", "prometheus/prometheus.yml"),
        ("check", "rules", "prometheus/alerts.yml"),
        ("test", "rules", "prometheus/alerts_test.yml"),
    ):
        result = run(promtool, *args)
        assert result.returncode == 0, result.stdout + result.stderr


def test_the_required_alerts_exist():
    rules = [r for g in yaml.safe_load(ALERTS.read_text())["groups"] for r in g["rules"]]
    names = {r["alert"] for r in rules}
    assert {
        "TollwayRedisUnavailable",
        "TollwayHighRefusalRate",
        "TollwayAutoReloadFailing",
        "TollwayBalanceRunningOut",
        "TollwayConfigReloadFailed",
    } <= names


def test_grafana_provisioning_points_at_the_dashboard():
    ds = yaml.safe_load((DEPLOY / "grafana/provisioning/datasources/prometheus.yml").read_text())
    uid = ds["datasources"][0]["uid"]
    dashboard = json.loads(DASHBOARD.read_text())
    for panel in dashboard["panels"]:
        assert panel["datasource"]["uid"] == uid
        assert panel["targets"], panel["title"]
    titles = " ".join(p["title"].lower() for p in dashboard["panels"])
    for word in ("refusals", "tokens", "spend", "balance", "added latency", "upstream", "redis"):
        assert word in titles


# --- the metrics the dashboard and alerts use exist -------------------------------------


def exposed(text: str) -> dict[str, set[str]]:
    """Series names of an exposition (counters with _total, histograms' _bucket/_sum/
    _count, families without samples too) → their label names."""
    from prometheus_client.parser import text_string_to_metric_families

    out: dict[str, set[str]] = {}
    suffixes = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count")}
    for family in text_string_to_metric_families(text):
        labels: set[str] = set()
        for sample in family.samples:
            labels |= set(sample.labels)
            out.setdefault(sample.name, set()).update(sample.labels)
        for suffix in suffixes.get(family.type, ("",)):
            out.setdefault(family.name + suffix, set()).update(labels)
    return out


@pytest.fixture
def exposition(stack_factory) -> dict[str, set[str]]:
    """/metrics after real traffic: admitted, refused, settled, with a credit balance."""
    stack = stack_factory(
        "organizations:\n  acme: {limits: {rpm: 2}, billing: {mode: prepaid}}\n  globex: {}\n"
    )
    k = stack.keys
    now, lot = stack.clock.now_ms(), "lot_" + secrets.token_hex(4)
    keys = [k.account("acme"), k.lots("acme"), k.lot_expiries("acme"), k.lots_all("acme")]
    keys += [k.ledger("acme"), k.lot("acme", lot)]
    args = [now, lot, "purchased", 10**6, now + 86_400_000, "purchase", "", k.lot_prefix("acme")]
    stack.run(stack.store.run("add_lot", keys, args))
    acme, globex = stack.key("acme"), stack.key("globex")
    hello = [{"role": "user", "content": "Say hello"}]
    for key in (acme, acme, acme, globex):
        # The third acme request is refused (rpm 2): that is the point.
        with contextlib.suppress(openai.RateLimitError):
            stack.openai(key).chat.completions.create(model="gpt-4o-mini", messages=hello)
    stack.holder.reload()  # a config reload (success)
    stack.wait_settled()
    out = exposed(requests.get(stack.metrics_url + "/metrics", timeout=10).text)
    # Label names of families that have no sample yet (no store error happened, say).
    for metric in vars(stack.metrics).values():
        names = getattr(metric, "_labelnames", None)
        if names is not None:
            for series, labels in out.items():
                if series.startswith(metric._name):
                    labels.update(names)
    return out


def promql(dashboard: dict[str, Any]) -> list[str]:
    exprs = [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    return exprs + [v["definition"] for v in dashboard["templating"]["list"]]


def test_dashboard_and_alerts_use_only_exposed_metrics(exposition):
    dashboard = json.loads(DASHBOARD.read_text())
    rules = [r for g in yaml.safe_load(ALERTS.read_text())["groups"] for r in g["rules"]]
    exprs = promql(dashboard) + [r["expr"] for r in rules]
    assert exprs
    for expr in exprs:
        names = set(METRIC.findall(expr))
        if expr.startswith("up{"):  # Prometheus' own scrape health series
            continue
        assert names, expr
        missing = names - set(exposition)
        assert not missing, f"{expr}: {sorted(missing)} not in /metrics"
        # Labels grouped by must be labels of the metrics (or Prometheus' own).
        known = set().union(*(exposition[n] for n in names)) | {"le", "instance", "job"}
        for group in BY.findall(expr):
            by = {label.strip() for label in group.split(",") if label.strip()}
            assert by <= known, f"{expr}: unknown labels {sorted(by - known)}"
    assert "tollway_requests_total" in exposition
    assert {"org", "reason"} <= exposition["tollway_refusals_total"]


# --- Kubernetes -------------------------------------------------------------------------


def test_k8s_manifests_pass_kubernetes_validate():
    kinds = {d["kind"] for f in K8S.glob("*.yaml") for d in load_all(f)}
    assert {"Deployment", "Service", "ConfigMap", "Secret", "PodDisruptionBudget"} <= kinds
    assert {"HorizontalPodAutoscaler", "PodMonitor"} <= kinds
    core = [str(f) for f in sorted(K8S.glob("*.yaml"))
            if f.name not in ("kustomization.yaml", "podmonitor.yaml")]  # fmt: skip
    result = run(tool("kubernetes-validate"), "--strict", *core)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.count(" passed for resource ") == len(core)


def test_k8s_pieces_fit_together():
    docs = {d["kind"]: d for f in K8S.glob("*.yaml") for d in load_all(f)}
    listed = set(docs["Kustomization"]["resources"])
    assert listed == {f.name for f in K8S.glob("*.yaml")} - {"kustomization.yaml"}
    deployment, service = docs["Deployment"], docs["Service"]
    pod = deployment["spec"]["template"]
    labels = pod["metadata"]["labels"]
    assert deployment["spec"]["replicas"] >= 2
    for selector in (
        deployment["spec"]["selector"]["matchLabels"],
        service["spec"]["selector"],
        docs["PodDisruptionBudget"]["spec"]["selector"]["matchLabels"],
        docs["PodMonitor"]["spec"]["selector"]["matchLabels"],
    ):
        assert selector.items() <= labels.items()
    # Metrics are scraped on the pods' metrics port, which the client Service never exposes.
    assert docs["PodMonitor"]["spec"]["podMetricsEndpoints"][0]["port"] == "metrics"
    assert [p["name"] for p in service["spec"]["ports"]] == ["http"]
    assert docs["HorizontalPodAutoscaler"]["spec"]["scaleTargetRef"]["name"] == "tollway"
    container = pod["spec"]["containers"][0]
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert container["resources"]["requests"] and container["resources"]["limits"]
    # The grace period covers the drain (twice the drain timeout) and the final settle.
    args = container["args"]
    drain = float(args[args.index("--drain-timeout") + 1])
    assert pod["spec"]["terminationGracePeriodSeconds"] >= 2 * drain + 10 + 5
    # The ConfigMap is mounted as a folder (a subPath mount never sees edits).
    mount = next(m for m in container["volumeMounts"] if m["name"] == "config")
    assert "subPath" not in mount
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["TOLLWAY_CONFIG"] == mount["mountPath"] + "/tollway.yaml"
    # The config is valid, and every secret it names comes from the Secret.
    secret = docs["Secret"]["stringData"]
    text = docs["ConfigMap"]["data"]["tollway.yaml"]
    cfg = parse_config_text(text, "configmap.yaml", secret)
    needed = {u.api_key_env for u in cfg.upstreams.values()} | {cfg.server.admin_token_env}
    assert needed <= set(secret)
    assert container["envFrom"][0]["secretRef"]["name"] == docs["Secret"]["metadata"]["name"]
