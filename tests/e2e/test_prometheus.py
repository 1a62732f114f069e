"""Prometheus, the alert rules and the Grafana dashboard, against a real Envoy with the built filter.

A real Prometheus (Debian's `prometheus` package, installed by `make tools`) scrapes the admin `/stats/prometheus` of a
real Envoy loading envoy.yaml and the built wasm, with deploy/prometheus/alerts.yaml loaded as its rule file. The
tests send signed and refused requests, then ask Prometheus' HTTP API for each of the filter's metrics by name.

The metric names, types and labels come from one list, deploy/prometheus/metrics.yaml: every `exported` entry must be
in the scrape with that type, those labels and the value the requests sent imply, and every `mcp_jwt_signer_*` name in
the scrape must be listed (so a new filter metric fails here until it is listed and documented in
deploy/prometheus/README.md). Alert rules: `promtool check rules`, `promtool test rules alerts.test.yaml` (with a
negative control each), and a live evaluation in the real Prometheus. Dashboard: every PromQL expression runs against
the live Prometheus without error, returns data, and names only metrics the real Envoy exported.
"""

from __future__ import annotations

import json
import math
import re
import shutil
import subprocess
import time
from pathlib import Path

import pytest
import requests
import yaml

from harness import MCP_HEADERS, REPO, free_port, rpc, running_gateway, stop_process

# deploy/prometheus (alert rules, dashboard, metric list) is written for the wasm build's metric names
# (`wasmcustom.` stats, which Envoy's Prometheus output strips; a dynamic module's are `envoy_dynamicmodulescustom_...`,
# docs/builds.md): inherently the wasm build.
pytestmark = pytest.mark.wasm_only

PROM_DIR = REPO / "deploy" / "prometheus"
ALERTS = PROM_DIR / "alerts.yaml"
ALERT_TESTS = PROM_DIR / "alerts.test.yaml"
DASHBOARD = REPO / "deploy" / "grafana" / "mcp-jwt-signer.json"
METRICS = yaml.safe_load((PROM_DIR / "metrics.yaml").read_text())
FILTER_METRICS = METRICS["metrics"]
EXPORTED = [m for m in FILTER_METRICS if m["status"] == "exported"]
PROPOSED = [m for m in FILTER_METRICS if m["status"] == "proposed"]
ENVOY_METRICS = METRICS["envoy_metrics"]
SCRAPE_JOB = "mcp-jwt-signer-envoy"
# Series labels Prometheus adds to every scraped series.
TARGET_LABELS = {"__name__", "instance", "job"}
HISTOGRAM_SUFFIXES = ("_bucket", "_sum", "_count")
IDENTITY = {"subject": ["header:x-user-id"]}


def tool(name: str) -> str:
    path = shutil.which(name)
    assert path, f"`{name}` is not installed: run `make tools` (Debian's prometheus package)"
    return path


def prometheus_series_names(metric: dict) -> list:
    name = metric["prometheus"]
    return [name + s for s in HISTOGRAM_SUFFIXES] if metric["type"] == "histogram" else [name]


