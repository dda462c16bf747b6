"""The shipped example runbooks: they lint, their rehearsals pass, their alert rules and configs are valid,
and each one runs end to end on the real engine against a real Prometheus, with its remediation reaching a
scripted HTTP server (Argo CD, Kubernetes API) or, over a stand-in ssh, real programs on this machine.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import yaml

from runbot.app import build_runtime
from runbot.rehearsal import drive_run, find_rehearsals, load_rehearsal, rehearse, render
from runbot.settings import Settings
from tests.support.http_target import HttpTarget, Recorded, Reply
from tests.support.prometheus import PrometheusProcess, prometheus_available

ROOT = Path(__file__).resolve().parents[2]
RUNBOOKS = ROOT / "runbooks"
DEPLOY = ROOT / "deploy"
CONFIG = DEPLOY / "runbot" / "runbot.example.yaml"
RUNBOT = str(Path(sys.executable).parent / "runbot")

# runbook -> (sample Alertmanager payload, alert rule file, alert name)
EXAMPLES = {
    "api-high-error-rate": ("high-error-rate.json", "high-error-rate.yaml", "HighErrorRate"),
    "disk-filling-up": ("disk-filling-up.json", "disk-filling-up.yaml", "NodeFilesystemFillingUp"),
    "pod-crash-looping": ("pod-crash-looping.json", "pod-crash-looping.yaml", "KubePodCrashLooping"),
    "certificate-expiring": ("certificate-expiring.json", "certificate-expiring.yaml", "TLSCertificateExpiringSoon"),
    "high-latency-scale-up": ("high-latency.json", "high-latency.yaml", "HighLatency"),
}
needs_prometheus = pytest.mark.skipif(not prometheus_available(), reason="prometheus binary not installed")


def payload(runbook: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((RUNBOOKS / "examples" / EXAMPLES[runbook][0]).read_text())
    return data


# ---- static checks -------------------------------------------------------------------------------------


def test_every_example_runbook_passes_lint_with_the_example_configuration() -> None:
    out = subprocess.run([RUNBOT, "--config", str(CONFIG), "lint", str(RUNBOOKS)], capture_output=True, text=True,
                         timeout=120, cwd=ROOT)  # fmt: skip
    assert out.returncode == 0, out.stdout + out.stderr
    assert all(name in out.stdout for name in EXAMPLES)


@pytest.mark.parametrize("runbook", sorted(EXAMPLES))
def test_every_example_has_a_payload_an_alert_rule_and_a_passing_rehearsal(runbook: str) -> None:
    _, rule_file, alertname = EXAMPLES[runbook]
    assert payload(runbook)["alerts"][0]["labels"]["alertname"] == alertname
    rules = yaml.safe_load((DEPLOY / "prometheus" / "rules" / rule_file).read_text())
    assert [r["alert"] for g in rules["groups"] for r in g["rules"]] == [alertname]
    rehearsals = [p for p in find_rehearsals(RUNBOOKS / "rehearsals") if p.name.startswith(runbook)]
    assert rehearsals, f"no rehearsal for {runbook}"
    for path in rehearsals:
        result = rehearse(load_rehearsal(path), Settings(runbooks_dir=RUNBOOKS))
        assert result.runbook == runbook
        assert result.passed, "\n".join(render(result))


def test_sample_payloads_carry_exactly_the_labels_the_alert_rules_produce() -> None:
    """promtool's expected alerts (deploy/prometheus/tests) plus `env` from external_labels = payload labels."""
    tests = yaml.safe_load((DEPLOY / "prometheus" / "tests" / "rules.test.yaml").read_text())
    produced = {}
    for case in tests["tests"]:
        for check in case["alert_rule_test"]:
            for exp in check["exp_alerts"]:
                produced[check["alertname"]] = {"alertname": check["alertname"], "env": "prod", **exp["exp_labels"]}
    for runbook, (_, _, alertname) in EXAMPLES.items():
        assert payload(runbook)["alerts"][0]["labels"] == produced[alertname], runbook


