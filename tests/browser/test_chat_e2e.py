"""End-to-end tests of the patient chat page against the real IM server.

Each backend (SQLite always, MariaDB when IM_TEST_MYSQL_URL is set) gets one
`server.py` subprocess on 127.0.0.1 and a fresh database. A doctor drives the
REST API with urllib from the test thread, and the patient uses /chat in headless
Chromium. Tests make their own users with unique ids, so they share the server.
"""

import ctypes
import http.client
import json
import os
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import uuid

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, ROOT)

from services.auth import TokenService  # noqa: E402

pytestmark = pytest.mark.timeout(120)

PYTHON = os.path.join(ROOT, ".venv", "bin", "python")
SCREENSHOT_DIR = os.path.join(ROOT, "test-output")
MYSQL_URL_VARIABLE = "IM_TEST_MYSQL_URL"
SECRET = "e2e-secret-for-the-browser-tests-0123456789"
SERVER_START_TIMEOUT_S = 20
SERVER_STOP_TIMEOUT_S = 20
HTTP_TIMEOUT_S = 5
WAIT_TIMEOUT_S = 15
# The SDK's reconnect delay is random in [0, min(30 s, 1 s * 2^attempt)), so after
# four failed tries during an outage the next one can wait up to 16 s.
RECONNECT_TIMEOUT_S = 45
PAGE_SIZE = 30
PHONE_VIEWPORT = {"width": 390, "height": 844}
PHONE_SCALE = 2
PR_SET_PDEATHSIG = 1

# Records every value the connection banner's data-state takes, in order.
BANNER_RECORDER = """
window.__bannerStates = [];
new MutationObserver((records) => {
  for (const record of records) {
    if (record.target.id === 'banner') window.__bannerStates.push(record.target.dataset.state);
  }
}).observe(document, { subtree: true, attributes: true, attributeFilter: ['data-state'] });
"""

MESSAGE_ITEMS = """
(items) => items.map((item) => ({
  id: item.dataset.id ? Number(item.dataset.id) : null,
  status: item.dataset.status || null,
  text: item.querySelector('.message-text') ? item.querySelector('.message-text').textContent : null,
}))
"""


def backends():
    names = ["sqlite"]
    if os.environ.get(MYSQL_URL_VARIABLE):
        names.append("mariadb")
    return names


def pymysql_url(url):
    if url.startswith("mysql://"):
        url = "mysql+pymysql://" + url[len("mysql://"):]
    if "charset=" not in url:
        url += ("&" if "?" in url else "?") + "charset=utf8mb4"
    return make_url(url)


