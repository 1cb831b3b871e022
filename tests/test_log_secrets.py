"""No secret in any log line, with every logger at DEBUG.

The test raises the root logger to DEBUG (as IM_LOG_LEVEL=debug does),
starts the server with Getui and WeChat pointing at the fakes, and sends
traffic that carries credentials: tokens in WebSocket query strings, in
Authorization headers and in login frames, a signed WeChat callback, and
pushes that make the server authenticate with both vendors. Then it scans
every record (message, arguments and traceback) for each secret value.
"""

import asyncio
import hashlib
import json
import logging
import time
from urllib.parse import urlencode

import pytest
from tornado.httpclient import HTTPRequest
from tornado.websocket import websocket_connect

from conftest import TEST_SECRET
from handlers import ws
from hardening_support import bad_tokens
from tests.fakes.getui_fake import GetuiFake
from tests.fakes.wechat_fake import WeChatFake, template_event_xml

pytestmark = pytest.mark.timeout(90)

TEMPLATE_ID = "tplNewMessage0001"
TEMPLATE_KEYS = ("thing1", "time2", "thing3")
CALLBACK_TOKEN = "callbackTokenForLogScan01"
PUSH_TIMEOUT_SECONDS = 15
# Loggers named in the contract; they inherit DEBUG from the root unless
# the server raises one of them on purpose.
WATCHED_LOGGERS = ("tornado.access", "tornado.application", "tornado.general",
                   "tornado.curl_httpclient", "im.access")


class RecordList(logging.Handler):
    """Every record at any level, formatted with its traceback."""

    def __init__(self):
        super().__init__(level=logging.DEBUG)
        self.lines = []
        self.setFormatter(logging.Formatter("%(levelname)s %(name)s %(message)s"))

    def emit(self, record):
        self.lines.append(self.format(record))


@pytest.fixture
def log_lines():
    root = logging.getLogger()
    saved = {name: logging.getLogger(name).level for name in WATCHED_LOGGERS}
    saved_root = root.level
    handler = RecordList()
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    for name in WATCHED_LOGGERS:
        logging.getLogger(name).setLevel(logging.NOTSET)
    yield handler.lines
    root.removeHandler(handler)
    root.setLevel(saved_root)
    for name, level in saved.items():
        logging.getLogger(name).setLevel(level)


@pytest.fixture
def getui_fake(io_loop):
    fake = GetuiFake()
    fake.listen()
    signs = []
    check_sign = fake.check_sign

    def recording_check_sign(appkey, timestamp, sign):
        signs.append(sign)
        return check_sign(appkey, timestamp, sign)

    fake.check_sign = recording_check_sign
    fake.signs = signs
    yield fake
    io_loop.run_sync(fake.stop)


@pytest.fixture
def wechat_fake(io_loop):
    fake = WeChatFake()
    fake.add_template(TEMPLATE_ID, TEMPLATE_KEYS)
    fake.listen()
    yield fake
    io_loop.run_sync(fake.stop)


@pytest.fixture
def config(config, getui_fake, wechat_fake):
    """The suite's config with both push vendors on the fakes and fast jobs."""
    settings = {
        "getui_app_id": getui_fake.app_id, "getui_app_key": getui_fake.app_key,
        "getui_master_secret": getui_fake.master_secret,
        "getui_base_url": getui_fake.base_url,
        "wechat_app_id": wechat_fake.app_id, "wechat_app_secret": wechat_fake.app_secret,
        "wechat_base_url": wechat_fake.base_url, "wechat_template_id": TEMPLATE_ID,
        "wechat_field_map": dict(zip(TEMPLATE_KEYS, ("sender_name", "sent_at", "excerpt"))),
        "wechat_callback_token": CALLBACK_TOKEN,
        "push_interval_seconds": 0.1, "push_initial_backoff_seconds": 0.2,
    }
    for name, value in settings.items():
        setattr(config, name, value)
    return config


@pytest.fixture
def running(log_lines, im, io_loop, http_server):
    io_loop.run_sync(im.start)
    yield im

    async def stop():
        await im.stop()
        await asyncio.sleep(0.2)

    io_loop.run_sync(stop)


async def wait_until(condition, what):
    deadline = time.monotonic() + PUSH_TIMEOUT_SECONDS
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} still false after {PUSH_TIMEOUT_SECONDS} s")
        await asyncio.sleep(0.05)


async def open_socket(base_url, token=None, headers=None):
    url = base_url.replace("http://", "ws://") + "/ws"
    if token is not None:
        url += f"?token={token}"
    return await websocket_connect(HTTPRequest(url, headers=headers or {}))


async def first_frame_or_close(connection):
    message = await asyncio.wait_for(connection.read_message(), 5)
    return json.loads(message) if message else connection.close_code


def callback_query(**extra):
    timestamp, nonce = str(int(time.time())), "93127"
    signature = hashlib.sha1(
        "".join(sorted([CALLBACK_TOKEN, timestamp, nonce])).encode()).hexdigest()
    return signature, urlencode({"signature": signature, "timestamp": timestamp,
                                 "nonce": nonce, **extra})