@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool not installed")
def test_alert_rules_and_prometheus_config_pass_promtool() -> None:
    rules = sorted((DEPLOY / "prometheus" / "rules").glob("*.yaml")) + sorted((DEPLOY / "prometheus" / "self").glob("*.yaml"))
    for args in (["check", "rules", *map(str, rules)],
                 ["check", "config", str(DEPLOY / "prometheus" / "prometheus.yml")],
                 ["test", "rules", str(DEPLOY / "prometheus" / "tests" / "rules.test.yaml")],
                 ["test", "rules", str(DEPLOY / "prometheus" / "tests" / "runbot-self.test.yaml")]):  # fmt: skip
        out = subprocess.run(["promtool", *args], capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, out.stdout + out.stderr


@pytest.mark.skipif(shutil.which("amtool") is None, reason="amtool not installed")
def test_alertmanager_config_routes_the_example_alerts_to_runbot_with_a_bearer_token() -> None:
    config = DEPLOY / "alertmanager" / "alertmanager.yml"
    out = subprocess.run(["amtool", "check-config", str(config)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr
    receiver = next(r for r in yaml.safe_load(config.read_text())["receivers"] if r["name"] == "runbot")
    hook = receiver["webhook_configs"][0]
    assert hook["url"].endswith("/webhooks/alertmanager")
    assert hook["http_config"]["authorization"]["credentials_file"]
    for runbook, (_, _, alertname) in EXAMPLES.items():
        labels = payload(runbook)["alerts"][0]["labels"]
        routed = subprocess.run(["amtool", "config", "routes", "test", f"--config.file={config}",
                                 *[f"{k}={v}" for k, v in labels.items()]], capture_output=True, text=True, timeout=60)  # fmt: skip
        assert "runbot" in routed.stdout, (alertname, routed.stdout, routed.stderr)
    # runbot's own alerts page people: a bot that is down cannot handle the alert that it is down
    own = subprocess.run(["amtool", "config", "routes", "test", f"--config.file={config}", "alertname=RunbotDown",
                          "severity=page", "job=runbot"], capture_output=True, text=True, timeout=60)  # fmt: skip
    assert own.stdout.split() == ["oncall-pager"], own.stdout + own.stderr


# ---- end to end against a real Prometheus -------------------------------------------------------------


class Exporter:
    """The series the examples query, as node_exporter, kube-state-metrics, blackbox and the apps expose
    them. Counters grow at a settable rate; gauges may be functions, evaluated at each scrape."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.gauges: dict[tuple[str, tuple[tuple[str, str], ...]], float | Callable[[], float]] = {}
        self.counters: dict[tuple[str, tuple[tuple[str, str], ...]], list[float]] = {}  # [value, rate, at]

    def gauge(self, name: str, value: float | Callable[[], float], **labels: str) -> None:
        with self.lock:
            self.gauges[(name, tuple(sorted(labels.items())))] = value

    def counter(self, name: str, rate: float, **labels: str) -> None:
        """From now on the counter grows by `rate` per second (it keeps its value)."""
        key = (name, tuple(sorted(labels.items())))
        now = time.time()
        with self.lock:
            value, old_rate, at = self.counters.get(key, [0.0, 0.0, now])
            self.counters[key] = [value + old_rate * (now - at), rate, now]

    def render(self) -> str:
        now = time.time()
        lines = []
        with self.lock:
            items = [(k, v() if callable(v) else v) for k, v in self.gauges.items()]
            items += [(k, c[0] + c[1] * (now - c[2])) for k, c in self.counters.items()]
        for (name, labels), value in sorted(items):
            text = ",".join(f'{k}="{v}"' for k, v in labels)
            lines.append(f"{name}{{{text}}} {value!r}")
        return "\n".join(lines) + "\n"


class ScrapingPrometheus(PrometheusProcess):
    """support.prometheus' real Prometheus, also scraping the test's exporter every second."""

    def __init__(self, workdir: Path, target: str) -> None:
        super().__init__(workdir, scrape_interval="1s")
        self.target = target

    def _write_config(self) -> Path:
        path = super()._write_config()
        cfg = json.loads(path.read_text())
        cfg["scrape_configs"].append({"job_name": "exporter", "honor_labels": True,
                                      "static_configs": [{"targets": [self.target]}]})  # fmt: skip
        path.write_text(json.dumps(cfg))
        return path


class World:
    def __init__(self, prom: ScrapingPrometheus, exporter: Exporter, api: HttpTarget, bin_dir: Path) -> None:
        self.prom, self.exporter, self.api, self.bin_dir = prom, exporter, api, bin_dir

    def wait_for(self, promql: str, check: Callable[[float], bool], timeout: float = 20.0) -> None:
        self.prom.wait_for(promql, timeout=timeout, check=lambda r: bool(r) and check(float(r[0]["value"][1])))


FAKE_SSH = """#!/bin/sh
# Stands in for OpenSSH: drops the options up to "--" and the host, then runs the (already quoted) remote
# command line with the local shell, as sshd would hand it to the remote user's shell.
while [ "$#" -gt 0 ] && [ "$1" != "--" ]; do shift; done
shift 2
exec /bin/sh -c "$*"
"""
FAKE_CERTBOT = """#!/bin/sh
# Stands in for certbot on the web server: `renew` leaves a marker the test's blackbox series looks at.
case "$1" in
  certificates) echo "  Certificate Name: $3"; echo "    Expiry Date: soon (VALID: 9 days)";;
  renew) touch "$(dirname "$0")/renewed"; echo "Congratulations, all renewals succeeded";;
  *) echo "unexpected: $*" >&2; exit 2;;
