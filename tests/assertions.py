"""Assertions shared by the REST test modules."""


def assert_error(status, answer, expected_status, code, field=None):
    """Assert an error response: status, shape, code and field (None means no field)."""
    assert status == expected_status, answer
    assert set(answer) == {"error"}, answer
    error = answer["error"]
    assert set(error) <= {"code", "message", "field"}, error
    assert error["code"] == code, error
    assert isinstance(error["message"], str), error
    assert error["message"], error
    assert error.get("field") == field, error