def free_port():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def die_with_parent():
    """Ask Linux to send SIGTERM to the server if the test process dies without teardown."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def server_environment(database_url):
    environment = {name: value for name, value in os.environ.items() if not name.startswith("IM_")}
    environment.update({
        "IM_PROFILE": "test",
        "IM_SECRET": SECRET,
        "IM_DATABASE_URL": database_url,
        "IM_ADDRESS": "127.0.0.1",
        "IM_LOG_LEVEL": "info",
        "PYTHONUNBUFFERED": "1",
    })
    return environment


class ServerProcess:
    """`server.py` as a subprocess on a fixed port of 127.0.0.1, restartable on the same database."""

    def __init__(self, backend, database_url, log_path):
        self.backend = backend
        self.database_url = database_url
        self.log_path = log_path
        self.port = free_port()
        self.process = None
        self.tokens = TokenService(SECRET)

    def url(self, path="/"):
        return f"http://127.0.0.1:{self.port}{path}"

    def start(self):
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                [PYTHON, "server.py", "--port", str(self.port)],
                cwd=ROOT,
                env=server_environment(self.database_url),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                preexec_fn=die_with_parent,
            )
        deadline = time.monotonic() + SERVER_START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise AssertionError(
                    f"server.py exited with {self.process.returncode} during start-up:\n{self.log_tail()}"
                )
            if self.is_healthy():
                return
            time.sleep(0.05)
        raise AssertionError(
            f"server.py did not return 200 on /health within {SERVER_START_TIMEOUT_S} s:\n{self.log_tail()}"
        )

    def is_healthy(self):
        try:
            with urllib.request.urlopen(self.url("/health"), timeout=1) as response:
                return response.status == 200
        except OSError:
            return False

    def stop(self):
        """Send SIGTERM, wait for the exit and return the exit code (SIGKILL after the timeout)."""
        if self.process is None or self.process.poll() is not None:
            return None if self.process is None else self.process.returncode
        self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(SERVER_STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
            raise AssertionError(f"server.py ignored SIGTERM for {SERVER_STOP_TIMEOUT_S} s:\n{self.log_tail()}")

    def log_tail(self, lines=40):
        with open(self.log_path, encoding="utf-8", errors="replace") as log:
            return "".join(log.readlines()[-lines:])

    def token(self, user_id, role):
        return self.tokens.mint(user_id, role, 3600)[0]

    def client(self, user_id, role):
        return RestClient(self, self.token(user_id, role))


class RestClient:
    """A JSON client for the REST API that acts with one token."""

    def __init__(self, server, token):
        self.server = server
        self.token = token

    def request(self, method, path, body=None, headers=None):
        """Return (status, parsed JSON or None, response headers).

        Raises OSError or http.client.HTTPException when no complete response arrived.
        """
        all_headers = {"Authorization": f"Bearer {self.token}", "Accept": "application/json"}
        data = None
        if body is not None:
            data = json.dumps(body, ensure_ascii=False).encode()
            all_headers["Content-Type"] = "application/json"
        all_headers.update(headers or {})
        request = urllib.request.Request(self.server.url(path), data=data, headers=all_headers, method=method)
        try:
            with urllib.request.urlopen(request, timeout=HTTP_TIMEOUT_S) as response:
                status, raw, response_headers = response.status, response.read(), response.headers
        except urllib.error.HTTPError as error:
            status, raw, response_headers = error.code, error.read(), error.headers
        parsed = json.loads(raw) if raw else None
        return status, parsed, response_headers

    def put_user(self, user_id, role, name):
        status, answer, _ = self.request("PUT", f"/api/v1/users/{user_id}", {"name": name, "role": role})
        assert status == 200, answer

    def send_text(self, sender, recipient, content, client_msg_id=None):
        body = {"from": sender, "to": recipient, "contentType": 1, "content": content}
        if client_msg_id:
            body["clientMsgId"] = client_msg_id
        status, answer, _ = self.request("POST", "/api/v1/chats/pm", body)
        assert status == 201, answer
        return answer["message"]

    def history(self, user_id, peer_id, limit=100):
        status, answer, _ = self.request("GET", f"/api/v1/chats/pm?user_id={user_id}&peer_id={peer_id}&limit={limit}")
        assert status == 200, answer
        return answer["messages"]

    def conversation(self, user_id, peer_id):
        """Return (the p2p conversation with peer_id from `recent`, totalUnread)."""
        status, answer, _ = self.request("GET", f"/api/v1/chats/recent?user_id={user_id}")
        assert status == 200, answer
        matching = [c for c in answer["conversations"] if c["channel"] == "p2p" and c.get("peer") == peer_id]
        return (matching[0] if matching else None), answer["totalUnread"]


# ----- fixtures -----


@pytest.fixture(scope="module", params=backends())
def im_server(request, tmp_path_factory):
    """Start server.py on an empty database of the backend, then stop it and drop the database."""
    folder = tmp_path_factory.mktemp(f"e2e-{request.param}")
    drop = None
    if request.param == "sqlite":
        database_url = f"sqlite:///{folder / 'im.sqlite3'}"
    else:
        base = pymysql_url(os.environ[MYSQL_URL_VARIABLE])
        name = f"im_e2e_{uuid.uuid4().hex[:10]}"
        admin = create_engine(base)
        with admin.begin() as conn:
            conn.execute(text(f"CREATE DATABASE {name} CHARACTER SET utf8mb4 COLLATE utf8mb4_unicode_ci"))

        def drop():
            with admin.begin() as conn:
                conn.execute(text(f"DROP DATABASE IF EXISTS {name}"))
            admin.dispose()

        database_url = base.set(database=name).render_as_string(hide_password=False)
        initdb = subprocess.run(
            [PYTHON, "server.py", "initdb"],
            cwd=ROOT, env=server_environment(database_url), capture_output=True, text=True, timeout=60,
        )
        if initdb.returncode != 0:
            drop()
            pytest.fail(f"server.py initdb failed:\n{initdb.stdout}\n{initdb.stderr}")

    server = ServerProcess(request.param, database_url, folder / "server.log")
    try:
        server.start()
        yield server
    finally:
        try:
            server.stop()
        finally:
            if drop is not None:
                drop()


@pytest.fixture
def unique():
    suffix = uuid.uuid4().hex[:8]
    return lambda prefix: f"{prefix}-{suffix}"


@pytest.fixture
def system(im_server):
    return im_server.client("platform", "system")


@pytest.fixture
def open_chat(chromium, im_server):
    """Return a function that opens /chat#token=... for a patient and returns a ChatPage."""
    contexts = []

    def open_page(patient_id, **context_options):
        context = chromium.new_context(**context_options)
        contexts.append(context)
        page = context.new_page()
        page.set_default_timeout(WAIT_TIMEOUT_S * 1000)
        chat = ChatPage(page, patient_id)
        page.add_init_script(BANNER_RECORDER)
        page.goto(im_server.url("/chat#token=" + im_server.token(patient_id, "patient")))
        return chat

    yield open_page
    for context in contexts:
        context.close()


