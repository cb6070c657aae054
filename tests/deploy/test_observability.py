"""docker/prometheus.yml, its rules and docker/grafana-dashboard.json against what the service really exports: every
metric a PromQL expression names must be on /metrics of an app that has served a prediction and refused uploads."""

from __future__ import annotations

import functools
import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from service.app import create_app
from tests.conftest import PROJECT_ROOT
from tests.service.conftest import phantom_png, service_settings

DOCKER_DIR = PROJECT_ROOT / "docker"
DASHBOARD = DOCKER_DIR / "grafana-dashboard.json"
PROMETHEUS = DOCKER_DIR / "prometheus.yml"
COMPOSE = DOCKER_DIR / "compose.yaml"
API_JOB = "xray-api"

# series Prometheus adds to every scrape target itself: never on /metrics
PROMETHEUS_SERIES = {"up", "scrape_duration_seconds", "scrape_samples_scraped", "scrape_series_added"}
PROMQL_KEYWORDS = {
    "by", "without", "on", "ignoring", "group_left", "group_right", "bool", "and", "or", "unless", "offset",
    "atan2", "inf", "nan", "start", "end",
}  # fmt: skip
SAMPLE_SUFFIXES = {
    "counter": ("_total", "_created"),
    "histogram": ("_bucket", "_sum", "_count", "_created"),
    "summary": ("", "_sum", "_count", "_created"),
    "gauge": ("",),
    "info": ("_info",),
}


