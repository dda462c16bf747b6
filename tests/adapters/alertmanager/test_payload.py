"""The webhook payload model: what is accepted, and how a refusal names the field."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest

from runbot.adapters.alertmanager.payload import PayloadError, fingerprint, parse

from .samples import alert, payload


def body(obj: object) -> bytes:
    return json.dumps(obj).encode()


def test_a_version_4_payload_parses_with_go_timestamps():
    a = alert(instance="web-1")
    a["startsAt"] = "2024-05-01T10:00:00.123456789Z"  # Go sends nanoseconds
    p = parse(body(payload(a)))
    got = p.alerts[0]
    assert got.starts_at == datetime(2024, 5, 1, 10, 0, 0, 123456, tzinfo=UTC)
    assert got.ends_at is None  # Go's zero time means "not set"
    assert got.labels["instance"] == "web-1"
    assert p.group_key == '{}:{alertname="HighDiskUsage"}'


def test_unknown_fields_are_ignored_for_forward_compatibility():
    p = payload(alert())
    p["somethingNew"] = {"x": 1}
    p["alerts"][0]["silencedBy"] = []
    assert parse(body(p)).alerts[0].status == "firing"


def test_a_missing_fingerprint_is_computed_as_alertmanager_does():
    a = alert(instance="web-1")
    del a["fingerprint"]
    got = parse(body(payload(a))).alerts[0]
    assert got.fingerprint == fingerprint({"instance": "web-1", "alertname": "HighDiskUsage"})
    # order-independent and sensitive to every label value
    assert fingerprint({"a": "1", "b": "2"}) == fingerprint({"b": "2", "a": "1"})
    assert fingerprint({"a": "1"}) != fingerprint({"a": "2"})
    assert fingerprint({}) == "cbf29ce484222325"  # FNV-1a offset: Alertmanager's empty label set


def test_malformed_json_is_a_400():
    with pytest.raises(PayloadError) as e:
        parse(b'{"version": "4", ')
    assert e.value.status == 400
    assert e.value.message.startswith("malformed JSON")


def test_a_json_array_is_not_a_payload():
    with pytest.raises(PayloadError) as e:
        parse(b"[]")
    assert e.value.status == 422


@pytest.mark.parametrize("version", ["3", "5", 5])
def test_another_version_is_refused_by_name(version):
    p = payload(alert())
    p["version"] = version
    with pytest.raises(PayloadError) as e:
        parse(body(p))
    assert e.value.status == 422
    assert e.value.problems == [{"field": "version", "message": "must be '4' (or '1' from Grafana)"}]
    assert "version 4" in e.value.message


def test_a_different_version_wins_over_other_problems():
    with pytest.raises(PayloadError) as e:
        parse(body({"version": "5", "alerts": "nope"}))
    assert e.value.problems[0]["field"] == "version"


@pytest.mark.parametrize(
    ("path", "field"),
    [(("groupKey",), "groupKey"), (("alerts", 0, "startsAt"), "alerts[0].startsAt"),
     (("alerts", 0, "labels"), "alerts[0].labels"), (("alerts", 0, "status"), "alerts[0].status"),
     (("alerts",), "alerts"), (("version",), "version")],
)  # fmt: skip
def test_each_missing_field_is_named(path, field):
    p = payload(alert())
    target = p
    for part in path[:-1]:
        target = target[part]
    del target[path[-1]]
    with pytest.raises(PayloadError) as e:
        parse(body(p))
    assert e.value.status == 422
    assert {"field": field, "message": "required field is missing"} in e.value.problems
    assert field in e.value.message


def test_wrong_types_and_values_are_named():
    p = payload(alert())
    p["alerts"][0]["status"] = "burning"
    p["alerts"][0]["startsAt"] = "yesterday"
    with pytest.raises(PayloadError) as e:
        parse(body(p))
    fields = {x["field"] for x in e.value.problems}
    assert fields == {"alerts[0].status", "alerts[0].startsAt"}
