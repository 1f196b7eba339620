"""
The Grafana dashboard shipped in C{etc/grafana-dashboard.json} queries only
metrics and labels the daemon exports: a renamed metric or label breaks
this test, not the operator's dashboard.
"""

import json
import os
import re

from prometheus_client.metrics import MetricWrapperBase
from twisted.trial.unittest import SynchronousTestCase

from cuckoodist.metrics import Metrics

DASHBOARD = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "etc", "grafana-dashboard.json")

#: PromQL words that are not metric names.
_PROMQL = frozenset({
    "sum", "min", "max", "avg", "count", "stddev", "stdvar", "topk", "bottomk", "quantile", "count_values", "group",
    "by", "without", "on", "ignoring", "group_left", "group_right", "and", "or", "unless", "bool", "offset",
    "rate", "irate", "increase", "delta", "idelta", "deriv", "changes", "resets", "histogram_quantile",
    "clamp_min", "clamp_max", "abs", "ceil", "floor", "round", "vector", "scalar", "time", "label_replace",
    "avg_over_time", "max_over_time", "min_over_time", "sum_over_time", "absent", "label_values",
})

#: Labels Prometheus adds to every series it scrapes.
_TARGET_LABELS = frozenset({"instance", "job"})


def exported() -> dict[str, set[str]]:
    """
    Every sample name a daemon's registry exports once each metric has a
    value (C{_total}, C{_bucket}, C{_sum}, C{_count} included), with its
    label names.
    """
    metrics = Metrics()
    for metric in vars(metrics).values():
        if not isinstance(metric, MetricWrapperBase):
            continue
        names = metric._labelnames
        child = metric.labels(*("x" for _ in names)) if names else metric
        if hasattr(child, "observe"):
            child.observe(1)
        else:
            child.inc()
    samples: dict[str, set[str]] = {}
    for family in metrics.registry.collect():
        for sample in family.samples:
            samples.setdefault(sample.name, set()).update(sample.labels)
    return samples


def queries(dashboard: dict) -> list[str]:
    """
    Every PromQL query of the dashboard: panel targets (rows' nested panels
    too) and the template variables' queries.
    """
    found = []

    def walk(panels: list) -> None:
        for panel in panels:
            found.extend(target["expr"] for target in panel.get("targets", ()) if "expr" in target)
            walk(panel.get("panels", ()))

    walk(dashboard["panels"])
    for variable in dashboard.get("templating", {}).get("list", ()):
        query = variable.get("query")
        if isinstance(query, dict):
            query = query.get("query")
        if query:
            found.append(query)
    return found


def parse(expr: str) -> tuple[set[str], set[str]]:
    """
    The metric names and label names a query uses.
    """
    labels: set[str] = set()
    rest = expr
    for selector in re.findall(r"\{([^}]*)\}", rest):
        labels.update(re.findall(r"([A-Za-z_][A-Za-z0-9_]*)\s*(?:=~|!~|!=|=)\s*\"", selector))
    rest = re.sub(r"\{[^}]*\}", " ", rest)
    for grouping in re.findall(r"\b(?:by|without|on|ignoring)\s*\(([^)]*)\)", rest):
        labels.update(name.strip() for name in grouping.split(",") if name.strip())
    rest = re.sub(r"\b(?:by|without|on|ignoring)\s*\([^)]*\)", " ", rest)
    values = re.match(r"\s*label_values\(\s*([A-Za-z_:][A-Za-z0-9_:]*)\s*,\s*([A-Za-z_][A-Za-z0-9_]*)\s*\)\s*$", rest)
    if values:
        return {values.group(1)}, labels | {values.group(2)}
    rest = re.sub(r"\[[^\]]*\]", " ", rest)
    rest = re.sub(r"\$\{?\w+\}?", " ", rest)
    rest = re.sub(r"\"[^\"]*\"", " ", rest)
    rest = re.sub(r"\b\d+(\.\d+)?([eE][+-]?\d+)?\b", " ", rest)
    names = {token for token in re.findall(r"[A-Za-z_:][A-Za-z0-9_:]*", rest) if token not in _PROMQL}
    return names, labels


class DashboardTests(SynchronousTestCase):
    def setUp(self) -> None:
        with open(DASHBOARD, encoding="utf-8") as fp:
            self.dashboard = json.load(fp)
        self.exported = exported()

    def test_parse(self) -> None:
        """
        The query reader finds metrics and labels where PromQL puts them.
        """
        self.assertEqual(
            parse('histogram_quantile(0.95, sum by (le, cuckoo) (rate(a_bucket{instance=~"$instance", code!="2xx"}[$__rate_interval])))'),
            ({"a_bucket"}, {"le", "cuckoo", "instance", "code"}),
        )
        self.assertEqual(parse("sum(rate(a_total[5m])) / sum(rate(b_count[1h]))"), ({"a_total", "b_count"}, set()))
        self.assertEqual(parse("label_values(a, instance)"), ({"a"}, {"instance"}))

    def test_metrics_exist(self) -> None:
        """
        Every query names only metrics the daemon exports, and at least
        one.
        """
        found = queries(self.dashboard)
        self.assertGreater(len(found), 20)
        for expr in found:
            names, _ = parse(expr)
            self.assertTrue(names, expr)
            self.assertEqual(names - set(self.exported), set(), expr)

    def test_labels_exist(self) -> None:
        """
        Every label a query matches or groups by is one its metrics carry
        (or one Prometheus adds to every target).
        """
        for expr in queries(self.dashboard):
            names, labels = parse(expr)
            carried = set().union(*(self.exported[name] for name in names)) | _TARGET_LABELS
            self.assertEqual(labels - carried, set(), expr)

    def test_every_metric_shown(self) -> None:
        """
        Every metric the daemon exports has a panel.
        """
        used = set().union(*(parse(expr)[0] for expr in queries(self.dashboard)))
        bases = {re.sub(r"_(total|bucket|sum|count)$", "", name) for name in used}
        families = {family.name for family in Metrics().registry.collect()}
        self.assertEqual(families - bases, set())

    def test_importable(self) -> None:
        """
        The dashboard is one Grafana can import: a recent schema, the
        Prometheus data source as an import input, used by every panel,
        and unique panel ids.
        """
        self.assertGreaterEqual(self.dashboard["schemaVersion"], 36)
        self.assertEqual([i["name"] for i in self.dashboard["__inputs"]], ["DS_PROMETHEUS"])
        self.assertEqual(self.dashboard["__inputs"][0]["pluginId"], "prometheus")
        panels = []

        def walk(items: list) -> None:
            for panel in items:
                panels.append(panel)
                walk(panel.get("panels", ()))

        walk(self.dashboard["panels"])
        ids = [panel["id"] for panel in panels]
        self.assertEqual(len(ids), len(set(ids)))
        for panel in panels:
            if panel["type"] == "row":
                continue
            self.assertEqual(panel["datasource"], {"type": "prometheus", "uid": "${DS_PROMETHEUS}"}, panel["title"])
            for target in panel["targets"]:
                self.assertEqual(target["datasource"]["uid"], "${DS_PROMETHEUS}", panel["title"])