esac
"""


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    if not prometheus_available():
        pytest.skip("prometheus binary not installed")
    base = tmp_path_factory.mktemp("examples")
    bin_dir = base / "bin"
    bin_dir.mkdir()
    for name, text in (("ssh", FAKE_SSH), ("certbot", FAKE_CERTBOT)):
        (bin_dir / name).write_text(text)
        (bin_dir / name).chmod(0o755)
    exporter = Exporter()
    with HttpTarget() as metrics, HttpTarget() as api:
        metrics.route("/metrics", lambda req: Reply(body=exporter.render(), headers={"Content-Type": "text/plain"}))
        prom = ScrapingPrometheus(base / "prometheus", metrics.netloc)
        try:
            prom.start()
            yield World(prom, exporter, api, bin_dir)
        finally:
            prom.stop()


@pytest.fixture
def runtime(world: World, tmp_path: Path) -> Iterator[Any]:
    (tmp_path / "known_hosts").write_text("")
    settings = Settings(
        data_dir=tmp_path, database_url=f"sqlite:///{tmp_path / 'runbot.db'}", runbooks_dir=RUNBOOKS,
        prometheus_url=world.prom.url, http_allow_hosts=[world.api.netloc], http_allow_cidrs=["127.0.0.0/8"],
        command_ssh_hosts=["*.internal.example"], command_ssh_allow=["du", "find", "certbot"],
        command_ssh_known_hosts=tmp_path / "known_hosts", command_ssh_binary=str(world.bin_dir / "ssh"),
    )  # fmt: skip
    rt = build_runtime(settings, secrets=FakeVault())
    assert not rt.catalog.problems, rt.catalog.problems
    yield rt
    rt.close()
    world.api.reset()


class FakeVault:
    def fetch(self, ref: str) -> str:
        return f"token-for-{ref.split('#')[0].rsplit('/', 1)[-1]}"


def start(rt: Any, runbook: str, **params: Any) -> str:
    alert = dict(payload(runbook)["alerts"][0])
    alert["startsAt"] = datetime.now(UTC).isoformat().replace("+00:00", "Z")  # graphs end near "now"
    book = rt.catalog.get(runbook)
    assert book is not None and book.spec.matchers() and all(m.matches(alert["labels"]) for m in book.spec.matchers())
    run_id: str = rt.engine.create_run(book, alert=alert, params=params, requester="alertmanager")
    return run_id


def finish(rt: Any, run_id: str, approvals: dict[str, str]) -> tuple[str, list[tuple[str, str]], dict[str, Any]]:
    """Drive the run (real time passes between checks so Prometheus sees changes), return status, sequence, outputs."""
    result = drive_run(rt.engine, run_id, approvals, pause=1.0, max_wakeups=60)
    with rt.db.read() as conn:
        from sqlalchemy import select

        from runbot.engine.state import STEPS

        rows = conn.execute(select(STEPS).where(STEPS.c.run_id == run_id).order_by(STEPS.c.id)).mappings().all()
    outputs = {r["step_id"]: r["output"] or {} for r in rows}
    errors = {r["step_id"]: r["error"] for r in rows if r["error"]}
    assert result.stuck is None, (result.stuck, errors)
    return result.status.value, [(r["step_id"], r["status"]) for r in rows], {**outputs, "_errors": errors}


def ok(seq: list[tuple[str, str]], step: str) -> bool:
    return (step, "succeeded") in seq


@pytest.mark.integration
@needs_prometheus
def test_high_error_rate_rolls_back_through_argocd_and_the_ratio_recovers(world: World, runtime: Any) -> None:
    e, labels = world.exporter, {"namespace": "shop", "service": "checkout"}
    e.counter("http_requests_total", 20, code="200", **labels)
    e.counter("http_requests_total", 3, code="500", **labels)
    world.wait_for('sum(rate(http_requests_total{service="checkout",code="500"}[4s]))', lambda v: v > 1)
    app = {"metadata": {"name": "checkout"}, "spec": {"project": "shop"},
           "status": {"history": [{"id": 41, "revision": "3b8d0a2"}, {"id": 42, "revision": "9f2c1e7"}]}}  # fmt: skip

    def rollback(req: Recorded) -> Reply:
        e.counter("http_requests_total", 0, code="500", **labels)  # the previous revision is healthy
        return Reply(json=app)

    world.api.route("/api/v1/applications/checkout", Reply(json=app), method="GET")
    world.api.route("/api/v1/applications/checkout/rollback", rollback, method="POST")
    run_id = start(runtime, "api-high-error-rate", argocd_url=world.api.base_url, window="6s")
    status, seq, out = finish(runtime, run_id, {"rollback": "approve"})
    assert status == "succeeded", (seq, out["_errors"])
    assert 0.1 < out["error_ratio"]["value"] < 0.16  # 3 of 23 req/s, measured by the real Prometheus
    assert out["requests_graph"]["bytes"] > 1000
    call = world.api.last("/api/v1/applications/checkout/rollback")
    assert call.json() == {"id": 41, "prune": False}
    assert call.header("Authorization") == "Bearer token-for-argocd"
    assert ok(seq, "rollback__verify") and ok(seq, "summary") and ("no_rollback", "skipped") in seq


@pytest.mark.integration
@needs_prometheus
def test_disk_filling_up_deletes_old_rotated_logs_over_ssh(world: World, runtime: Any, tmp_path: Path) -> None:
    logs = tmp_path / "log"
    (logs / "nginx").mkdir(parents=True)
    old = [logs / "nginx" / f"access.log.{i}.gz" for i in (5, 6, 7)]
    keep = [logs / "nginx" / "access.log.1.gz", logs / "nginx" / "access.log"]
    ten_days_ago = time.time() - 10 * 86400
    for f in old + keep:
        f.write_bytes(b"x" * 4096)
    for f in old:
        os.utime(f, (ten_days_ago, ten_days_ago))
    labels = {"instance": "web-1.internal.example:9100", "job": "node", "mountpoint": "/var/log",
              "device": "/dev/sdb1", "fstype": "ext4"}  # fmt: skip
    size = 100e9
    world.exporter.gauge("node_filesystem_size_bytes", size, **labels)
    world.exporter.gauge("node_filesystem_avail_bytes", lambda: size * (0.09 if old[0].exists() else 0.42), **labels)
    world.wait_for('node_filesystem_avail_bytes{mountpoint="/var/log"}', lambda v: v > 0)

    run_id = start(runtime, "disk-filling-up", log_dir=str(logs))
    status, seq, out = finish(runtime, run_id, {"cleanup_logs": "approve"})
    assert status == "succeeded", (seq, out["_errors"])
    assert abs(out["free_ratio"]["value"] - 0.09) < 1e-9
    assert f"{logs}/nginx" in out["log_usage"]["stdout"]  # real du
    assert sorted(out["old_logs"]["stdout"].split()) == sorted(map(str, old))  # real find
    assert not any(f.exists() for f in old) and all(f.exists() for f in keep)
    assert ok(seq, "cleanup_logs__verify")


@pytest.mark.integration
@needs_prometheus
def test_crash_looping_pod_is_deleted_through_the_kubernetes_api(world: World, runtime: Any) -> None:
    e = world.exporter
    pod = {"namespace": "shop", "pod": "checkout-7d9f8b6c5d-x2k4q", "container": "checkout"}
    e.counter("kube_pod_container_status_restarts_total", 0.1, job="kube-state-metrics", **pod)
    e.gauge("kube_pod_container_status_last_terminated_reason", 1, job="kube-state-metrics", reason="Error", **pod)
    e.gauge("kube_pod_container_status_waiting_reason", 1, job="kube-state-metrics", reason="CrashLoopBackOff",
            uid="0c5d8e7a", **pod)  # fmt: skip
    world.wait_for('kube_pod_container_status_waiting_reason{pod="checkout-7d9f8b6c5d-x2k4q"}', lambda v: v == 1)
    base = "/api/v1/namespaces/shop/pods/checkout-7d9f8b6c5d-x2k4q"

    def delete(req: Recorded) -> Reply:  # the ReplicaSet replaces it with a pod that stays up
        e.gauge("kube_pod_container_status_waiting_reason", 0, job="kube-state-metrics", reason="CrashLoopBackOff",
                uid="0c5d8e7a", **pod)  # fmt: skip
        return Reply(json={"kind": "Pod", "metadata": {"name": pod["pod"]}})

    world.api.route(base, Reply(json={"metadata": {"name": pod["pod"], "ownerReferences": [
        {"kind": "ReplicaSet", "name": "checkout-7d9f8b6c5d", "controller": True}]}}), method="GET")  # fmt: skip
    world.api.route(base + "/log", Reply(body="FATAL cannot connect to postgres\n"), method="GET")
    world.api.route(base, delete, method="DELETE")
    run_id = start(runtime, "pod-crash-looping", kubernetes_api=world.api.base_url)
    status, seq, out = finish(runtime, run_id, {"restart_pod": "approve"})
    assert status == "succeeded", (seq, out["_errors"])
    assert out["last_termination"]["series"][0]["labels"] == {"reason": "Error"}
    assert "cannot connect to postgres" in out["previous_logs"]["body"]
    assert world.api.last(base + "/log").params == {"container": ["checkout"], "previous": ["true"], "tailLines": ["50"]}
    assert world.api.calls(base, method="DELETE") == 1
    assert ok(seq, "restart_pod__verify")


@pytest.mark.integration
@needs_prometheus
def test_expiring_certificate_is_renewed_with_certbot(world: World, runtime: Any,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    monkeypatch.setenv("PATH", f"{world.bin_dir}{os.pathsep}{os.environ.get('PATH', '')}")
    renewed = world.bin_dir / "renewed"
    renewed.unlink(missing_ok=True)
    labels = {"job": "blackbox-https", "instance": "https://shop.example.com", "server": "web-1.internal.example",
              "cert_name": "shop.example.com"}  # fmt: skip
    world.exporter.gauge("probe_ssl_earliest_cert_expiry",
                         lambda: time.time() + (90 if renewed.exists() else 9.6) * 86400, **labels)  # fmt: skip
    world.wait_for('probe_ssl_earliest_cert_expiry{cert_name="shop.example.com"}', lambda v: v > 0)

    run_id = start(runtime, "certificate-expiring")
    status, seq, out = finish(runtime, run_id, {"renew": "approve"})
    assert status == "succeeded", (seq, out["_errors"])
    assert 9 < out["days_left"]["value"] < 10
    assert "Certificate Name: shop.example.com" in out["certbot_status"]["stdout"]
    argv = out["renew"]["argv"]  # ssh, its options, --, the host, then each remote argument quoted for the shell
    assert argv[argv.index("--") + 1:] == ["web-1.internal.example", "certbot", "renew", "--cert-name", "shop.example.com",
                                           "--no-random-sleep-on-renew", "--deploy-hook", "'systemctl reload nginx'"]
    assert "Congratulations" in out["renew"]["stdout"]
    assert renewed.exists() and ok(seq, "renew__verify") and ok(seq, "done")


@pytest.mark.integration
@needs_prometheus
def test_high_latency_scales_the_deployment_up_and_p99_recovers(world: World, runtime: Any) -> None:
    e, labels = world.exporter, {"namespace": "shop", "service": "search"}

    def latency(fast: bool) -> None:  # requests per second under each bucket bound
        for le, rate in (("0.25", 10 if fast else 9), ("1", 10 if fast else 9.8), ("2.5", 10), ("+Inf", 10)):
            e.counter("http_request_duration_seconds_bucket", rate, le=le, **labels)

    latency(fast=False)
    e.counter("container_cpu_usage_seconds_total", 3.9, namespace="shop", container="search", pod="search-1")
    e.gauge("kube_pod_container_resource_requests", 4, namespace="shop", container="search", resource="cpu")
    world.wait_for('sum(rate(container_cpu_usage_seconds_total{container="search"}[6s]))', lambda v: v > 3.6)
    path = "/apis/apps/v1/namespaces/shop/deployments/search/scale"

    def patch(req: Recorded) -> Reply:
        latency(fast=True)
        return Reply(json={"kind": "Scale", "spec": req.json()["spec"]})

    world.api.route(path, Reply(json={"kind": "Scale", "spec": {"replicas": 4}}), method="GET")
    world.api.route(path, patch, method="PATCH")
    run_id = start(runtime, "high-latency-scale-up", kubernetes_api=world.api.base_url, window="6s")
    status, seq, out = finish(runtime, run_id, {"scale_up": "approve"})
    assert status == "succeeded", (seq, out["_errors"])
    assert 1.0 < out["p99"]["value"] < 2.5 and 0.85 < out["cpu"]["value"] < 1.1  # 3.9 of 4 cores requested
    sent = world.api.last(path)
    assert (sent.method, sent.json(), sent.header("Content-Type")) == (
        "PATCH", {"spec": {"replicas": 6}}, "application/merge-patch+json")
    assert ok(seq, "scale_up__verify") and ("not_scaled", "skipped") in seq