# ================================================================================================================
# a real Prometheus scraping a real Envoy
# ================================================================================================================
class Prometheus:
    def __init__(self, workdir: Path, admin_port: int):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        config = {
            "global": {"scrape_interval": "1s", "scrape_timeout": "1s", "evaluation_interval": "1s"},
            "rule_files": [str(ALERTS)],
            "scrape_configs": [{
                "job_name": SCRAPE_JOB,
                "metrics_path": "/stats/prometheus",
                "static_configs": [{"targets": [f"127.0.0.1:{admin_port}"]}],
            }],
        }
        workdir.mkdir(parents=True, exist_ok=True)
        self.config_path = workdir / "prometheus.yml"
        self.config_path.write_text(yaml.safe_dump(config))
        self.log_path = workdir / "prometheus.log"
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(
                [tool("prometheus"), f"--config.file={self.config_path}", f"--storage.tsdb.path={workdir / 'data'}",
                 f"--web.listen-address=127.0.0.1:{self.port}", "--log.level=warn"],
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
        deadline = time.monotonic() + 30
        while True:
            assert self.proc.poll() is None, f"prometheus exited: {self.log_path.read_text()[-2000:]}"
            try:
                if requests.get(self.url + "/-/ready", timeout=1).status_code == 200:
                    break
            except requests.RequestException:
                pass
            assert time.monotonic() < deadline, f"prometheus not ready: {self.log_path.read_text()[-2000:]}"
            time.sleep(0.2)

    def api(self, path: str, **params) -> dict:
        r = requests.get(self.url + "/api/v1/" + path, params=params, timeout=10)
        body = r.json()
        assert r.status_code == 200 and body.get("status") == "success", f"{path} {params}: {r.status_code} {body}"
        return body["data"]

    def query(self, expr: str) -> list:
        return self.api("query", query=expr)["result"]

    def names(self) -> set:
        return set(self.api("label/__name__/values"))

    def stop(self):
        stop_process(self.proc)


def filter_stats(admin_url: str) -> dict:
    """The filter's counters as Envoy's admin /stats shows them (wasmcustom.<stat>)."""
    r = requests.get(admin_url + "/stats", params={"filter": "wasmcustom", "format": "json"}, timeout=5)
    return {s["name"].removeprefix("wasmcustom."): s["value"] for s in r.json()["stats"] if "name" in s}


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    """Envoy (one worker, so one token cache sees every request) + Prometheus, after a known set of requests.
    Yields (gateway, prometheus, expected, started) where expected maps each counter's Prometheus series (a name,
    or (name, reason)) to the value Envoy must report, and started is the time the requests began."""
    workdir = tmp_path_factory.mktemp("prometheus")
    config = lambda url: {"issuer": url, "identity": IDENTITY}  # noqa: E731
    with running_gateway(workdir / "envoy", config, concurrency=1) as g:
        prom = Prometheus(workdir / "prometheus", g.admin_port)
        try:
            before = filter_stats(g.admin_url)
            # Prometheus must see the counters before the requests, or every rate() over the run is 0.
            wait_for_values(prom, {"mcp_jwt_signer_tokens_minted": before.get("mcp_jwt_signer.tokens_minted", 0)})
            time.sleep(1.5)
            started = time.time()
            # Refused, first one of each reason: Envoy creates a reason's counter at its first refusal, so
            # Prometheus must see these before the rest or rate() would miss the increase.
            def refuse_parse_error():
                assert requests.post(g.url + "/mcp", data=b"{", headers=MCP_HEADERS, timeout=5).status_code == 400

            def refuse_invalid_params():
                bad = rpc("tools/call", {"name": "a b"})
                assert requests.post(g.url + "/mcp", json=bad, headers=MCP_HEADERS, timeout=5).status_code == 400

            def refuse_method():
                assert requests.put(g.url + "/mcp", data=b"{}", timeout=5).status_code == 405

            refuse_parse_error()
            refuse_invalid_params()
            refuse_method()
            wait_for_values(prom, {("mcp_jwt_signer_refused", r): before.get(f"mcp_jwt_signer.refused.{r}", 0) + 1
                                   for r in ("parse_error", "invalid_params", "method_not_allowed")})
            # Signed: three users (3 minted), two of them again (2 reused from the cache).
            for user in ("alice", "bob", "carol", "alice", "bob"):
                r = requests.post(g.url + "/mcp", json=rpc("tools/call", {"name": "get_weather"}),
                                  headers={**MCP_HEADERS, "x-user-id": user}, timeout=10)
                assert r.status_code == 200, r.text
            assert len(g.upstream.requests) == 5
            # Refused: two parse errors (one more here), one invalid tool name, one wrong HTTP method.
            refuse_parse_error()
            # Served by the filter itself.
            for _ in range(2):
                assert requests.get(g.url + "/.well-known/openid-configuration", timeout=5).status_code == 200
            for _ in range(3):
                assert requests.get(g.url + "/.well-known/jwks.json", timeout=5).status_code == 200
            assert len(g.upstream.requests) == 5, "refused requests must not reach the upstream"

            def was(stat):
                return before.get(stat, 0)

            expected = {
                "mcp_jwt_signer_tokens_minted": was("mcp_jwt_signer.tokens_minted") + 3,
                "mcp_jwt_signer_token_cache_hits": was("mcp_jwt_signer.token_cache_hits") + 2,
                "mcp_jwt_signer_discovery_served": was("mcp_jwt_signer.discovery_served") + 2,
                "mcp_jwt_signer_jwks_served": was("mcp_jwt_signer.jwks_served") + 3,
                ("mcp_jwt_signer_refused", "parse_error"): was("mcp_jwt_signer.refused.parse_error") + 2,
                ("mcp_jwt_signer_refused", "invalid_params"): was("mcp_jwt_signer.refused.invalid_params") + 1,
                ("mcp_jwt_signer_refused", "method_not_allowed"): was("mcp_jwt_signer.refused.method_not_allowed") + 1,
                # Every minted token is one histogram sample; Envoy flushes histograms every 5 s.
                "mcp_jwt_signer_sign_duration_us_count": was("mcp_jwt_signer.tokens_minted") + 3,
            }
            wait_for_values(prom, expected)
            yield g, prom, expected, started
        finally:
            prom.stop()


def scraped_value(prom: Prometheus, key):
    if isinstance(key, tuple):
        name, reason = key
        result = prom.query(f'{name}{{job="{SCRAPE_JOB}", reason="{reason}"}}')
    else:
        result = prom.query(f'{key}{{job="{SCRAPE_JOB}"}}')
    return [float(s["value"][1]) for s in result]


def wait_for_values(prom: Prometheus, expected: dict, timeout: float = 45.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        got = {k: scraped_value(prom, k) for k in expected}
        if all(got[k] == [float(v)] for k, v in expected.items()):
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"Prometheus never showed the expected values:\n expected {expected}\n got {got}")
        time.sleep(0.5)


# ================================================================================================================
# the metrics, by name
# ================================================================================================================
def test_counters_equal_what_was_sent(stack):
    _, prom, expected, _ = stack
    for key, value in expected.items():
        assert scraped_value(prom, key) == [float(value)], key


def test_every_listed_metric_is_scraped_with_its_type_and_labels(stack):
    _, prom, _, _ = stack
    metadata = prom.api("metadata")
    for metric in EXPORTED:
        name = metric["prometheus"]
        assert [m["type"] for m in metadata.get(name, [])] == [metric["type"]], \
            f"{name}: Prometheus learned type {metadata.get(name)}, metrics.yaml says {metric['type']}"
        for series_name in prometheus_series_names(metric):
            series = prom.query(f'{series_name}{{job="{SCRAPE_JOB}"}}')
            assert series, f"{series_name} is not in the scrape"
            expected_labels = set(metric["labels"])
            if metric["type"] == "histogram" and not series_name.endswith("_bucket"):
                expected_labels -= {"le"}  # _sum and _count
            for s in series:
                assert set(s["metric"]) - TARGET_LABELS == expected_labels, \
                    f"{series_name}: labels {sorted(s['metric'])}, metrics.yaml says {metric['labels']}"
    for metric in ENVOY_METRICS:
        assert [m["type"] for m in metadata.get(metric["prometheus"], [])] == [metric["type"]], metric
        for s in prom.query(f'{metric["prometheus"]}{{job="{SCRAPE_JOB}"}}'):
            assert set(s["metric"]) - TARGET_LABELS == set(metric["labels"]), s


def test_no_filter_metric_is_missing_from_the_list(stack):
    """A metric the filter gains (introspection_*, shared_cache_hits, ...) must be listed in metrics.yaml."""
    _, prom, _, _ = stack
    listed = {n for m in FILTER_METRICS for n in prometheus_series_names(m)}
    scraped = {n for n in prom.names() if n.startswith("mcp_jwt_signer_")}
    assert scraped - listed == set(), f"in the scrape but not in deploy/prometheus/metrics.yaml: {scraped - listed}"
    assert not any(n.startswith(("envoy_wasmcustom", "wasmcustom")) for n in prom.names()), \
        "Envoy should drop the wasmcustom namespace in Prometheus names"


def test_proposed_metrics_are_not_exported_yet(stack):
    """When the filter starts exporting a proposed metric, flip its status in metrics.yaml (and check the type)."""
    _, prom, _, _ = stack
    names = prom.names()
    for metric in PROPOSED:
        assert metric["prometheus"] not in names, f"{metric['prometheus']} is exported now: mark it `exported`"


def test_refusal_reasons_match_the_source(stack):
    source = (REPO / "src" / "refusal.rs").read_text()
    body = source.split("pub fn reason(&self)", 1)[1].split("\n    }\n", 1)[0]
    reasons = re.findall(r'=>\s*"([a-z_]+)"', body)
    assert reasons, "could not read Refusal::reason() from src/refusal.rs"
    assert sorted(reasons) == sorted(METRICS["refusal_reasons"]), "metrics.yaml refusal_reasons != src/refusal.rs"
    _, prom, _, _ = stack
    scraped = {s["metric"]["reason"] for s in prom.query("mcp_jwt_signer_refused")}
    assert scraped and scraped <= set(reasons), scraped


def test_sign_duration_histogram_has_buckets(stack):
    _, prom, expected, _ = stack
    buckets = prom.query(f'mcp_jwt_signer_sign_duration_us_bucket{{job="{SCRAPE_JOB}"}}')
    les = {s["metric"]["le"]: float(s["value"][1]) for s in buckets}
    envoy_yaml = yaml.safe_load((REPO / "envoy.yaml").read_text())
    (setting,) = [b for b in envoy_yaml["stats_config"]["histogram_bucket_settings"]
                  if b["match"]["prefix"] == "wasmcustom.mcp_jwt_signer.sign_duration_us"]
    assert {float(k) for k in les if k != "+Inf"} == {float(b) for b in setting["buckets"]}, les
    count = expected["mcp_jwt_signer_sign_duration_us_count"]
    assert les["+Inf"] == count
    assert [les[k] for k in sorted(les, key=lambda k: math.inf if k == "+Inf" else float(k))] == \
        sorted(les.values()), "buckets must be cumulative"
    (p99,) = prom.query('histogram_quantile(0.99, sum by (le) (mcp_jwt_signer_sign_duration_us_bucket))')
    assert 0 < float(p99["value"][1]) <= float(setting["buckets"][-1]), p99
    (total,) = prom.query("mcp_jwt_signer_sign_duration_us_sum")
    assert float(total["value"][1]) > 0


# ================================================================================================================
# alert rules
# ================================================================================================================
def promtool(*args, cwd=None) -> subprocess.CompletedProcess:
    return subprocess.run([tool("promtool"), *args], capture_output=True, text=True, timeout=120, cwd=cwd)


def test_alert_rules_pass_promtool_check():
    r = promtool("check", "rules", str(ALERTS))
    assert r.returncode == 0, r.stdout + r.stderr
    names = {rule["alert"] for group in yaml.safe_load(ALERTS.read_text())["groups"] for rule in group["rules"]}
    assert {"MCPJwtSignerRefusalRateHigh", "MCPJwtSignerSignLatencyHigh", "MCPJwtSignerNoTokensWhileTrafficFlows",
            "MCPJwtSignerGeneratedKeyInUse"} <= names, names


def test_promtool_check_refuses_a_broken_rule(tmp_path):
    """Negative control: promtool really parses the expressions."""
    broken = ALERTS.read_text().replace("> 25000", "> 25000 +", 1)
    assert broken != ALERTS.read_text()
    (tmp_path / "alerts.yaml").write_text(broken)
    r = promtool("check", "rules", str(tmp_path / "alerts.yaml"))
    assert r.returncode != 0, r.stdout


def test_alert_rules_unit_tests_pass():
    r = promtool("test", "rules", ALERT_TESTS.name, cwd=PROM_DIR)
    assert r.returncode == 0, r.stdout + r.stderr
    tested = {t["alertname"] for case in yaml.safe_load(ALERT_TESTS.read_text())["tests"]
              for t in case.get("alert_rule_test", [])}
    alerts = {rule["alert"] for group in yaml.safe_load(ALERTS.read_text())["groups"] for rule in group["rules"]}
    assert tested == alerts, f"alerts without a unit test: {alerts - tested}"


@pytest.mark.parametrize("mutation", [
    ("> 25000", "> 60000"),          # latency threshold: the slow instance no longer alerts
    ("> 0.05", "> 0.5"),             # refusal ratio: gw-a (14%) no longer alerts
    ('envoy_http_conn_manager_prefix!="admin"', 'envoy_http_conn_manager_prefix!="none"'),  # admin scrapes count
    ("== 1\n    for: 15m", "== 0\n    for: 15m"),  # generated key: fires for the configured key instead
], ids=["latency", "refusal-ratio", "admin-excluded", "generated-key"])
def test_alert_unit_tests_catch_a_changed_rule(tmp_path, mutation):
    """Negative control: the unit tests fail when a rule changes meaning."""
    old, new = mutation
    text = ALERTS.read_text()
    assert text.count(old) == 1, old
    (tmp_path / "alerts.yaml").write_text(text.replace(old, new))
    shutil.copy(ALERT_TESTS, tmp_path / ALERT_TESTS.name)
    r = promtool("test", "rules", ALERT_TESTS.name, cwd=tmp_path)
    assert r.returncode != 0, f"the unit tests still pass with {mutation}:\n{r.stdout}"


PROMQL_WORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "bool", "and", "or", "unless",
                "offset", "inf", "nan"}