class ChatPage:
    """The chat page in one browser tab, with every WebSocket frame it received."""

    def __init__(self, page, user_id):
        self.page = page
        self.user_id = user_id
        self.frames = []
        self.errors = []
        self.console = []
        page.on("pageerror", lambda error: self.errors.append(str(error)))
        page.on("console", lambda message: self.console.append(f"{message.type}: {message.text}"))
        page.on("websocket", self._watch_socket)

    def _watch_socket(self, websocket):
        def record(payload):
            if isinstance(payload, str):
                self.frames.append(json.loads(payload))

        websocket.on("framereceived", record)

    def wait_until(self, predicate, description, timeout=WAIT_TIMEOUT_S):
        """Poll predicate while Playwright keeps delivering page events; fail after timeout seconds."""
        deadline = time.monotonic() + timeout
        while True:
            value = predicate()
            if value:
                return value
            if time.monotonic() >= deadline:
                raise AssertionError(f"timed out after {timeout} s waiting for {description}")
            self.page.wait_for_timeout(50)

    def synced_count(self):
        """Return how many p2p `synced` frames with hasMore false the page received."""
        return sum(
            1 for frame in self.frames
            if frame.get("type") == "synced" and frame.get("channel") == "p2p" and frame.get("hasMore") is False
        )

    def wait_for_first_sync(self):
        self.wait_until(lambda: self.synced_count() >= 1, "the first p2p sync to finish")

    def conversation_item(self, peer_id):
        return self.page.locator(f'[data-testid="conversation-item"][data-key="p2p:{peer_id}"]')

    def open_conversation(self, peer_id):
        item = self.conversation_item(peer_id)
        item.wait_for()
        item.click()
        self.page.locator("#conversation-title").wait_for()

    def messages(self):
        return self.page.eval_on_selector_all("#message-list .message-item", MESSAGE_ITEMS)

    def texts(self):
        return [message["text"] for message in self.messages()]

    def wait_for_text(self, content, timeout=WAIT_TIMEOUT_S):
        try:
            self.wait_until(lambda: content in self.texts(), f"the page to show {content!r}", timeout)
        except AssertionError as error:
            raise AssertionError(f"{error}. The page shows {self.texts()!r}") from None

    def type_and_send(self, content):
        self.page.fill('[data-testid="message-input"]', content)
        self.page.click('[data-testid="send-button"]')

    def banner_states(self):
        return self.page.evaluate("window.__bannerStates.slice()")


