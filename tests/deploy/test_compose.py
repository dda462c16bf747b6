"""deploy/compose: valid against the Compose Specification's JSON schema (the copy check-jsonschema vendors
from github.com/compose-spec/compose-spec, schema/compose-spec.json), and the whole loop is wired."""

from __future__ import annotations

import json
import re
from importlib import resources

import pytest
import yaml

from tests.deploy.dockerfile import ROOT, final_stage

COMPOSE = ROOT / "deploy/compose"


@pytest.fixture(scope="module")
def stack() -> dict:
    return yaml.safe_load((COMPOSE / "compose.yaml").read_text())


def test_the_compose_file_is_valid_against_the_compose_specification_schema(stack):
    jsonschema = pytest.importorskip("jsonschema")
    pytest.importorskip("check_jsonschema", reason="pip install '.[deploy]' (check-jsonschema vendors the schema)")
    schema = json.loads(resources.files("check_jsonschema.builtin_schemas.vendor")
                        .joinpath("compose-spec.json").read_text())
    validator = jsonschema.validators.validator_for(schema)(schema)  # the draft the schema names (2020-12)
    errors = sorted(validator.iter_errors(stack), key=str)
    assert errors == [], [f"{'/'.join(map(str, e.path))}: {e.message}" for e in errors]
    broken = {**stack, "services": {**stack["services"], "postgres": {**stack["services"]["postgres"], "bogus": 1}}}
    assert list(validator.iter_errors(broken))  # the schema is really applied


def test_two_runbot_replicas_on_postgresql_behind_the_whole_loop(stack):
    services = stack["services"]
    assert {"runbot-1", "runbot-2", "postgres", "prometheus", "alertmanager", "openbao", "openbao-seed"} <= set(services)
    for name in ("runbot-1", "runbot-2"):
        svc = services[name]
        env = svc["environment"]
        assert env["RUNBOT_DATABASE_URL_FILE"] == "/run/secrets/database_url"
        assert env["RUNBOT_SECRETS_PROVIDER"] == "vault" and env["RUNBOT_VAULT_ADDR"] == "http://openbao:8200"
        assert svc["read_only"] is True and svc["user"] == final_stage().user and svc["cap_drop"] == ["ALL"]
        assert svc["depends_on"]["postgres"]["condition"] == "service_healthy"
        assert svc["depends_on"]["openbao-seed"]["condition"] == "service_completed_successfully"
    am = yaml.safe_load((COMPOSE / "alertmanager/alertmanager.yml").read_text())
    urls = [w["url"] for r in am["receivers"] for w in r.get("webhook_configs", [])]
    assert urls == ["http://runbot-1:8080/webhooks/alertmanager"]
    prom = yaml.safe_load((COMPOSE / "prometheus/prometheus.yml").read_text())
    assert prom["rule_files"] == ["rules/*.yaml", "self/*.yaml"]
    mounts = services["prometheus"]["volumes"]
    assert "../prometheus/rules:/etc/prometheus/rules:ro" in mounts and "../prometheus/self:/etc/prometheus/self:ro" in mounts


def test_openbao_is_seeded_with_every_secret_the_shipped_runbooks_read():
    wanted = set()
    for book in (ROOT / "runbooks").glob("*.yaml"):
        wanted |= set(re.findall(r"secret\('kv/([^#']+)#(\w+)'\)", book.read_text()))
    seed = (COMPOSE / "openbao/seed.sh").read_text()
    seeded = {(m[0], k) for m in re.findall(r"bao kv put kv/(\S+) (.+)", seed) for k in re.findall(r"(\w+)=", m[1])}
    assert wanted and wanted <= seeded


def test_the_compose_configs_follow_the_shipped_ones():
    for rel, subs in (("prometheus/prometheus.yml", [("alertmanager.monitoring.svc:9093", "alertmanager:9093"),
                                                     ('"runbot.monitoring.svc:8080"', '"runbot-1:8080", "runbot-2:8080"')]),
                      ("alertmanager/alertmanager.yml", [("http://runbot.monitoring.svc:8080/", "http://runbot-1:8080/")])):
        expected = (ROOT / "deploy" / rel).read_text()
        for a, b in subs:
            expected = expected.replace(a, b)
        got = (COMPOSE / rel).read_text().split("\n", 1)[1]  # without the "generated from" line
        assert got == expected, rel