def metric_names(expr: str) -> set:
    """Metric names a PromQL expression selects: identifiers that are not functions, keywords, label names
    (inside {...} or by/without/on/ignoring/group_*(...)), strings, durations or numbers."""
    s = re.sub(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`', '""', expr)
    s = re.sub(r"\{[^}]*\}", " ", s)
    s = re.sub(r"\[[^\]]*\]", " ", s)
    s = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", s)
    names = set()
    for m in re.finditer(r"(?<![\w.])[A-Za-z_:][A-Za-z0-9_:]*", s):
        if m.group(0).lower() in PROMQL_WORDS or s[m.end():].lstrip().startswith("("):
            continue
        names.add(m.group(0))
    return names


def test_metric_name_extraction():
    assert metric_names('sum by (reason) (rate(mcp_jwt_signer_refused{instance=~"a|b"}[5m])) > 0.05') == \
        {"mcp_jwt_signer_refused"}
    assert metric_names("histogram_quantile(0.99, sum by (le) (rate(x_bucket[1m]))) > 2.5e4 and on (i) y") == \
        {"x_bucket", "y"}
    assert metric_names("max by (instance) (up) == 1 unless on (instance) max(z) offset 5m") == {"up", "z"}


def alert_exprs() -> dict:
    return {rule["alert"]: rule["expr"] for group in yaml.safe_load(ALERTS.read_text())["groups"]
            for rule in group["rules"]}


def test_alert_rules_use_real_or_proposed_metric_names(stack):
    _, prom, _, _ = stack
    scraped = prom.names()
    proposed = {m["prometheus"] for m in PROPOSED}
    for alert, expr in alert_exprs().items():
        names = metric_names(expr)
        assert names, alert
        unknown = names - scraped - proposed
        assert unknown == set(), f"{alert}: {unknown} is neither in the real scrape nor a proposed metric"


def test_alert_rules_evaluate_in_the_live_prometheus(stack):
    """The rules are loaded and evaluated by the real Prometheus without error. On this healthy gateway (tokens
    signed, 4 refusals: below the minimum of 10) no expression matches, except the generated-key rule: this gateway
    signs with a generated key, and the filter's gauge says so."""
    _, prom, _, _ = stack
    deadline = time.monotonic() + 30
    while True:
        rules = [r for group in prom.api("rules")["groups"] for r in group["rules"]]
        if rules and all(r.get("lastEvaluation", "").split("T")[0] not in ("", "0001-01-01") for r in rules):
            break
        assert time.monotonic() < deadline, rules
        time.sleep(0.5)
    assert {r["name"] for r in rules} == set(alert_exprs())
    for r in rules:
        assert r["health"] == "ok", f"{r['name']}: {r.get('lastError')}"
    # Signing time depends on this machine's load: the latency rule must match exactly when a signature took longer
    # than 25 ms (the bucket le=25000 then holds fewer samples than +Inf).
    buckets = {s["metric"]["le"]: float(s["value"][1]) for s in prom.query("mcp_jwt_signer_sign_duration_us_bucket")}
    slow = buckets["25000"] < buckets["+Inf"]
    for alert, expr in alert_exprs().items():
        matches = prom.query(expr)
        if alert == "MCPJwtSignerSignLatencyHigh" and slow:
            assert matches, f"{alert}: a signature took > 25 ms ({buckets}) but the rule does not match"
        elif alert == "MCPJwtSignerGeneratedKeyInUse":
            # This gateway has no configured key: the filter says so, and the rule sees it.
            assert [m["value"][1] for m in matches] == ["1"], f"{alert}: {matches}"
        else:
            assert matches == [], f"{alert} matches on a healthy gateway: {matches}"
    # The scrape job really is one that MCPJwtSignerMetricsMissing watches (its job matcher), and it has metrics.
    assert prom.query('max by (instance) (up{job=~".*envoy.*"}) == 1'), "the scrape job is not matched"


# ================================================================================================================
# the Grafana dashboard
# ================================================================================================================
def dashboard() -> dict:
    return json.loads(DASHBOARD.read_text())


def dashboard_exprs() -> list:
    """(panel title, refId, expr) for every target of every panel."""
    out = []
    for panel in dashboard()["panels"]:
        for t in panel.get("targets", []):
            out.append((panel["title"], t["refId"], t["expr"]))
    return out


def grafana_to_promql(expr: str) -> str:
    """Grafana's variables as this test's Prometheus sees them (scrape every 1 s)."""
    return (expr.replace("$__rate_interval", "15s").replace("$__interval", "1s")
            .replace('"$instance"', '".*"').replace("$instance", ".*"))


def test_dashboard_has_the_panels_and_uses_the_datasource_variable():
    d = dashboard()
    titles = [p["title"] for p in d["panels"]]
    for wanted in ("Tokens per second", "Token cache hit ratio", "Refusals by reason", "Signing latency",
                   "Discovery and JWKS served"):
        assert wanted in titles, titles
    assert len({p["id"] for p in d["panels"]}) == len(d["panels"])
    latency = [t["expr"] for p in d["panels"] if p["title"] == "Signing latency" for t in p["targets"]]
    assert any("histogram_quantile(0.5," in e for e in latency) and any("histogram_quantile(0.99," in e for e in latency)
    assert {v["name"] for v in d["templating"]["list"]} >= {"datasource", "instance"}
    for p in d["panels"]:
        assert p["datasource"]["uid"] == "${datasource}"
        assert len({t["refId"] for t in p["targets"]}) == len(p["targets"])
        for t in p["targets"]:
            assert t["datasource"]["uid"] == "${datasource}"


def test_dashboard_queries_use_only_scraped_metric_names(stack):
    _, prom, _, _ = stack
    scraped = prom.names()
    queries = [(title, ref, grafana_to_promql(e)) for title, ref, e in dashboard_exprs()]
    for var in dashboard()["templating"]["list"]:
        q = var.get("query")
        if isinstance(q, dict):
            m = re.fullmatch(r"label_values\((\w+),\s*(\w+)\)", q["query"])
            assert m, q
            assert m.group(1) in scraped, q
            assert prom.api(f"label/{m.group(2)}/values", **{"match[]": m.group(1)}), q
    assert queries
    for title, ref, expr in queries:
        names = metric_names(expr)
        assert names, (title, ref)
        assert names <= scraped, f"{title}/{ref}: {names - scraped} is not a metric the real Envoy exported"


def test_dashboard_queries_run_and_show_data(stack):
    """Each query parses and evaluates in the real Prometheus and returns data for this gateway (over the time since
    the requests were sent)."""
    _, prom, _, started = stack
    end = time.time()
    for title, ref, expr in dashboard_exprs():
        data = prom.api("query_range", query=grafana_to_promql(expr), start=started - 5, end=end, step=1)
        values = [float(v) for series in data["result"] for _, v in series["values"]]
        assert any(v > 0 for v in values if not math.isnan(v)), f"{title}/{ref} shows no data: {expr}"


def test_dashboard_checks_catch_wrong_names_and_bad_syntax(stack):
    """Negative controls for the two checks above: a plausible wrong name (with Envoy's usual envoy_ prefix and the
    wasmcustom namespace) is not in the scrape, and a malformed expression is refused by Prometheus."""
    _, prom, _, _ = stack
    wrong = "sum(rate(envoy_wasmcustom_mcp_jwt_signer_tokens_minted[15s]))"
    assert metric_names(wrong) - prom.names() == {"envoy_wasmcustom_mcp_jwt_signer_tokens_minted"}
    r = requests.get(prom.url + "/api/v1/query", params={"query": "sum(rate(mcp_jwt_signer_tokens_minted[15s])"},
                     timeout=5)
    assert r.status_code == 400 and r.json()["errorType"] == "bad_data", r.text


# ================================================================================================================
# documentation
# ================================================================================================================
def test_readme_documents_every_metric():
    readme = (PROM_DIR / "README.md").read_text()
    for metric in FILTER_METRICS + ENVOY_METRICS:
        assert f"`{metric['prometheus']}`" in readme, metric["prometheus"]
        assert metric["type"] in readme
    for metric in FILTER_METRICS:
        assert f"`{metric['stat']}`" in readme or f"`wasmcustom.{metric['stat']}`" in readme, metric["stat"]
    for reason in METRICS["refusal_reasons"]:
        assert f"`{reason}`" in readme, reason
    for alert in alert_exprs():
        assert alert in readme, alert
