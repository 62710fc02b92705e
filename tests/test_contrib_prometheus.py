"""contrib/prometheus and contrib/grafana: the files an operator copies, checked by the real tools.

``promtool check config`` / ``check rules`` / ``test rules`` run on the shipped files (skipped when Debian's
prometheus package is not installed).  Every PromQL expression shipped (alerts, recording rules, the
dashboard's panels and template variables) may name only series prefork's collector can export, the
recording rules' own names, or the series Prometheus adds to every scrape; the exported names are taken
from the collector itself (``prefork.metrics.collector.build_families`` rendered to the text format), so renaming
a family breaks this test rather than the operators' dashboards.

There is no YAML parser in the venv: the rules and unit-test files are read with a small line reader for
the subset of YAML they use (``- alert:``/``- record:``, ``expr:`` inline or as a ``|`` block,
``alertname:`` followed by ``exp_alerts:``); promtool is what checks them as YAML.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from prefork.metrics.collector import build_families, render_text

ROOT = Path(__file__).resolve().parent.parent
PROM_DIR = ROOT / "contrib" / "prometheus"
CONFIG = PROM_DIR / "prometheus.yml"
RULES = PROM_DIR / "prefork.rules.yml"
ALERTS = PROM_DIR / "prefork.alerts.yml"
RULE_TESTS = sorted((PROM_DIR / "tests").glob("*.test.yml"))
DASHBOARD = ROOT / "contrib" / "grafana" / "prefork.json"
# Series Prometheus itself adds to every scrape (the dashboard graphs scrape_duration_seconds; alerts use up).
SCRAPE_SERIES = {"up", "scrape_duration_seconds", "scrape_samples_scraped", "scrape_samples_post_metric_relabeling",
                 "scrape_series_added"}
# The alerts contrib/prometheus/README.md lists first, and the extra ones shipped beside them.
REQUIRED_ALERTS = {"PreforkServiceDown", "PreforkServiceFlapping", "PreforkServiceFailed",
                   "PreforkConnectionLimitSaturated", "PreforkConnectionsDropped"}


def promtool() -> str:
    tool = shutil.which("promtool", path="/usr/bin:/bin") or shutil.which("promtool")
    if tool is None:
        pytest.skip("promtool is not installed (apt-get install prometheus)")
    return tool


def run_promtool(*args: str, cwd: Path = PROM_DIR) -> subprocess.CompletedProcess:
    return subprocess.run([promtool(), *args], capture_output=True, text=True, timeout=60, cwd=cwd,
                          env={"PATH": "/usr/bin:/bin"})


# -- what the collector can export ------------------------------------------------------------------
def exported_series() -> set[str]:
    """Every sample name prefork's collector can put in a scrape (all families, the exporter's own included)."""
    text = render_text(build_families([], [], [("scoreboard", "x", True, 0)])).decode()
    names = set()
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split()
            names |= {f"{name}_bucket", f"{name}_count", f"{name}_sum"} if kind == "histogram" else {name}
    return names


# -- PromQL: the series an expression names ----------------------------------------------------------
KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "and", "or", "unless", "bool", "offset",
            "inf", "nan"}
AGGREGATIONS = {"sum", "min", "max", "avg", "group", "stddev", "stdvar", "count", "count_values", "bottomk", "topk",
                "quantile"}


def grafana_to_promql(expr: str) -> str:
    """A dashboard expression with Grafana's variables replaced: intervals by 5m, the others by .* (in matchers)."""
    expr = re.sub(r"\$\{?__(rate_interval|interval|range)\}?", "5m", expr)
    return re.sub(r"\$\{?\w+\}?", ".*", expr)


