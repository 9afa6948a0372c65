"""docs/grafana-dashboard.json and the PromQL in docs/operator.md name only real metrics.

Every expression's metric names must be series that ``Metrics().render()`` exposes (after each
metric was touched once, so histograms show their ``_bucket``/``_sum``/``_count`` series), every
label it filters or groups by must exist on them (or be a label Prometheus adds to a target),
and every Jobtrail metric must appear on the dashboard.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from app.bootstrap.metrics import Metrics
from app.domain.sla import Measure

ROOT = Path(__file__).resolve().parents[2]
DASHBOARD = ROOT / "docs" / "grafana-dashboard.json"
OPERATOR_DOC = ROOT / "docs" / "operator.md"
TARGET_LABELS = {"instance", "job"}
KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "and", "or"}
KEYWORDS |= {"unless", "bool", "offset"}
_STRING = re.compile(r'"(?:[^"\\]|\\.)*"')
_GROUPING = re.compile(r"\b(?:by|without|on|ignoring)\s*\(([^)]*)\)")
_MATCHERS = re.compile(r"\{([^}]*)\}")
_RANGE = re.compile(r"\[[^\]]*\]")
_IDENTIFIER = re.compile(r"(?<![\w.$])([A-Za-z_:][A-Za-z0-9_:]*)(\s*\()?")


def exposed() -> dict[str, set[str]]:
    """Every series name ``Metrics`` renders, with its label names."""
    metrics = Metrics()
    metrics.record_events(["submitted"])
    metrics.decision("retried")
    metrics.dead_letter("ttl")
    metrics.quarantined("invalid_json")
    metrics.projection_lag(0.5)
    metrics.timer_lag(0.1)
    metrics.observe_request("GET", "/jobs/{job_id}", 200, 0.01)
    metrics.misrouted("completed")
    for measure in Measure:
        metrics.observe_latency(measure, "gpu-a", "sync", "urgent", 1.5)
    series: dict[str, set[str]] = {}
    for family in text_string_to_metric_families(metrics.render().decode()):
        for sample in family.samples:
            series.setdefault(sample.name, set()).update(sample.labels)
    return series


def parse(expr: str) -> tuple[set[str], set[str]]:
    """(metric names, label names) of a PromQL expression (the subset dashboards use)."""
    text = _STRING.sub('""', expr)
    labels: set[str] = set()
    for group in _GROUPING.findall(text):
        labels |= {name.strip() for name in group.split(",") if name.strip()}
    text = _GROUPING.sub(" ", text)
    for matchers in _MATCHERS.findall(text):
        labels |= {m.group(1) for m in re.finditer(r"([A-Za-z_]\w*)\s*(?:=~|!~|!=|=)", matchers)}
    text = _RANGE.sub(" ", _MATCHERS.sub(" ", text))
    names = {
        m.group(1)
        for m in _IDENTIFIER.finditer(text)
        if not m.group(2) and m.group(1) not in KEYWORDS and not re.fullmatch(r"\d.*", m.group(1))
    }
    return names, labels


def dashboard_exprs() -> list[str]:
    document: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return [t["expr"] for p in document["panels"] for t in p.get("targets", [])]


def doc_exprs() -> list[str]:
    return [b.strip() for b in re.findall(r"```promql\n(.*?)```", OPERATOR_DOC.read_text(), re.S)]


def test_the_parser_finds_names_and_labels() -> None:
    names, labels = parse(
        'histogram_quantile(0.9, sum by (le, route) (rate(x_bucket{status=~"5..", a="b"}[5m])))'
        " / clamp_min(sum(rate(y_total[$__rate_interval])), 1e-9) > 0.5"
    )
    assert names == {"x_bucket", "y_total"}
    assert labels == {"le", "route", "status", "a"}


def test_the_dashboard_is_a_grafana_dashboard() -> None:
    document = json.loads(DASHBOARD.read_text())
    assert document["title"] == "Jobtrail" and document["uid"]
    assert document["__inputs"][0]["pluginId"] == "prometheus"
    ids = [p["id"] for p in document["panels"]]
    assert len(ids) == len(set(ids)) >= 10
    for panel in document["panels"]:
        assert panel["targets"], panel["title"]
        assert panel["datasource"] == {"type": "prometheus", "uid": "${DS_PROMETHEUS}"}
        assert {"x", "y", "w", "h"} <= set(panel["gridPos"])


@pytest.mark.parametrize("expr", dashboard_exprs() + doc_exprs())
def test_every_expression_names_only_exposed_metrics_and_labels(expr: str) -> None:
    series = exposed()
    names, labels = parse(expr)
    assert names, expr
    unknown = names - set(series)
    assert not unknown, f"not exposed by Metrics: {sorted(unknown)}"
    known_labels = set().union(*(series[name] for name in names)) | TARGET_LABELS
    assert labels <= known_labels, f"unknown labels {sorted(labels - known_labels)} in {expr}"


def test_every_metric_is_on_the_dashboard() -> None:
    used = set().union(*(parse(expr)[0] for expr in dashboard_exprs()))
    families = {family.name for family in Metrics().registry.collect()}
    assert len(families) == 11
    for family in families:
        assert any(name.startswith(family) for name in used), f"{family} is on no panel"