def make_patient_and_doctor(system, unique, doctor_name="Dr. Li"):
    patient_id, doctor_id = unique("patient"), unique("doctor")
    system.put_user(patient_id, "patient", "Patient Wang")
    system.put_user(doctor_id, "doctor", doctor_name)
    return patient_id, doctor_id


def png_size(path):
    with open(path, "rb") as image:
        header = image.read(24)
    assert header[:8] == b"\x89PNG\r\n\x1a\n", f"{path} is not a PNG file"
    return struct.unpack(">II", header[16:24])


# ----- tests -----


def test_patient_and_doctor_exchange_messages(im_server, system, open_chat, unique):
    patient_id, doctor_id = make_patient_and_doctor(system, unique)
    doctor = im_server.client(doctor_id, "doctor")
    doctor.send_text(doctor_id, patient_id, "Hello, how are you feeling today?")

    chat = open_chat(patient_id)
    chat.open_conversation(doctor_id)
    chat.wait_for_text("Hello, how are you feeling today?")

    chat.type_and_send("Much better, thank you.")
    chat.page.wait_for_selector('#message-list .message-item[data-status="sent"]')
    history = doctor.history(doctor_id, patient_id)
    assert [message["content"] for message in history] == [
        "Hello, how are you feeling today?",
        "Much better, thank you.",
    ]
    reply = history[-1]
    assert reply["from"] == patient_id
    assert reply["to"] == doctor_id
    assert reply["clientMsgId"], "the page sends every message with a clientMsgId"

    live = doctor.send_text(doctor_id, patient_id, "Good. Keep taking the tablets.")
    chat.wait_for_text("Good. Keep taking the tablets.")
    displayed = chat.messages()
    assert [message["text"] for message in displayed] == [
        "Hello, how are you feeling today?",
        "Much better, thank you.",
        "Good. Keep taking the tablets.",
    ]
    assert displayed[-1]["id"] == live["id"]
    assert chat.errors == []


def test_unread_badge_clears_when_opened(im_server, system, open_chat, unique):
    patient_id, first_doctor_id = make_patient_and_doctor(system, unique)
    second_doctor_id = unique("doctor-b")
    system.put_user(second_doctor_id, "doctor", "Dr. Zhang")
    patient = im_server.client(patient_id, "patient")
    # The patient's own messages start both conversations with nothing unread.
    patient.send_text(patient_id, first_doctor_id, "Question for Dr. Li")
    patient.send_text(patient_id, second_doctor_id, "Question for Dr. Zhang")

    chat = open_chat(patient_id)
    chat.open_conversation(first_doctor_id)
    chat.wait_for_text("Question for Dr. Li")
    second_item = chat.conversation_item(second_doctor_id)
    badge = second_item.locator('[data-testid="unread-badge"]')
    assert badge.is_hidden()

    second_doctor = im_server.client(second_doctor_id, "doctor")
    answer = second_doctor.send_text(second_doctor_id, patient_id, "Answer from Dr. Zhang")
    badge.wait_for(state="visible")
    assert badge.text_content() == "1"
    total = chat.page.locator('[data-testid="total-unread"]')
    total.wait_for(state="visible")
    assert total.text_content() == "1"
    assert "Answer from Dr. Zhang" not in chat.texts(), "the open conversation must not show another's message"

    second_item.click()
    chat.wait_for_text("Answer from Dr. Zhang")
    badge.wait_for(state="hidden")
    total.wait_for(state="hidden")

    def server_counts():
        conversation, total_unread = patient.conversation(patient_id, second_doctor_id)
        return conversation["unread"], total_unread

    chat.wait_until(lambda: server_counts() == (0, 0), "the server's unread counters to reach 0")
    conversation, total_unread = patient.conversation(patient_id, second_doctor_id)
    assert conversation["unread"] == 0
    assert total_unread == 0
    assert conversation["lastMessage"]["id"] == answer["id"]
    # The page's own list, reloaded from the server, agrees.
    chat.page.wait_for_timeout(500)
    assert badge.is_hidden()
    assert chat.errors == []


