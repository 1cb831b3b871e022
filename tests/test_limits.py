"""Flood limits: REST send rates per user and per address, socket caps, counters, logs.

The test profile turns the REST limits off, so each test here sets the
limits it checks through ``with_limits``.
"""

import asyncio
import logging
import re

import pytest
from tornado.httpclient import HTTPRequest
from tornado.websocket import websocket_connect

from assertions import assert_error
from conf import Config, ConfigError, load_config
from services.auth import Principal
from services.errors import RateLimited
from services.limits import Limits, TokenBuckets

PM = "/api/v1/chats/pm"
SM = "/api/v1/chats/sm"
CLOSE_TOO_MANY = 4029
ALLOWED_ORIGIN = "http://localhost:8080"


@pytest.fixture
def config(config, request):
    """The suite's config with the settings a test passes through ``with_limits``."""
    for name, value in getattr(request, "param", {}).items():
        setattr(config, name, value)
    return config


def with_limits(name, **settings):
    return pytest.mark.parametrize("config", [settings], indirect=True, ids=[name])


def pm_body(sender, to, **changes):
    return {"from": sender, "to": to, "contentType": 1, "content": "hi", **changes}


def sm_body(to):
    return {"to": to, "title": "Notice", "summary": "", "contentType": 1,
            "content": "Clinic closed on Monday"}


async def history_size(api, user_id):
    status, answer, _ = await api.get(f"{PM}?user_id={user_id}&limit=100")
    assert status == 200, answer
    return len(answer["messages"])


async def metric(api, kind):
    status, _, response = await api.get("/metrics")
    assert status == 200
    match = re.search(rf'^im_rate_limited_total{{kind="{kind}"}} ([0-9.]+)$',
                      response.body.decode(), re.MULTILINE)
    assert match, f"no im_rate_limited_total for {kind}"
    return float(match.group(1))


class FakeClock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


# -- the token buckets and the hit log, on a fake clock -----------------------------------


def test_bucket_allows_burst_then_refills_at_rate():
    clock = FakeClock()
    buckets = TokenBuckets(rate=2, burst=3, clock=clock)

    burst = [buckets.take("u") for _ in range(3)]
    refused = buckets.take("u")
    clock.now += 0.5
    refilled = buckets.take("u")

    assert burst == [0.0, 0.0, 0.0]
    assert refused == pytest.approx(0.5)
    assert refilled == 0.0
    assert buckets.take("other") == 0.0


def test_bucket_never_holds_more_than_burst():
    clock = FakeClock()
    buckets = TokenBuckets(rate=10, burst=2, clock=clock)
    buckets.take("u")
    clock.now += 3600

    taken = [buckets.take("u") for _ in range(3)]

    assert taken[:2] == [0.0, 0.0]
    assert taken[2] > 0


def test_bucket_forgets_idle_keys():
    clock = FakeClock()
    buckets = TokenBuckets(rate=1, burst=1, clock=clock)
    for index in range(100):
        buckets.take(f"address-{index}")
    clock.now += 120

    buckets.take("fresh")

    assert len(buckets) == 1


def limits_with(clock, **settings):
    config = Config(secret="x" * 40)
    for name, value in settings.items():
        setattr(config, name, value)
    return Limits(config, clock=clock)


def test_hits_are_logged_once_per_key_per_minute(caplog):
    clock = FakeClock()
    limits = limits_with(clock)
    caplog.set_level(logging.WARNING, logger="services.limits")

    for _ in range(5):
        limits.record("rest_user_sends", "doc-1")
    limits.record("rest_user_sends", "doc-2")
    clock.now += 61
    limits.record("rest_user_sends", "doc-1")

    lines = [record.getMessage() for record in caplog.records]
    assert lines == [
        "Limit rest_user_sends hit by doc-1",
        "Limit rest_user_sends hit by doc-2",
        "Limit rest_user_sends hit by doc-1, and 4 more times since the last report",
    ]
    assert limits.hits["rest_user_sends"] == 7


def test_quiet_key_reports_left_out_hits(caplog):
    clock = FakeClock()
    limits = limits_with(clock)
    caplog.set_level(logging.WARNING, logger="services.limits")
    for _ in range(3):
        limits.record("ws_user_sockets", "pat-1")
    clock.now += 61

    limits.record("ws_user_sockets", "pat-2")

    lines = [record.getMessage() for record in caplog.records]
    assert lines == [
        "Limit ws_user_sockets hit by pat-1",
        "Limit ws_user_sockets hit by pat-2",
        "Limit ws_user_sockets hit by pat-1 2 more times since the last report",
    ]


