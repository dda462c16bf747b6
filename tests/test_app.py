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


DOC_PATHS = ("/docs", "/redoc", "/openapi.json")


def test_the_api_schema_and_docs_are_not_served_by_default(make_runtime):
    rt = make_runtime(api_token="t0ken-for-tests")
    with TestClient(create_app(rt, run_engine=False)) as client:
        for path in DOC_PATHS:
            assert client.get(path).status_code == 404, path
            assert client.get(path, headers={"Authorization": "Bearer t0ken-for-tests"}).status_code == 404, path


def test_token_mode_serves_the_docs_only_with_the_api_token(make_runtime):
    rt = make_runtime(api_token="t0ken-for-tests", api_docs="token")
    with TestClient(create_app(rt, run_engine=False)) as client:
        for path in DOC_PATHS:
            assert client.get(path).status_code == 401, path
            assert client.get(path, headers={"Authorization": "Bearer wrong"}).status_code == 401, path
        ok = client.get("/openapi.json", headers={"Authorization": "Bearer t0ken-for-tests"})
        assert ok.status_code == 200 and "/api/v1/audit/export" in ok.json()["paths"]
        assert "/openapi.json" not in ok.json()["paths"]  # the doc routes do not document themselves
        assert client.get("/docs", headers={"Authorization": "Bearer t0ken-for-tests"}).status_code == 200


def test_token_mode_without_a_token_configured_serves_nothing(make_runtime):
    rt = make_runtime(api_docs="token")
    with TestClient(create_app(rt, run_engine=False)) as client:
        assert all(client.get(p).status_code == 401 for p in DOC_PATHS)


def test_public_mode_serves_the_docs_to_anyone(make_runtime):
    rt = make_runtime(api_docs="public")
    with TestClient(create_app(rt, run_engine=False)) as client:
        assert all(client.get(p).status_code == 200 for p in DOC_PATHS)
