"""Health, readiness and metrics endpoints of the HTTP server."""

from fastapi.testclient import TestClient

from runbot.app import create_app


def test_health_ready_and_metrics(make_runtime):
    rt = make_runtime()
    with TestClient(create_app(rt)) as client:
        live = client.get("/healthz")
        assert live.status_code == 200 and live.json()["live"] is True
        ready = client.get("/readyz")
        assert ready.status_code == 200 and ready.json()["ready"] is True
        metrics = client.get("/metrics")
        assert metrics.status_code == 200
        assert "runbot_engine_up 1.0" in metrics.text


def test_not_ready_when_the_schema_is_behind(make_runtime):
    rt = make_runtime()
    with rt.db.tx() as conn:
        conn.exec_driver_sql("UPDATE alembic_version SET version_num = '0001'")
    with TestClient(create_app(rt)) as client:
        ready = client.get("/readyz")
        assert ready.status_code == 503
        assert "latest migration" in ready.json()["problems"][0]