class RetryingDoctor(threading.Thread):
    """A doctor that sends numbered messages over REST and retries each one, with the
    same clientMsgId, until the server stores it.

    It records every attempt per clientMsgId: an OSError name when no HTTP response
    came, else the status.
    """

    def __init__(self, client, doctor_id, patient_id, count, interval_s, give_up_after_s):
        super().__init__(name="retrying-doctor", daemon=True)
        self.client = client
        self.doctor_id = doctor_id
        self.patient_id = patient_id
        self.count = count
        self.interval_s = interval_s
        self.give_up_after_s = give_up_after_s
        self.attempts = {}
        self.stored = {}
        self.failure = None

    def client_msg_id(self, number):
        return f"outage-{self.doctor_id}-{number}"

    def run(self):
        try:
            for number in range(1, self.count + 1):
                self.send_until_stored(number)
                time.sleep(self.interval_s)
        except Exception as error:  # noqa: BLE001 - reported to the test thread
            self.failure = error

    def send_until_stored(self, number):
        client_msg_id = self.client_msg_id(number)
        body = {
            "from": self.doctor_id, "to": self.patient_id, "contentType": 1,
            "content": f"During the restart #{number}", "clientMsgId": client_msg_id,
        }
        attempts = self.attempts.setdefault(client_msg_id, [])
        deadline = time.monotonic() + self.give_up_after_s
        while time.monotonic() < deadline:
            try:
                status, answer, _ = self.client.request("POST", "/api/v1/chats/pm", body)
            except (OSError, http.client.HTTPException) as error:
                attempts.append(type(error).__name__)
                time.sleep(0.1)
                continue
            attempts.append(status)
            if status in (200, 201):
                self.stored[client_msg_id] = answer["message"]
                return
            if status < 500:
                raise AssertionError(f"send {client_msg_id} rejected with {status}: {answer}")
            time.sleep(0.1)
        raise AssertionError(f"send {client_msg_id} not stored after {self.give_up_after_s} s: {attempts}")