def series_names(expr: str) -> set[str]:
    """The metric names an expression selects (functions, keywords, labels, numbers and durations left out)."""
    s = re.sub(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`', '""', expr)
    s = re.sub(r"\{[^}]*\}", " ", s)  # label matchers
    s = re.sub(r"\[[^\]]*\]", " ", s)  # ranges and subqueries
    s = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", r" \1 ", s)
    s = re.sub(r"\boffset\s+-?\w+", " ", s)
    names = set()
    for m in re.finditer(r"(?<![\w:.])[A-Za-z_:][\w:]*", s):
        word = m.group(0)
        if s[m.end():].lstrip().startswith("(") or word.lower() in KEYWORDS or word in AGGREGATIONS:
            continue
        names.add(word)
    return names


def test_series_names_reads_promql():
    expr = ('histogram_quantile(0.9, sum by (service, le) (rate(tcpserver_connection_duration_seconds_bucket'
            '{job=~"a|b",le!="1e3"}[5m] offset 1h))) / on (service) group_left(exit) foo:bar:rate5m '
            'and time() - x_seconds > bool 1e3 unless sum without (le) (y)')
    assert series_names(expr) == {"tcpserver_connection_duration_seconds_bucket", "foo:bar:rate5m", "x_seconds", "y"}


def test_exported_series_come_from_the_collector():
    names = exported_series()
    assert {"tcpserver_connections_accepted_total", "tcpserver_connection_duration_seconds_bucket",
            "supervise_up", "supervise_restarts_total", "prefork_exporter_source_up"} <= names
    assert "tcpserver_connections_accepted" not in names


# -- the rules files, read line by line ------------------------------------------------------------
def read_rules(path: Path) -> list[tuple[str, str, str]]:
    """(kind "alert" or "record", name, expr) of every rule in a rules file."""
    lines = path.read_text().splitlines()
    rules: list[tuple[str, str, str]] = []
    i = 0
    while i < len(lines):
        m = re.match(r"\s*- (alert|record): (\S+)\s*$", lines[i])
        if m:
            kind, name = m.groups()
            j = i + 1
            while not re.match(r"\s*expr:", lines[j]):
                j += 1
            indent = len(lines[j]) - len(lines[j].lstrip())
            inline = lines[j].split("expr:", 1)[1].strip()
            if inline in ("|", ">", "|-", ">-"):
                body = []
                j += 1
                while j < len(lines) and (not lines[j].strip() or len(lines[j]) - len(lines[j].lstrip()) > indent):
                    body.append(lines[j].strip())
                    j += 1
                inline = " ".join(x for x in body if x)
            rules.append((kind, name, inline))
            i = j
        else:
            i += 1
    return rules


def test_rules_files_are_read_whole():
    alerts = read_rules(ALERTS)
    records = read_rules(RULES)
    assert REQUIRED_ALERTS <= {name for kind, name, _ in alerts if kind == "alert"}
    assert all(kind == "record" for kind, _, _ in records) and len(records) >= 10
    assert len(alerts) == ALERTS.read_text().count("- alert:")
    assert len(records) == RULES.read_text().count("- record:")
    dropped = {name: expr for _, name, expr in alerts}["PreforkConnectionsDropped"]
    assert "tcpserver_connections_dropped_total" in dropped and "tcpserver_connections_accepted_total" in dropped


# == promtool ========================================================================================
def test_promtool_check_config():
    out = run_promtool("check", "config", str(CONFIG))
    assert out.returncode == 0, out.stdout + out.stderr
    assert "SUCCESS: 2 rule files found" in out.stdout


def test_config_loads_both_rules_files():
    text = CONFIG.read_text()
    listed = re.findall(r"^\s+- (\S+\.yml)\s*$", text.split("rule_files:", 1)[1].split("\n\n", 1)[0], re.M)
    assert sorted(listed) == sorted([RULES.name, ALERTS.name])


@pytest.mark.parametrize("path", [RULES, ALERTS], ids=lambda p: p.name)
def test_promtool_check_rules(path):
    out = run_promtool("check", "rules", str(path))
    assert out.returncode == 0, out.stdout + out.stderr
    assert f"SUCCESS: {len(read_rules(path))} rules found" in out.stdout


@pytest.mark.parametrize("path", RULE_TESTS, ids=lambda p: p.name)
def test_promtool_test_rules(path):
    out = run_promtool("test", "rules", path.name, cwd=path.parent)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "SUCCESS" in out.stdout


def test_promtool_test_rules_fails_a_wrong_expectation(tmp_path):
    """The unit tests can fail: a copy of the service-down test that expects no alert where one fires."""
    text = (PROM_DIR / "tests" / "service_down.test.yml").read_text()
    (tmp_path / "prefork.alerts.yml").write_text(ALERTS.read_text())
    wrong = text.replace("../prefork.alerts.yml", "prefork.alerts.yml").replace("eval_time: 1m45s", "eval_time: 2m", 1)
    assert wrong.count("eval_time: 2m\n") == text.count("eval_time: 2m\n") + 1
    (tmp_path / "wrong.test.yml").write_text(wrong)
    out = run_promtool("test", "rules", "wrong.test.yml", cwd=tmp_path)
    assert out.returncode == 1 and "FAILED" in out.stdout + out.stderr, out.stdout + out.stderr


def alert_expectations() -> dict[str, set[str]]:
    """{alertname: {"firing", "not firing"}} over every unit-test file."""
    seen: dict[str, set[str]] = {}
    for path in RULE_TESTS:
        lines = path.read_text().splitlines()
        for i, line in enumerate(lines):
            m = re.match(r"\s*alertname: (\S+)\s*$", line)
            if m:
                exp = lines[i + 1].strip()
                assert exp.startswith("exp_alerts:"), f"{path.name}:{i + 2}: exp_alerts must follow alertname"
                seen.setdefault(m[1], set()).add("not firing" if exp == "exp_alerts: []" else "firing")
    return seen


def test_every_alert_has_firing_and_not_firing_unit_tests():
    seen = alert_expectations()
    for _, name, _ in read_rules(ALERTS):
        assert seen.get(name) == {"firing", "not firing"}, f"{name}: unit tests cover {seen.get(name, set())}"


def test_every_recording_rule_has_a_unit_test():
    tested = set()
    for path in RULE_TESTS:
        tested |= set(re.findall(r"^\s+- expr: (\S+)\s*$", path.read_text(), re.M))
    for _, name, _ in read_rules(RULES):
        assert name in tested, f"recording rule {name} has no promql_expr_test"


def test_rules_name_only_exported_series():
    exported = exported_series()
    recorded = {name for _, name, _ in read_rules(RULES)}
    for path in (RULES, ALERTS):
        for _, name, expr in read_rules(path):
            unknown = series_names(expr) - exported - recorded - SCRAPE_SERIES
            assert not unknown, f"{path.name} {name}: {sorted(unknown)} are not exported by metrics/collector.py"


def test_alerts_do_not_need_the_recording_rules():
    recorded = {name for _, name, _ in read_rules(RULES)}
    for _, name, expr in read_rules(ALERTS):
        assert not series_names(expr) & recorded, f"{name} uses a recording rule"


# == the Grafana dashboard ==========================================================================
def dashboard() -> dict:
    return json.loads(DASHBOARD.read_text())


def all_panels(board: dict) -> list[dict]:
    out = []
    for p in board["panels"]:
        out.append(p)
        out += p.get("panels", [])
    return out


def panel_exprs(board: dict) -> list[tuple[str, str]]:
    """(panel title, expr) of every query of every panel."""
    return [(p["title"], t["expr"]) for p in all_panels(board) for t in p.get("targets", [])]


def variable_queries(board: dict) -> list[tuple[str, str]]:
    out = []
    for v in board["templating"]["list"]:
        if v["type"] == "query":
            q = v["query"]["query"] if isinstance(v["query"], dict) else v["query"]
            out.append((v["name"], q))
    return out


def test_dashboard_is_json_with_the_fields_grafana_needs():
    board = dashboard()
    assert board["title"] and board["uid"] and isinstance(board["schemaVersion"], int)
    panels = all_panels(board)
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids))
    for p in panels:
        assert {"type", "title", "gridPos"} <= p.keys(), p.get("title")
        if p["type"] == "row":
            continue
        assert p["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, p["title"]
        refs = [t["refId"] for t in p["targets"]]
        assert refs and len(refs) == len(set(refs)), p["title"]
        for t in p["targets"]:
            assert t["expr"].strip() and t["datasource"] == p["datasource"], p["title"]
    names = [v["name"] for v in board["templating"]["list"]]
    assert names[0] == "datasource" and board["templating"]["list"][0]["query"] == "prometheus"
    assert len(names) == len(set(names))


def test_dashboard_panels_do_not_overlap():
    cells: dict[tuple[int, int], str] = {}
    for p in all_panels(dashboard()):
        g = p["gridPos"]
        assert 0 <= g["x"] and g["x"] + g["w"] <= 24, p["title"]
        for y in range(g["y"], g["y"] + g["h"]):
            for x in range(g["x"], g["x"] + g["w"]):
                assert (x, y) not in cells, f"{p['title']} overlaps {cells[(x, y)]}"
                cells[(x, y)] = p["title"]


def test_dashboard_shows_what_the_issue_asks_for():
    exprs = " ".join(e for _, e in panel_exprs(dashboard()))
    for needed in ("rate(tcpserver_connections_accepted_total", "tcpserver_connections_active",
                   "tcpserver_connections_limit", "histogram_quantile(0.99", "tcpserver_connection_duration_seconds_bucket",
                   "supervise_restarts_total", "supervise_up", "tcpserver_worker_restarts_total"):
        assert needed in exprs, needed


def test_dashboard_names_only_exported_series():
    board = dashboard()
    allowed = exported_series() | SCRAPE_SERIES
    for title, expr in panel_exprs(board):
        unknown = series_names(grafana_to_promql(expr)) - allowed
        assert not unknown, f"panel {title!r}: {sorted(unknown)} are not exported by metrics/collector.py"
    for name, query in variable_queries(board):
        m = re.fullmatch(r"label_values\((?:([A-Za-z_:][\w:]*)(?:\{[^}]*\})?\s*,\s*)?(\w+)\)", query)
        assert m, f"variable {name}: {query}"
        assert m[1] in allowed, f"variable {name}: {m[1]} is not exported"


def test_dashboard_queries_are_valid_promql(tmp_path):
    """promtool parses every panel query (Grafana's variables filled in) as the expr of a recording rule."""
    board = dashboard()
    lines = ["groups:", "  - name: dashboard", "    rules:"]
    for i, (_, expr) in enumerate(panel_exprs(board)):
        lines += [f"      - record: dashboard_query_{i}", f"        expr: {json.dumps(grafana_to_promql(expr))}"]
    path = tmp_path / "dashboard.rules.yml"
    path.write_text("\n".join(lines) + "\n")
    out = run_promtool("check", "rules", str(path), cwd=tmp_path)
    assert out.returncode == 0, out.stdout + out.stderr
    assert f"SUCCESS: {len(panel_exprs(board))} rules found" in out.stdout
