"""Fixtures for the vendor push clients: fake servers on the test's IOLoop.

The clients and the fakes share one ``FakeClock``, so a test moves time
forward (token expiry, quota windows, outages) without sleeping. Network
delays and timeouts are real, and short.
"""

import os
import subprocess
import sys

import pytest
from tornado.curl_httpclient import CurlAsyncHTTPClient

from services.getui import GetuiClient
from services.wechat import MemoryTokenStore, WeChatClient
from tests.fakes.getui_fake import GetuiFake
from tests.fakes.wechat_fake import WeChatFake
from tests.push.support import (
    FOLLOWER_OPENID,
    INACTIVE_CID,
    OFFLINE_CID,
    ONLINE_CID,
    REPOSITORY_ROOT,
    REQUEST_TIMEOUT_SECONDS,
    TEMPLATE_ID,
    TEMPLATE_KEYS,
    UNFOLLOWED_OPENID,
    FakeClock,
)


@pytest.fixture
def clock():
    return FakeClock()


@pytest.fixture
def curl_client(io_loop):
    client = CurlAsyncHTTPClient(force_instance=True)
    yield client
    client.close()


@pytest.fixture
def getui_fake(io_loop, clock):
    fake = GetuiFake(clock=clock)
    fake.listen()
    fake.add_cid(ONLINE_CID, online=True)
    fake.add_cid(OFFLINE_CID)
    fake.add_cid(INACTIVE_CID, inactive=True)
    yield fake
    io_loop.run_sync(fake.stop)


@pytest.fixture
def getui_settings(getui_fake):
    return {
        "base_url": getui_fake.base_url,
        "app_id": getui_fake.app_id,
        "app_key": getui_fake.app_key,
        "master_secret": getui_fake.master_secret,
        "connect_timeout": REQUEST_TIMEOUT_SECONDS,
        "request_timeout": REQUEST_TIMEOUT_SECONDS,
    }


@pytest.fixture
def getui_client(curl_client, getui_settings, clock):
    return GetuiClient(curl_client, getui_settings, clock=clock)


@pytest.fixture
def wechat_fake(io_loop, clock):
    fake = WeChatFake(clock=clock)
    fake.listen()
    fake.add_user(FOLLOWER_OPENID)
    fake.add_user(UNFOLLOWED_OPENID, subscribed=False)
    fake.add_template(TEMPLATE_ID, TEMPLATE_KEYS)
    yield fake
    io_loop.run_sync(fake.stop)


@pytest.fixture
def wechat_settings(wechat_fake):
    return {
        "base_url": wechat_fake.base_url,
        "app_id": wechat_fake.app_id,
        "app_secret": wechat_fake.app_secret,
        "connect_timeout": REQUEST_TIMEOUT_SECONDS,
        "request_timeout": REQUEST_TIMEOUT_SECONDS,
    }


@pytest.fixture
def token_store():
    return MemoryTokenStore()


@pytest.fixture
def wechat_client(curl_client, wechat_settings, token_store, clock):
    return WeChatClient(
        curl_client, wechat_settings, token_store=token_store, clock=clock
    )


@pytest.fixture
def start_fake_process():
    """Start fakes as separate processes. ``start`` returns the port of one.

    Every process is terminated at teardown.
    """
    processes = []

    def start(module: str, *arguments: str) -> int:
        environment = dict(os.environ, PYTHONPATH=str(REPOSITORY_ROOT))
        process = subprocess.Popen(
            [sys.executable, "-m", module, "--port", "0", *arguments],
            cwd=REPOSITORY_ROOT,
            env=environment,
            stdout=subprocess.PIPE,
            text=True,
        )
        processes.append(process)
        line = process.stdout.readline()
        if not line.strip().isdigit():
            raise RuntimeError("%s printed %r instead of its port" % (module, line))
        return int(line)

    yield start

    for process in processes:
        process.terminate()
    for process in processes:
        process.wait(timeout=10)
        process.stdout.close()
