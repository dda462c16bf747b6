"""The Helm chart, checked offline: rendered with Helm as a library (helm-python-sdk) for every values file in
deploy/helm/runbot/ci, `helm lint --strict` clean, every object valid for Kubernetes 1.30
(kubernetes-validate), checkov with no failed check beyond the ones the chart's README explains."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.deploy.dockerfile import ROOT

helm = pytest.importorskip("helm_python.chart", reason="pip install '.[deploy]' (helm-python-sdk)")

CHART = ROOT / "deploy/helm/runbot"
VALUES = sorted((CHART / "ci").glob("*-values.yaml"))
KUBE_VERSION = "1.30.0"
NAMESPACE = "ops"


def render(values: dict[str, Any]) -> list[dict[str, Any]]:
    out = helm.Chart.load(CHART).render(values, name="runbot", namespace=NAMESPACE)
    docs = []
    for path, text in sorted(out.items()):
        if path.endswith(".txt"):
            continue
        docs += [d for d in yaml.safe_load_all(text) if d]
    return docs


def by_kind(docs: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [d for d in docs if d["kind"] == kind]


@pytest.fixture(scope="module")
def rendered() -> dict[str, list[dict[str, Any]]]:
    assert len(VALUES) >= 4
    return {f.name: render(yaml.safe_load(f.read_text())) for f in VALUES}


@pytest.mark.parametrize("values_file", VALUES, ids=lambda p: p.name)
def test_helm_lint_strict_is_clean(values_file):
    report = helm.lint(CHART, yaml.safe_load(values_file.read_text()), strict=True, namespace=NAMESPACE,
                       kube_version=f"v{KUBE_VERSION}")
    assert report["errors"] == [] and [m for m in report["messages"] if m["severity"] >= 2] == [], report


def test_every_rendered_object_is_valid_for_the_stated_kubernetes_version(rendered):
    kv = pytest.importorskip("kubernetes_validate")
    for name, docs in rendered.items():
        for doc in docs:
            if doc["apiVersion"].startswith("monitoring.coreos.com/"):
                continue  # Prometheus Operator CRDs: not in Kubernetes' own schemas
            try:
                kv.validate(doc, KUBE_VERSION, strict=True)
            except kv.ValidationError as exc:
                pytest.fail(f"{name}: {doc['kind']} {doc['metadata']['name']}: {exc.message}")


def test_values_schema_refuses_sqlite_with_more_than_one_replica():
    chart = helm.Chart.load(CHART)
    chart.validate_schema({"replicas": 1, "database": {"type": "sqlite"}})
    with pytest.raises(Exception, match="replicas"):
        chart.validate_schema({"replicas": 3, "database": {"type": "sqlite"}})
    with pytest.raises(Exception):  # PostgreSQL needs a URL or an existing Secret
        chart.validate_schema({"replicas": 3, "database": {"type": "postgresql"}})
    chart.validate_schema({"replicas": 3, "database": {"type": "postgresql", "existingSecret": "db"}})


def test_the_pod_is_locked_down_and_probed_on_the_right_endpoints(rendered):
    for name, docs in rendered.items():
        (deploy,) = by_kind(docs, "Deployment")
        pod = deploy["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
        for c in pod["containers"]:
            sc = c["securityContext"]
            assert sc["readOnlyRootFilesystem"] is True and sc["allowPrivilegeEscalation"] is False, name
            assert sc["capabilities"] == {"drop": ["ALL"]}
            assert "limits" in c["resources"] and "requests" in c["resources"]
        runbot = pod["containers"][0]
        assert runbot["readinessProbe"]["httpGet"]["path"] == "/readyz"
        assert runbot["livenessProbe"]["httpGet"]["path"] == "/healthz"
        assert runbot["startupProbe"]["httpGet"]["path"] == "/healthz"
        env = {e["name"]: e.get("value") for e in runbot["env"]}
        assert env["RUNBOT_HOST"] == "0.0.0.0" and env["RUNBOT_PORT"] == "8080"
        mounts = {m["mountPath"] for m in runbot["volumeMounts"]}
        assert {"/data", "/tmp"} <= mounts


def test_replicas_database_and_their_consequences(rendered):
    single = rendered["sqlite-single-values.yaml"]
    (d,) = by_kind(single, "Deployment")
    assert d["spec"]["replicas"] == 1 and d["spec"]["strategy"]["type"] == "Recreate"
    assert by_kind(single, "PersistentVolumeClaim") and not by_kind(single, "PodDisruptionBudget")
    assert "hello.yaml" in by_kind(single, "ConfigMap")[0]["data"]
    ha = rendered["postgresql-vault-ha-values.yaml"]
    (d,) = by_kind(ha, "Deployment")
    assert d["spec"]["replicas"] == 3 and d["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0
    assert not by_kind(ha, "PersistentVolumeClaim") and by_kind(ha, "PodDisruptionBudget")
    pod = d["spec"]["template"]["spec"]
    env = {e["name"]: e.get("value") for e in pod["containers"][0]["env"]}
    assert env["RUNBOT_DATABASE_URL_FILE"] == "/var/run/secrets/runbot-database/database-url"
    assert env["RUNBOT_VAULT_AUTH_METHOD"] == "kubernetes" and env["RUNBOT_VAULT_KUBERNETES_ROLE"] == "runbot"
    assert env["RUNBOT_API_TOKEN_FILE"] == "/var/run/secrets/runbot/api_token"
    assert pod["automountServiceAccountToken"] is True  # Vault's Kubernetes auth logs in with it
    (d,) = by_kind(single, "Deployment")
    assert d["spec"]["template"]["spec"]["automountServiceAccountToken"] is False


def test_rbac_grants_exactly_the_verbs_the_shipped_kubernetes_runbooks_use(rendered):
    used: set[tuple[str, str, str]] = set()
    for book in (ROOT / "runbooks").glob("*.yaml"):
        for step in yaml.safe_load(book.read_text()).get("steps", []):
            url = str((step.get("with") or {}).get("url", ""))
            m = re.search(r"kubernetes_api }}/(?:api/v1|apis/(\w+)/v1)/namespaces/[^/]+/(\w+)/[^/]+(?:/(\w+))?$", url)
            if m:
                group, resource, sub = m.group(1) or "", m.group(2), m.group(3)
                verb = {"GET": "get", "DELETE": "delete", "PATCH": "patch"}[str(step["with"].get("method", "GET"))]
                used.add((group, resource + (f"/{sub}" if sub else ""), verb))
    assert used, "no Kubernetes API call found in runbooks/"
    for name in ("postgresql-vault-ha-values.yaml", "slack-http-ingress-values.yaml"):
        roles = by_kind(rendered[name], "Role") + by_kind(rendered[name], "ClusterRole")
        assert roles
        for role in roles:
            granted = {(g, r, v) for rule in role["rules"] for g in rule["apiGroups"] for r in rule["resources"]
                       for v in rule["verbs"]}
            assert granted == used
    assert {r["metadata"]["namespace"] for r in by_kind(rendered["postgresql-vault-ha-values.yaml"], "Role")} == \
        {"shop", "payments"}


def test_monitoring_objects_carry_the_self_alerts_verbatim(rendered):
    docs = rendered["monitoring-values.yaml"]
    (rule,) = by_kind(docs, "PrometheusRule")
    shipped = yaml.safe_load((ROOT / "deploy/prometheus/self/runbot.yaml").read_text())
    assert rule["spec"] == shipped
    assert (CHART / "files/runbot-self-rules.yaml").read_text() == (ROOT / "deploy/prometheus/self/runbot.yaml").read_text()
    (dashboard,) = [d for d in by_kind(docs, "ConfigMap")
                    if d["metadata"]["name"].endswith("-dashboard")]
    assert dashboard["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert json.loads(dashboard["data"]["runbot.json"]) == json.loads((ROOT / "deploy/grafana/runbot.json").read_text())
    assert (CHART / "files/grafana-dashboard.json").read_text() == (ROOT / "deploy/grafana/runbot.json").read_text()
    (sm,) = by_kind(docs, "ServiceMonitor")
    assert sm["spec"]["endpoints"][0]["path"] == "/metrics"
    assert not by_kind(rendered["sqlite-single-values.yaml"], "ServiceMonitor")


def test_slack_http_mode_gets_an_ingress_and_socket_mode_none(rendered):
    (ing,) = by_kind(rendered["slack-http-ingress-values.yaml"], "Ingress")
    assert [p["path"] for p in ing["spec"]["rules"][0]["http"]["paths"]] == ["/slack/events"]
    assert ing["spec"]["tls"]
    assert not by_kind(rendered["postgresql-vault-ha-values.yaml"], "Ingress")
    (d,) = by_kind(rendered["slack-http-ingress-values.yaml"], "Deployment")
    assert [c["name"] for c in d["spec"]["template"]["spec"]["containers"]] == ["runbot", "git-sync"]


def test_notes_show_the_alertmanager_receiver():
    out = helm.Chart.load(CHART).render(yaml.safe_load(VALUES[0].read_text()), name="runbot", namespace=NAMESPACE)
    notes = next(v for k, v in out.items() if k.endswith("NOTES.txt"))
    assert "url: http://runbot.ops.svc:8080/webhooks/alertmanager" in notes and "webhook_configs" in notes


def _explained_skips() -> set[str]:
    readme = (CHART / "README.md").read_text()
    return set(re.findall(r"^\| `(CKV2?_K8S_\d+)` \|", readme, re.M))


def test_checkov_finds_nothing_unexplained(rendered, tmp_path):
    checkov = shutil.which("checkov", path=str(Path(sys.executable).parent)) or shutil.which("checkov")
    if checkov is None:
        pytest.fail("checkov is missing: pip install '.[deploy]'")
    for name, docs in rendered.items():
        (tmp_path / name).write_text(yaml.safe_dump_all(docs))
    skips = _explained_skips()
    out = subprocess.run([checkov, "-d", str(tmp_path), "--framework", "kubernetes", "-o", "json",
                          "--skip-download",  # offline: no guideline or policy downloads
                          "--compact", "--skip-check", ",".join(sorted(skips))],
                         capture_output=True, text=True, timeout=600,
                         env={**os.environ, "BC_SKIP_MAPPING": "TRUE", "CHECKOV_NO_GUIDE": "TRUE"})
    report = json.loads(out.stdout or "{}")
    reports = report if isinstance(report, list) else [report]
    failed = [(c["check_id"], c["resource"], c["file_path"]) for r in reports
              for c in r.get("results", {}).get("failed_checks", [])]
    assert sum(r.get("summary", {}).get("passed", 0) for r in reports) > 100, out.stderr[-2000:]
    assert failed == [], failed
