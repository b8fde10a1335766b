"""The shipped monitoring files are valid: `promtool check rules`, `promtool test rules`
(every alert has a unit test), `promtool check config` of the Prometheus example, and
every Grafana panel's query is valid PromQL over metrics Hydra exports.

promtool comes from Debian's `prometheus` package, which `make test` installs: the
tests fail without it rather than skip."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
MONITORING = ROOT / "monitoring"
RULES = MONITORING / "rules" / "hydra.rules.yml"


def promtool(*args: str, cwd: Path = MONITORING) -> str:
    executable = shutil.which("promtool")
    assert executable, "promtool missing: `make test` installs Debian's prometheus package"
    process = subprocess.run(
        [executable, *args], cwd=cwd, capture_output=True, text=True, timeout=120, check=False
    )
    assert process.returncode == 0, process.stdout + process.stderr
    return process.stdout


def test_the_alert_rules_are_valid() -> None:
    assert "SUCCESS" in promtool("check", "rules", str(RULES))


def test_the_alert_rule_unit_tests_pass() -> None:
    tests = sorted((MONITORING / "tests").glob("*.yml"))
    assert tests
    assert "SUCCESS" in promtool("test", "rules", *map(str, tests))


def test_every_alert_has_a_unit_test() -> None:
    alerts = {
        rule["alert"]
        for group in yaml.safe_load(RULES.read_text())["groups"]
        for rule in group["rules"]
        if "alert" in rule
    }
    tested: set[str] = set()
    for path in (MONITORING / "tests").glob("*.yml"):
        for case in yaml.safe_load(path.read_text())["tests"]:
            for check in case.get("alert_rule_test", []):
                if check["exp_alerts"]:
                    tested.add(check["alertname"])
    assert alerts - tested == set(), "alerts never seen firing in a test"


def test_the_prometheus_example_is_valid() -> None:
    assert "SUCCESS" in promtool("check", "config", "prometheus.yml")


def test_every_dashboard_query_is_valid_promql_over_our_metrics(tmp_path: Path) -> None:
    dashboard = json.loads((MONITORING / "grafana" / "hydra.json").read_text())
    exprs = [target["expr"] for panel in dashboard["panels"] for target in panel["targets"]]
    assert len(exprs) >= 10
    # promtool has no "parse this query": each query as a recording rule does it
    rules = {
        "groups": [
            {
                "name": "dashboard",
                "rules": [{"record": f"panel:q{n}", "expr": e} for n, e in enumerate(exprs)],
            }
        ]
    }
    path = tmp_path / "panels.yml"
    path.write_text(yaml.safe_dump(rules))
    promtool("check", "rules", str(path), cwd=tmp_path)
    documented = (ROOT / "docs" / "metrics.md").read_text()
    for expr in exprs:
        for name in re.findall(r"\bhydra_[a-z_]+", expr):
            base = re.sub(r"_(bucket|count|sum)$", "", name)
            assert f"`{base}`" in documented, f"{name} in a panel is not a documented metric"