def test_system_principal_skips_user_budget_but_not_address():
    clock = FakeClock()
    limits = limits_with(clock, rest_user_sends_per_second=1, rest_user_send_burst=1,
                         rest_ip_sends_per_second=1, rest_ip_send_burst=3)
    system = Principal("platform", "system", 0, 2**40)

    for _ in range(3):
        limits.check_rest_send(system, "10.0.0.1")
    with pytest.raises(RateLimited) as raised:
        limits.check_rest_send(system, "10.0.0.1")

    assert raised.value.retry_after_seconds == 1
    assert limits.hits == {"rest_ip_sends": 1}


def test_rejected_user_spends_nothing_of_its_address():
    clock = FakeClock()
    limits = limits_with(clock, rest_user_sends_per_second=1, rest_user_send_burst=1,
                         rest_ip_sends_per_second=1, rest_ip_send_burst=2)
    flooder = Principal("pat-1", "patient", 0, 2**40)
    neighbour = Principal("pat-2", "patient", 0, 2**40)

    limits.check_rest_send(flooder, "10.0.0.1")
    for _ in range(5):
        with pytest.raises(RateLimited):
            limits.check_rest_send(flooder, "10.0.0.1")
    limits.check_rest_send(neighbour, "10.0.0.1")

    assert limits.hits == {"rest_user_sends": 5}


# -- configuration -------------------------------------------------------------------------


def test_defaults_are_sized_for_production():
    config = load_config("prod", environ={
        "IM_SECRET": "x" * 40, "IM_DATABASE_URL": "mysql+pymysql://im@127.0.0.1/im"})

    assert config.rest_user_sends_per_second == 5
    assert config.rest_user_send_burst == 20
    assert config.rest_ip_sends_per_second == 100
    assert config.rest_ip_send_burst == 200
    assert config.ws_sends_per_second == 20
    assert config.ws_max_sockets_per_user == 10
    assert config.ws_max_unauthenticated_per_ip == 100


def test_limits_read_from_environment():
    config = load_config("test", environ={
        "IM_REST_USER_SENDS_PER_SECOND": "2.5", "IM_REST_USER_SEND_BURST": "7",
        "IM_REST_IP_SENDS_PER_SECOND": "50", "IM_REST_IP_SEND_BURST": "60",
        "IM_WS_SENDS_PER_SECOND": "4", "IM_WS_MAX_SOCKETS_PER_USER": "3",
        "IM_WS_MAX_UNAUTHENTICATED_PER_IP": "9",
    })

    assert config.rest_user_sends_per_second == 2.5
    assert config.rest_user_send_burst == 7
    assert config.rest_ip_sends_per_second == 50
    assert config.rest_ip_send_burst == 60
    assert config.ws_sends_per_second == 4
    assert config.ws_max_sockets_per_user == 3
    assert config.ws_max_unauthenticated_per_ip == 9


@pytest.mark.parametrize("environ, message", [
    ({"IM_WS_MAX_SOCKETS_PER_USER": "-1"}, "IM_WS_MAX_SOCKETS_PER_USER"),
    ({"IM_REST_IP_SENDS_PER_SECOND": "-5"}, "IM_REST_IP_SENDS_PER_SECOND"),
    ({"IM_REST_USER_SENDS_PER_SECOND": "3", "IM_REST_USER_SEND_BURST": "0"},
     "IM_REST_USER_SEND_BURST"),
    ({"IM_WS_MAX_UNAUTHENTICATED_PER_IP": "many"}, "IM_WS_MAX_UNAUTHENTICATED_PER_IP"),
])
def test_bad_limit_setting_is_config_error(environ, message):
    with pytest.raises(ConfigError, match=message):
        load_config("test", environ=environ)


# -- REST sends ----------------------------------------------------------------------------


@with_limits("user-3", rest_user_sends_per_second=0.5, rest_user_send_burst=3)
@pytest.mark.gen_test(timeout=30)
async def test_user_over_send_rate_gets_429(api, unique):
    doctor, patient = unique("doc"), unique("pat")
    token = await api.user(doctor, "doctor")
    await api.user(patient)
    before = await metric(api, "rest_user_sends")

    statuses = []
    for _ in range(3):
        status, _, _ = await api.post(PM, pm_body(doctor, patient), token=token)
        statuses.append(status)
    status, answer, response = await api.post(PM, pm_body(doctor, patient), token=token,
                                              headers={"Origin": ALLOWED_ORIGIN})

    assert statuses == [201, 201, 201]
    assert_error(status, answer, 429, "rate_limited")
    assert response.headers["Retry-After"] == "2"
    assert response.headers["Access-Control-Allow-Origin"] == ALLOWED_ORIGIN
    assert response.headers["X-Request-Id"]
    assert await history_size(api, doctor) == 3
    assert await metric(api, "rest_user_sends") == before + 1