# ------------------------------------------------------------------------------------------------ PromQL names
def promql_metric_names(expr: str) -> set[str]:
    """Metric names an expression selects: identifiers that are not functions or aggregations (followed by `(`),
    keywords, label names (inside `{...}` or a by/without/on/ignoring/group_x list), strings, numbers, durations,
    ranges or Grafana variables."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`', " ", expr)  # string literals
    text = re.sub(r"\{[^{}]*\}", " ", text)  # label matchers
    text = re.sub(r"\[[^\[\]]*\]", " ", text)  # ranges and subqueries
    text = re.sub(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^()]*\)", " ", text)
    text = re.sub(r"\$\{[^}]*\}|\$\w+", " ", text)  # Grafana variables
    text = re.sub(r"(?<![\w:.])(?:\d+(?:ms|[smhdwy]))+(?![\w:])", " ", text)  # durations (offset 5m)
    text = re.sub(r"(?<![\w:.])(?:0x[0-9a-fA-F]+|\d*\.?\d+(?:[eE][+-]?\d+)?)(?![\w:])", " ", text)  # numbers
    names = set()
    for match in re.finditer(r"[A-Za-z_:][A-Za-z0-9_:]*", text):
        following = text[match.end() :].lstrip()
        if following.startswith("(") or match.group().lower() in PROMQL_KEYWORDS:
            continue
        names.add(match.group())
    return names


def template_query_metric_names(query: str) -> set[str]:
    """Metric names in a Grafana Prometheus variable query: label_values(selector, label), query_result(expr)."""
    query = query.strip()
    if match := re.fullmatch(r"label_values\((.*),\s*[A-Za-z_]\w*\s*\)", query, re.DOTALL):
        return promql_metric_names(match.group(1))
    if re.fullmatch(r"label_values\(\s*[A-Za-z_]\w*\s*\)|metrics\(.*\)", query, re.DOTALL):
        return set()
    if match := re.fullmatch(r"query_result\((.*)\)", query, re.DOTALL):
        return promql_metric_names(match.group(1))
    return promql_metric_names(query)


@pytest.mark.parametrize(
    ("expr", "names"),
    [
        (
            'histogram_quantile(0.95, sum by (le, route) (rate(xray_http_request_seconds_bucket{job=~"$job"}'
            "[$__rate_interval])))",
            {"xray_http_request_seconds_bucket"},
        ),
        ('sum(rate(a_total{status=~"5.."}[5m])) / sum(rate(a_total[5m])) > 0.05', {"a_total"}),
        ("up == 0", {"up"}),
        ("max by (instance) (g) offset 1h30m", {"g"}),
        ("clamp_min(-deriv(max(open_items)[10m:1m]), 0) * 1e3", {"open_items"}),
        ("sum(x) without (le) / on (job) group_left (instance) y", {"x", "y"}),
        ('count(label_replace(m, "dst", "$1", "src", "(.*)"))', {"m"}),
    ],
)
def test_promql_metric_names(expr: str, names: set[str]) -> None:
    assert promql_metric_names(expr) == names


# ------------------------------------------------------------------------------------------- what is exported
@pytest.fixture(scope="module")
def exported() -> dict[str, str]:
    """{sample name: family type} on /metrics after one prediction and two refused uploads."""
    with TestClient(create_app(service_settings())) as client:
        answer = client.post("/v1/predict", content=phantom_png(), headers={"content-type": "image/png"})
        assert answer.status_code == 200, answer.text
        refused = client.post("/v1/predict", content=b"not an image", headers={"content-type": "image/png"})
        assert refused.status_code == 415, refused.text
        assert client.post("/v1/predict", content=b"", headers={"content-type": "image/png"}).status_code == 400
        scrape = client.get("/metrics")
        assert scrape.status_code == 200
    names: dict[str, str] = {}
    statuses = set()
    for family in text_string_to_metric_families(scrape.text):
        for sample in family.samples:
            names[sample.name] = family.type
            if sample.name == "xray_http_requests_total" and sample.labels.get("route") == "/v1/predict":
                statuses.add(sample.labels["status"])
        if not family.samples:  # a labelled metric nothing has touched yet (e.g. no 503 so far): still declared
            for suffix in SAMPLE_SUFFIXES.get(family.type, ("",)):
                names.setdefault(family.name + suffix, family.type)
    assert {"200", "400", "415"} <= statuses, "the refused uploads are counted by status"
    return names


# ------------------------------------------------------------------------------------ what the files reference
@functools.cache
def dashboard() -> dict:
    return json.loads(DASHBOARD.read_text())


def all_panels(node: dict) -> list[dict]:
    found = []
    for panel in node.get("panels", []):
        found.append(panel)
        found.extend(all_panels(panel))  # rows may nest their panels
    return found


def dashboard_expressions() -> list[tuple[str, str]]:
    """(where, PromQL) for every panel target and every query variable."""
    found = []
    for panel in all_panels(dashboard()):
        for target in panel.get("targets", []):
            if target.get("expr"):
                found.append((f"panel {panel['title']!r} {target.get('refId')}", target["expr"]))
    return found


def template_queries() -> list[tuple[str, str]]:
    found = []
    for variable in dashboard().get("templating", {}).get("list", []):
        if variable.get("type") == "query":
            query = variable["query"]
            found.append((f"variable {variable['name']}", query["query"] if isinstance(query, dict) else query))
    return found


@functools.cache
def prometheus_config() -> dict:
    return yaml.safe_load(PROMETHEUS.read_text())


def rule_expressions() -> list[tuple[str, str]]:
    found = []
    for rule_file in prometheus_config().get("rule_files", []):
        for group in yaml.safe_load((DOCKER_DIR / rule_file).read_text())["groups"]:
            for rule in group["rules"]:
                found.append((f"{rule_file}: {rule.get('alert') or rule.get('record')}", rule["expr"]))
    return found


def test_every_metric_the_dashboard_and_the_rules_use_is_exported(exported: dict[str, str]) -> None:
    referenced: dict[str, set[str]] = {}
    for where, expr in dashboard_expressions() + rule_expressions():
        for name in promql_metric_names(expr):
            referenced.setdefault(name, set()).add(where)
    for where, query in template_queries():
        for name in template_query_metric_names(query):
            referenced.setdefault(name, set()).add(where)
    assert len(referenced) >= 10, sorted(referenced)
    missing = {name: sorted(where) for name, where in referenced.items() if name not in exported}
    missing = {name: where for name, where in missing.items() if name not in PROMETHEUS_SERIES}
    assert not missing, f"not on /metrics: {missing}"


def test_the_dashboard_shows_what_operators_need() -> None:
    exprs = [expr for _, expr in dashboard_expressions()]

    def some(pattern: str) -> bool:
        return any(re.search(pattern, expr.replace("\n", " ")) for expr in exprs)

    for quantile in ("0.5", "0.95", "0.99"):
        assert some(rf"histogram_quantile\({quantile}, sum by \(le, route\) \(rate\(xray_http_request_seconds_bucket")
    assert some(r"sum by \(route\) \(rate\(xray_http_requests_total"), "throughput by route"
    assert some(r"xray_queue_depth"), "queue depth"
    assert some(r"sum by \(verdict\) \(rate\(xray_predictions_total"), "predictions by outlier verdict"
    assert some(r'xray_predictions_total\{[^}]*verdict="outlier"[^}]*\}.*/ sum\(rate\(xray_predictions_total'), (
        "outlier rate"
    )
    assert some(r"sum by \(status\) \(rate\(xray_http_requests_total"), "errors by status code"
    assert some(r"sum by \(reason\) \(rate\(xray_rejections_total"), "refused by reason"
    assert some(r"xray_jobs\b") and some(r"xray_job_items_open"), "job progress"


def test_the_dashboard_is_importable() -> None:
    board = dashboard()
    assert board["title"] and board["uid"] and isinstance(board["schemaVersion"], int)
    assert board.get("id") is None, "an id from another Grafana would clash on import"
    variables = {variable["name"]: variable for variable in board["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource" and variables["datasource"]["query"] == "prometheus"
    assert variables["job"]["current"]["value"] == API_JOB
    panels = all_panels(board)
    assert len({panel["id"] for panel in panels}) == len(panels), "panel ids are unique"
    cells = set()
    for panel in panels:
        grid = panel["gridPos"]
        assert 0 <= grid["x"] and grid["x"] + grid["w"] <= 24, panel["title"]
        covered = {(grid["x"] + dx, grid["y"] + dy) for dx in range(grid["w"]) for dy in range(grid["h"])}
        assert not covered & cells, f"{panel['title']} overlaps another panel"
        cells |= covered
        for target in panel["targets"]:
            for source in (panel.get("datasource"), target.get("datasource")):
                assert source == {"type": "prometheus", "uid": "${datasource}"}, (
                    f"{panel['title']}: the data source comes from the variable, not a uid of one Grafana"
                )


def test_prometheus_scrapes_every_api_replica_and_no_worker() -> None:
    compose = yaml.safe_load(COMPOSE.read_text())
    services = compose["services"]
    api_port = int(services["api"]["environment"]["XRAY_PORT"])
    jobs = {job["job_name"]: job for job in prometheus_config()["scrape_configs"]}
    api = jobs[API_JOB]
    assert api.get("metrics_path", "/metrics") == "/metrics"
    assert api["dns_sd_configs"] == [{"names": ["api"], "type": "A", "port": api_port, "refresh_interval": "15s"}]
    targets = [
        target.split(":")[0]
        for job in jobs.values()
        for static in job.get("static_configs", [])
        for target in static["targets"]
    ]
    assert set(targets) <= set(services) | {"localhost"}
    workers = [name for name, service in services.items() if "worker" in " ".join(service.get("command", []))]
    assert workers and not set(workers) & set(targets), "`xray worker` serves no /metrics"
    rule_jobs = {job for _, expr in rule_expressions() for job in re.findall(r'job="([^"]+)"', expr)}
    assert rule_jobs <= set(jobs)
    mounted = {Path(volume["target"]).name for volume in services["prometheus"]["volumes"] if "target" in volume}
    assert {"prometheus.yml", *prometheus_config()["rule_files"]} <= mounted


def test_grafana_is_provisioned_with_the_dashboard() -> None:
    grafana = yaml.safe_load(COMPOSE.read_text())["services"]["grafana"]
    mounts = {volume["source"]: volume["target"] for volume in grafana["volumes"] if volume["type"] == "bind"}
    providers = yaml.safe_load((DOCKER_DIR / "grafana" / "dashboards.yaml").read_text())["providers"]
    assert Path(mounts["./grafana-dashboard.json"]).parent == Path(providers[0]["options"]["path"])
    sources = yaml.safe_load((DOCKER_DIR / "grafana" / "datasources.yaml").read_text())["datasources"]
    assert sources[0]["type"] == "prometheus" and sources[0]["url"] == "http://prometheus:9090"


# ------------------------------------------------------------------------- Prometheus's own checks, if present
promtool = pytest.mark.skipif(
    shutil.which("promtool") is None, reason="promtool is not installed (Debian package `prometheus`)"
)


@promtool
def test_promtool_accepts_the_config_and_rules() -> None:
    done = subprocess.run(["promtool", "check", "config", str(PROMETHEUS)], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr


@promtool
def test_promtool_parses_every_dashboard_expression(tmp_path: Path) -> None:
    grafana_values = {"$__rate_interval": "5m", "$job": API_JOB, "$instance": ".*"}
    rules = []
    for index, (_, expr) in enumerate(dashboard_expressions()):
        for variable, value in grafana_values.items():
            expr = expr.replace(variable, value)
        assert "$" not in expr, expr
        rules.append({"record": f"dashboard:expr_{index}", "expr": expr})
    rules_file = tmp_path / "dashboard-rules.yml"
    rules_file.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    done = subprocess.run(["promtool", "check", "rules", str(rules_file)], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
