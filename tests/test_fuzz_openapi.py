"""Schemathesis against docs/openapi.yaml on a live server, with a system token.

Every operation of the document gets generated requests (at most
MAX_EXAMPLES each). No response may be a 5xx, every 4xx must be the JSON
error shape, and responses must match what the document describes.

The document is loaded at import and the server's URL given to each call:
schemathesis 4.32's loader from a fixture (``schemathesis.pytest.from_fixture``)
fails on pytest 9 because it sets ``request.node._nodeid``, which pytest 9
no longer has.
"""

import os

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.specs.openapi.checks import (
    negative_data_rejection,
    positive_data_acceptance,
)

from conf import load_config
from conftest import TEST_SECRET
from hardening_support import LiveServer

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SPEC_PATH = os.path.join(ROOT, "docs", "openapi.yaml")
MAX_EXAMPLES = 30
ERROR_KEYS = {"code", "message", "field"}

schema = schemathesis.openapi.from_path(SPEC_PATH)


@pytest.fixture(scope="module")
def live_server(database_url):
    config = load_config("test", environ={}, overrides={
        "database_url": database_url, "secret": TEST_SECRET, "port": 0,
    })
    server = LiveServer(config).start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def system_headers(live_server):
    # Not the user "platform": a generated logout of it would revoke the
    # token that every later request carries.
    token, _ = live_server.im.tokens.mint("fuzz-backend", "system", 3600)
    return {"Authorization": f"Bearer {token}"}


def assert_json_error(response):
    """Assert that a 4xx response is {"error": {"code", "message", "field"?}}."""
    # schemathesis keeps headers as lists under lower-case names.
    content_type = response.headers.get("content-type", [""])[0]
    assert content_type.startswith("application/json"), response.headers
    body = response.json()
    assert set(body) == {"error"}, body
    assert set(body["error"]) <= ERROR_KEYS, body
    assert isinstance(body["error"]["code"], str), body
    assert isinstance(body["error"]["message"], str), body


# Preflights (OPTIONS) are left to tests/test_cors.py, which sends one to
# every route; fuzzing them here would add a third to the run time.
@schema.exclude(method="OPTIONS").parametrize()
@settings(max_examples=MAX_EXAMPLES, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much,
                                 HealthCheck.function_scoped_fixture])
@pytest.mark.timeout(300)
def test_operation_answers_as_documented(case, live_server, system_headers):
    response = case.call(base_url=live_server.base_url, headers=system_headers)

    assert response.status_code < 500, response.text[:500]
    if 400 <= response.status_code < 500:
        assert_json_error(response)
    case.validate_response(response, excluded_checks=waived_checks(case))


def waived_checks(case):
    """Return the two data checks, which compare the server with what JSON Schema expresses.

    The document cannot express several rules the server enforces, so a
    "valid" request may get a correct 400: both history cursors at once,
    a pm to its own sender, a sendAt outside the next 30 days, a read mark
    without the peer or group its channel needs, ids with control
    characters, and form bodies (a form cannot tell null or an empty list
    from an empty string).
    """
    return [negative_data_rejection, positive_data_acceptance]
