import pytest


@pytest.mark.gen_test(timeout=30)
async def test_pm_reaches_live_socket(api, connect, unique):
    doctor, patient = unique("doc"), unique("pat")
    doctor_token = await api.user(doctor, "doctor")
    patient_token = await api.user(patient, "patient")
    socket = await connect(patient_token)

    status, answer, _ = await api.post(
        "/api/v1/chats/pm",
        {"from": doctor, "to": patient, "contentType": 1, "content": "你好 😀"},
        token=doctor_token,
    )

    assert status == 201, answer
    assert answer["online"] is True
    frame = await socket.expect("message")
    assert frame["message"] == answer["message"]