def test_page_recovers_after_server_restart(im_server, system, open_chat, unique):
    patient_id, doctor_id = make_patient_and_doctor(system, unique)
    doctor = im_server.client(doctor_id, "doctor")
    doctor.send_text(doctor_id, patient_id, "Before the restart")

    chat = open_chat(patient_id)
    chat.wait_for_first_sync()
    chat.open_conversation(doctor_id)
    chat.wait_for_text("Before the restart")
    states_before_stop = len(chat.banner_states())
    synced_before_stop = chat.synced_count()

    sender = RetryingDoctor(doctor, doctor_id, patient_id, count=10, interval_s=0.3, give_up_after_s=40)
    sender.start()
    chat.wait_until(lambda: len(sender.stored) >= 3 or sender.failure, "three sends before the stop")
    exit_code = im_server.stop()
    assert exit_code == 0, f"server.py exited with {exit_code} on SIGTERM:\n{im_server.log_tail()}"
    # Keep the server down long enough for the doctor's sends to fail and retry.
    chat.wait_until(
        lambda: sum(1 for attempts in sender.attempts.values() for a in attempts if not isinstance(a, int)) >= 3,
        "three failed sends during the outage",
    )
    im_server.start()
    sender.join(60)
    assert not sender.is_alive(), "the doctor's sends did not finish after the restart"
    assert sender.failure is None, str(sender.failure)

    expected_ids = [sender.client_msg_id(number) for number in range(1, 11)]
    retried = [cid for cid in expected_ids if any(not isinstance(a, int) for a in sender.attempts[cid])]
    assert retried, f"no send hit the outage: {sender.attempts}"
    for client_msg_id in expected_ids:
        assert sender.stored[client_msg_id]["clientMsgId"] == client_msg_id

    history = doctor.history(doctor_id, patient_id)
    stored_ids = [message.get("clientMsgId") for message in history if message.get("clientMsgId")]
    assert stored_ids == expected_ids, "each retried send must be stored once, in send order"

    expected_texts = ["Before the restart"] + [f"During the restart #{number}" for number in range(1, 11)]

    def reconnected():
        states = chat.banner_states()[states_before_stop:]
        return "offline" in states and states[-1] == "open"

    chat.wait_until(reconnected, "the page to go offline and reconnect", timeout=RECONNECT_TIMEOUT_S)
    chat.wait_until(lambda: chat.synced_count() > synced_before_stop, "the sync after the reconnect")
    chat.wait_until(lambda: len(chat.texts()) >= len(expected_texts), "every message on the page")
    # Late sync replays or live frames must not add copies.
    chat.page.wait_for_timeout(500)
    displayed = chat.messages()
    assert [message["text"] for message in displayed] == expected_texts
    displayed_ids = [message["id"] for message in displayed]
    assert displayed_ids == sorted(displayed_ids)
    assert len(set(displayed_ids)) == len(displayed_ids)
    assert displayed_ids == [message["id"] for message in history]

    states = chat.banner_states()[states_before_stop:]
    assert "offline" in states, states
    first_offline = states.index("offline")
    assert "connecting" in states[first_offline:], states
    assert states[-1] == "open", states
    assert chat.page.locator('[data-testid="connection-banner"]').is_hidden()
    assert chat.errors == []


def test_markup_in_messages_is_shown_literally(im_server, system, open_chat, unique):
    patient_id, doctor_id = make_patient_and_doctor(system, unique)
    doctor = im_server.client(doctor_id, "doctor")
    script_text = "<script>window.__pwned=1</script>"
    image_text = '<img src=x onerror="window.__pwned=2">'
    doctor.send_text(doctor_id, patient_id, script_text)

    chat = open_chat(patient_id)
    chat.open_conversation(doctor_id)
    chat.wait_for_text(script_text)
    doctor.send_text(doctor_id, patient_id, image_text)
    chat.wait_for_text(image_text)
    typed_text = '<img src=x onerror="window.__pwned=3"><b>bold</b>'
    chat.type_and_send(typed_text)
    chat.page.wait_for_selector('#message-list .message-item[data-status="sent"]')
    # Gives a broken image time to fire onerror.
    chat.page.wait_for_timeout(500)

    assert chat.texts() == [script_text, image_text, typed_text]
    assert chat.page.evaluate("window.__pwned") is None
    assert chat.page.locator("#message-list script, #message-list img, #message-list b").count() == 0
    preview = chat.conversation_item(doctor_id).locator('[data-testid="conversation-preview"]')
    chat.wait_until(lambda: preview.text_content() == typed_text, "the preview to show the typed text")
    assert chat.page.locator("#conversation-list script, #conversation-list img, #conversation-list b").count() == 0
    # A blocked inline handler would mean markup reached the DOM and only the CSP saved the page.
    assert [line for line in chat.console if "Content Security Policy" in line] == []
    assert doctor.history(doctor_id, patient_id)[-1]["content"] == typed_text
    assert chat.errors == []