@with_limits("user-2", rest_user_sends_per_second=0.5, rest_user_send_burst=2)
@pytest.mark.gen_test(timeout=30)
async def test_user_limit_is_per_user(api, unique):
    first, second, patient = unique("doc1"), unique("doc2"), unique("pat")
    first_token = await api.user(first, "doctor")
    second_token = await api.user(second, "doctor")
    await api.user(patient)
    for _ in range(2):
        await api.post(PM, pm_body(first, patient), token=first_token)

    limited, _, _ = await api.post(PM, pm_body(first, patient), token=first_token)
    other, _, _ = await api.post(PM, pm_body(second, patient), token=second_token)

    assert limited == 429
    assert other == 201


@with_limits("user-fast", rest_user_sends_per_second=2, rest_user_send_burst=1)
@pytest.mark.gen_test(timeout=30)
async def test_user_may_send_again_after_retry_after(api, unique):
    doctor, patient = unique("doc"), unique("pat")
    token = await api.user(doctor, "doctor")
    await api.user(patient)
    await api.post(PM, pm_body(doctor, patient), token=token)
    limited, _, response = await api.post(PM, pm_body(doctor, patient), token=token)

    await asyncio.sleep(0.6)
    again, _, _ = await api.post(PM, pm_body(doctor, patient), token=token)

    assert limited == 429
    assert response.headers["Retry-After"] == "1"
    assert again == 201


@with_limits("user-1", rest_user_sends_per_second=0.5, rest_user_send_burst=1)
@pytest.mark.gen_test(timeout=30)
async def test_system_token_is_exempt_from_user_limit(api, unique):
    patient = unique("pat")
    await api.user(patient)

    statuses = [(await api.post(SM, sm_body(patient)))[0] for _ in range(5)]

    assert statuses == [201] * 5


@with_limits("address-4", rest_ip_sends_per_second=0.5, rest_ip_send_burst=4)
@pytest.mark.gen_test(timeout=30)
async def test_address_over_send_rate_gets_429(api, unique):
    patient = unique("pat")
    await api.user(patient)
    senders = [unique(f"doc{index}") for index in range(4)]
    tokens = [await api.user(sender, "doctor") for sender in senders]
    before = await metric(api, "rest_ip_sends")

    statuses = []
    for sender, token in zip(senders, tokens):
        status, _, _ = await api.post(PM, pm_body(sender, patient), token=token)
        statuses.append(status)
    user_status, user_answer, response = await api.post(
        PM, pm_body(senders[0], patient), token=tokens[0])
    system_status, system_answer, _ = await api.post(SM, sm_body(patient))

    assert statuses == [201] * 4
    assert_error(user_status, user_answer, 429, "rate_limited")
    assert_error(system_status, system_answer, 429, "rate_limited")
    assert response.headers["Retry-After"] == "2"
    assert await metric(api, "rest_ip_sends") == before + 2


@with_limits("user-1", rest_user_sends_per_second=0.5, rest_user_send_burst=1)
@pytest.mark.gen_test(timeout=30)
async def test_reads_are_not_limited(api, unique):
    doctor = unique("doc")
    token = await api.user(doctor, "doctor")

    statuses = [(await api.get(f"{PM}?user_id={doctor}", token=token))[0]
                for _ in range(5)]

    assert statuses == [200] * 5


# -- WebSocket caps ------------------------------------------------------------------------


async def raw_connect(base_url, token=None):
    url = base_url.replace("http://", "ws://") + "/ws"
    if token is not None:
        url += f"?token={token}"
    return await websocket_connect(HTTPRequest(url))


async def close_code(connection):
    """Wait for the server to close the socket; return its close code."""
    while await asyncio.wait_for(connection.read_message(), 5) is not None:
        pass
    return connection.close_code


