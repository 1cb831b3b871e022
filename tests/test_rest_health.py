"""GET /health for load balancers and GET /api/v1/status for operators."""

import pytest

from models.db import DatabaseUnavailable
from assertions import assert_error

STATUS_FIELDS = {"version", "profile", "node", "uptimeSeconds", "connections",
                 "onlineUsers", "pendingPushes", "scheduled"}


@pytest.mark.gen_test(timeout=30)
async def test_health_returns_ok_without_token(api):
    status, answer, response = await api.get("/health", token="")

    assert status == 200, answer
    assert answer == {"status": "ok"}
    assert response.headers["Content-Type"].startswith("application/json")


@pytest.mark.gen_test(timeout=30)
async def test_health_ignores_bad_token(api):
    status, answer, _ = await api.get("/health", token="not-a-token")

    assert status == 200, answer
    assert answer == {"status": "ok"}


@pytest.mark.gen_test(timeout=30)
async def test_health_returns_503_when_database_down(api, im, monkeypatch):
    def unreachable():
        raise DatabaseUnavailable("OperationalError 2003")

    monkeypatch.setattr(im.db, "ping", unreachable)

    status, answer, response = await api.get("/health", token="")

    assert_error(status, answer, 503, "unavailable")
    assert "OperationalError" not in response.body.decode()


@pytest.mark.gen_test(timeout=30)
async def test_status_returns_every_field(api, im):
    status, answer, _ = await api.get("/api/v1/status")

    assert status == 200, answer
    assert set(answer) == STATUS_FIELDS
    assert answer["version"] == im.version
    assert answer["profile"] == "test"
    assert answer["node"] == im.config.node_name
    for name in ("uptimeSeconds", "connections", "onlineUsers", "pendingPushes",
                 "scheduled"):
        assert isinstance(answer[name], int), name
        assert answer[name] >= 0, name


@pytest.mark.gen_test(timeout=30)
async def test_status_counts_live_sockets(api, connect, unique):
    doctor, patient = unique("doc"), unique("pat")
    doctor_token = await api.user(doctor, "doctor")
    patient_token = await api.user(patient, "patient")
    await connect(doctor_token)
    await connect(doctor_token)
    await connect(patient_token)

    status, answer, _ = await api.get("/api/v1/status")

    assert status == 200, answer
    assert answer["connections"] == 3
    assert answer["onlineUsers"] == 2


@pytest.mark.parametrize("role", ["doctor", "patient"])
@pytest.mark.gen_test(timeout=30)
async def test_status_for_user_token_returns_403(api, unique, role):
    token = await api.user(unique(role), role)

    status, answer, _ = await api.get("/api/v1/status", token=token)

    assert_error(status, answer, 403, "forbidden")


@pytest.mark.gen_test(timeout=30)
async def test_status_without_token_returns_401(api):
    status, answer, _ = await api.get("/api/v1/status", token="")

    assert_error(status, answer, 401, "unauthorized")