def test_chinese_and_emoji_render_on_phone(im_server, system, open_chat, unique):
    patient_id, doctor_id = make_patient_and_doctor(system, unique, doctor_name="李医生")
    doctor = im_server.client(doctor_id, "doctor")
    received = [
        "您好，我是您的家庭医生。今天血压怎么样？",
        "记得饭后服药 💊👍😀 家人都好吗？👨‍👩‍👧",
        "罕见字：𠀀 𪚥 𤭢 龘",
    ]
    for content in received:
        doctor.send_text(doctor_id, patient_id, content)

    chat = open_chat(
        patient_id, viewport=PHONE_VIEWPORT, device_scale_factor=PHONE_SCALE, is_mobile=True, has_touch=True,
    )
    chat.open_conversation(doctor_id)
    chat.wait_for_text(received[-1])
    typed = "谢谢医生，血压 120/80 🙏 𠀀"
    chat.type_and_send(typed)
    chat.page.wait_for_selector('#message-list .message-item[data-status="sent"]')

    assert chat.texts() == received + [typed]
    assert doctor.history(doctor_id, patient_id)[-1]["content"] == typed
    assert chat.page.locator('[data-testid="message-list"]').is_visible()
    assert chat.page.locator('[data-testid="conversation-list"]').is_hidden(), "a phone shows one pane at a time"

    os.makedirs(SCREENSHOT_DIR, exist_ok=True)
    path = os.path.join(SCREENSHOT_DIR, f"chat-phone-{im_server.backend}.png")
    chat.page.screenshot(path=path)
    assert png_size(path) == (PHONE_VIEWPORT["width"] * PHONE_SCALE, PHONE_VIEWPORT["height"] * PHONE_SCALE)
    assert chat.errors == []


def test_conversation_title_shows_doctor_name(im_server, system, open_chat, unique):
    patient_id, doctor_id = make_patient_and_doctor(system, unique, doctor_name="李医生")
    doctor = im_server.client(doctor_id, "doctor")
    doctor.send_text(doctor_id, patient_id, "您好")

    chat = open_chat(patient_id)
    chat.open_conversation(doctor_id)
    chat.wait_for_text("您好")
    title = chat.page.locator("#conversation-title")
    name = chat.conversation_item(doctor_id).locator('[data-testid="conversation-name"]')
    # Both show the user id until the doctor's profile has loaded.
    chat.wait_until(lambda: title.text_content() == "李医生", "the doctor's name in the title", timeout=5)
    assert name.text_content() == "李医生"


def test_older_button_pages_back_through_history(im_server, system, open_chat, unique):
    patient_id, doctor_id = make_patient_and_doctor(system, unique)
    doctor = im_server.client(doctor_id, "doctor")
    total = PAGE_SIZE + 5
    contents = [f"Reading {number:02d}: 7.{number % 10} mmol/L" for number in range(1, total + 1)]
    for content in contents:
        doctor.send_text(doctor_id, patient_id, content)

    chat = open_chat(patient_id)
    # A conversation opened while the first sync runs also shows the replayed messages, so wait for it.
    chat.wait_for_first_sync()
    chat.open_conversation(doctor_id)
    chat.wait_for_text(contents[-1])
    older = chat.page.locator('[data-testid="older-button"]')
    older.wait_for(state="visible")
    assert chat.texts() == contents[-PAGE_SIZE:]

    older.click()
    chat.wait_until(lambda: len(chat.texts()) == total, f"{total} messages after paging back")
    displayed = chat.messages()
    assert [message["text"] for message in displayed] == contents
    displayed_ids = [message["id"] for message in displayed]
    assert displayed_ids == sorted(displayed_ids)
    assert len(set(displayed_ids)) == total
    older.wait_for(state="hidden")
    assert chat.errors == []


def test_sdk_script_revalidates_with_etag(im_server):
    with urllib.request.urlopen(im_server.url("/sdk/im.client.js"), timeout=HTTP_TIMEOUT_S) as response:
        assert response.status == 200
        etag = response.headers.get("ETag")
        body = response.read()
    assert etag, "GET /sdk/im.client.js must send an ETag"
    with open(os.path.join(ROOT, "sdk", "im.client.js"), "rb") as script:
        assert body == script.read()

    request = urllib.request.Request(im_server.url("/sdk/im.client.js"), headers={"If-None-Match": etag})
    with pytest.raises(urllib.error.HTTPError) as raised:
        urllib.request.urlopen(request, timeout=HTTP_TIMEOUT_S)
    assert raised.value.code == 304
    assert raised.value.read() == b""