@with_limits("sockets-2", ws_max_sockets_per_user=2)
@pytest.mark.gen_test(timeout=30)
async def test_socket_over_user_cap_is_closed_4029(api, connect, unique):
    patient = unique("pat")
    token = await api.user(patient)
    first = await connect(token)
    second = await connect(token)
    before = await metric(api, "ws_user_sockets")

    third = await connect(token, login=False)
    await third.send({"type": "login", "token": token})

    assert await third.closed() == CLOSE_TOO_MANY
    for socket in (first, second):
        await socket.send({"type": "ping"})
        assert (await socket.expect("pong"))["type"] == "pong"
    assert await metric(api, "ws_user_sockets") == before + 1


@with_limits("sockets-1", ws_max_sockets_per_user=1)
@pytest.mark.gen_test(timeout=30)
async def test_query_token_socket_over_cap_closes(api, base_url, connect,
                                                                unique):
    patient = unique("pat")
    token = await api.user(patient)
    await connect(token)

    extra = await raw_connect(base_url, token)

    assert await close_code(extra) == CLOSE_TOO_MANY


@with_limits("sockets-1", ws_max_sockets_per_user=1)
@pytest.mark.gen_test(timeout=30)
async def test_closed_socket_frees_its_place(api, connect, unique):
    patient = unique("pat")
    token = await api.user(patient)
    first = await connect(token)
    first.close()
    await asyncio.sleep(0.2)

    replacement = await connect(token)

    await replacement.send({"type": "ping"})
    assert (await replacement.expect("pong"))["type"] == "pong"


@with_limits("sockets-1", ws_max_sockets_per_user=1)
@pytest.mark.gen_test(timeout=30)
async def test_user_cap_counts_each_user_alone(api, connect, unique):
    first = await api.user(unique("pat1"))
    second = await api.user(unique("pat2"))
    await connect(first)

    other = await connect(second)

    await other.send({"type": "ping"})
    assert (await other.expect("pong"))["type"] == "pong"


@with_limits("waiting-2", ws_max_unauthenticated_per_ip=2)
@pytest.mark.gen_test(timeout=30)
async def test_sockets_waiting_for_login_are_capped_per_address(api, base_url, unique):
    token = await api.user(unique("pat"))
    waiting = [await raw_connect(base_url) for _ in range(2)]
    before = await metric(api, "ws_unauthenticated_ip")

    refused = await raw_connect(base_url)
    refused_code = await close_code(refused)
    await waiting[0].write_message(f'{{"type": "login", "token": "{token}"}}')
    await asyncio.wait_for(waiting[0].read_message(), 5)
    admitted = await raw_connect(base_url)
    await admitted.write_message('{"type": "ping"}')
    admitted_answer = await asyncio.wait_for(admitted.read_message(), 5)

    assert refused_code == CLOSE_TOO_MANY
    assert "Log in first" in admitted_answer
    assert await metric(api, "ws_unauthenticated_ip") == before + 1
    for connection in (*waiting, admitted):
        connection.close()


@with_limits("waiting-1", ws_max_unauthenticated_per_ip=1)
@pytest.mark.gen_test(timeout=30)
async def test_closed_waiting_socket_frees_its_place(api, base_url, unique):
    waiting = await raw_connect(base_url)
    waiting.close()
    await asyncio.sleep(0.2)
    token = await api.user(unique("pat"))

    queued = await raw_connect(base_url)
    await queued.write_message(f'{{"type": "login", "token": "{token}"}}')
    frame = await asyncio.wait_for(queued.read_message(), 5)

    assert '"welcome"' in frame
    queued.close()


@with_limits("waiting-1", ws_max_unauthenticated_per_ip=1)
@pytest.mark.gen_test(timeout=30)
async def test_query_token_socket_skips_the_login_cap(api, base_url, unique):
    token = await api.user(unique("pat"))
    waiting = await raw_connect(base_url)

    logged_in = await raw_connect(base_url, token)
    frame = await asyncio.wait_for(logged_in.read_message(), 5)

    assert '"welcome"' in frame
    waiting.close()
    logged_in.close()


@with_limits("ws-sends-2", ws_sends_per_second=2)
@pytest.mark.gen_test(timeout=30)
async def test_socket_send_flood_is_counted(api, connect, unique):
    doctor, patient = unique("doc"), unique("pat")
    await api.user(doctor, "doctor")
    socket = await connect(await api.user(patient))
    before = await metric(api, "ws_socket_sends")

    for index in range(3):
        await socket.send({"type": "send", "channel": "p2p", "to": doctor,
                           "contentType": 1, "content": "hi", "clientMsgId": f"f{index}"})
    error = await socket.expect("error")

    assert error["code"] == "rate_limited"
    assert error["ref"] == "f2"
    assert await metric(api, "ws_socket_sends") == before + 1