async def send_traffic(api, im, base_url, unique, getui_fake, wechat_fake, monkeypatch):
    """Send every kind of request that carries a credential; return the tokens used."""
    doctor, patient = unique("doc"), unique("pat")
    cid, openid = f"cid{unique('x').replace('-', '')}", f"oFAKE{unique('o')}"
    getui_fake.add_cid(cid)
    wechat_fake.add_user(openid)
    doctor_token = await api.user(doctor, "doctor")
    patient_token = await api.user(patient, getuiClientId=cid, wechatOpenId=openid)
    rejected = bad_tokens(im.tokens, patient)
    used = [api.system_token, doctor_token, patient_token, *rejected.values()]

    # REST: good and bad Authorization headers, and a token in a query string.
    for token in (doctor_token, *rejected.values()):
        await api.get(f"/api/v1/users/{doctor}", token=token)
    await api.get(f"/api/v1/chats/recent?user_id={doctor}&access_token={doctor_token}",
                  token="")
    status, minted, _ = await api.post("/api/v1/tokens",
                                       {"userId": patient, "role": "patient"})
    assert status == 201, minted
    used.append(minted["token"])

    # Sockets: ?token= (good, bad, from a refused origin) and login frames.
    good = await open_socket(base_url, patient_token)
    assert (await first_frame_or_close(good))["type"] == "welcome"
    for token in rejected.values():
        refused = await open_socket(base_url, token)
        assert await first_frame_or_close(refused) == 4001
        framed = await open_socket(base_url)
        await framed.write_message(json.dumps({"type": "login", "token": token}))
        assert await first_frame_or_close(framed) == 4001
    try:
        await open_socket(base_url, patient_token, {"Origin": "https://evil.example.org"})
    except Exception:  # noqa: BLE001 - the 403 handshake is the point
        pass
    framed = await open_socket(base_url)
    await framed.write_message(json.dumps({"type": "login", "token": minted["token"]}))
    assert (await first_frame_or_close(framed))["type"] == "welcome"
    framed.close()

    # A socket whose frame handler fails: Tornado's own error log would print
    # the request URI with its ?token=.
    def failing_ping(socket, frame):
        raise RuntimeError("ping handler failed")

    monkeypatch.setitem(ws.FRAME_HANDLERS, "ping", failing_ping)
    await good.write_message('{"type": "ping"}')
    assert await first_frame_or_close(good) in (1011, None, 1006)

    # Pushes to the offline patient: Getui signs in with a sign and gets a
    # token; WeChat gets an access_token with the app secret.
    body = {"from": doctor, "to": patient, "contentType": 1, "content": "复诊提醒"}
    status, sent, _ = await api.post("/api/v1/chats/pm", body, token=doctor_token)
    assert status == 201, sent
    await wait_until(lambda: getui_fake.sent and wechat_fake.sent, "both pushes sent")

    # WeChat's callback: the URL check and a delivery report, then a bad signature.
    signature, query = callback_query(echostr="echo-1")
    status, _, response = await api.get(f"/wechat/callback?{query}", token="")
    assert response.body == b"echo-1"
    record = wechat_fake.sent[0]
    signature_2, query = callback_query()
    event = template_event_xml(openid, int(record["msgid"]), "success", int(time.time()))
    status, _, _ = await api.request("POST", f"/wechat/callback?{query}", token="",
                                     raw_body=event.encode(),
                                     headers={"Content-Type": "text/xml"})
    assert status == 200
    await api.get("/wechat/callback?signature=wrong&timestamp=1&nonce=2", token="")
    good.close()
    return used, [signature, signature_2]


@pytest.mark.gen_test(timeout=60)
async def test_logs_hold_no_token_or_secret(api, running, base_url, unique, getui_fake,
                                             wechat_fake, log_lines, monkeypatch):
    tokens, signatures = await send_traffic(api, running, base_url, unique, getui_fake,
                                            wechat_fake, monkeypatch)
    await asyncio.sleep(0.3)

    secrets = {f"token {index}": token for index, token in enumerate(tokens)}
    secrets.update({f"token {index} signature": token.rsplit(".", 1)[-1]
                    for index, token in enumerate(tokens) if token.rsplit(".", 1)[-1]})
    secrets.update({
        "signing secret": TEST_SECRET,
        "Getui app key": getui_fake.app_key,
        "Getui master secret": getui_fake.master_secret,
        "WeChat app secret": wechat_fake.app_secret,
        "WeChat callback token": CALLBACK_TOKEN,
    })
    secrets.update({f"Getui sign {n}": sign for n, sign in enumerate(getui_fake.signs)})
    secrets.update({f"Getui token {n}": token
                    for n, token in enumerate(getui_fake.issued_tokens)})
    secrets.update({f"WeChat access_token {n}": token
                    for n, token in enumerate(wechat_fake.tokens)})
    secrets.update({f"callback signature {n}": value
                    for n, value in enumerate(signatures)})

    leaks = [f"{name} in: {line[:300]}" for line in log_lines
             for name, value in secrets.items() if value in line]
    assert leaks == []
    # The traffic did reach the paths that handle these secrets.
    assert getui_fake.signs
    assert getui_fake.issued_tokens
    assert wechat_fake.tokens
    assert any("/ws?token=***" in line for line in log_lines)
    assert any("signature=***" in line for line in log_lines)
    assert any("Unexpected error on the socket" in line for line in log_lines)
