"""A terminal WebSocket client for trying the IM server by hand.

    IM_TOKEN=<JWT> .venv/bin/python tools/ws_client.py [--url URL] [--group] PEER

It logs in with a ``login`` frame and prints every frame the server sends,
one JSON object per line on stdout. Each line typed on stdin is sent as a
text message (contentType 1) to the user PEER, or to the group PEER with
--group. At the end of input it waits up to RESPONSE_WAIT_SECONDS for the
``sent`` or ``error`` frame of each send, then closes the socket.
Status notes go to stderr. It needs nothing beyond Tornado.
"""

import argparse
import asyncio
import json
import os
import sys
import threading
import uuid

from tornado.httpclient import HTTPClientError
from tornado.websocket import websocket_connect

DEFAULT_URL = "ws://127.0.0.1:3000/ws"
CONNECT_TIMEOUT_SECONDS = 10.0
RESPONSE_WAIT_SECONDS = 5.0
CLOSE_NORMAL = 1000


def parse_args(argv):
    parser = argparse.ArgumentParser(
        description="Print the frames of an IM WebSocket session and send "
        "stdin lines as text messages."
    )
    parser.add_argument("peer", help="user id to send to (a group id with --group)")
    parser.add_argument("--group", action="store_true",
                        help="PEER is a group id: send group messages")
    parser.add_argument("--url", default=DEFAULT_URL,
                        help=f"WebSocket URL of the server (default {DEFAULT_URL})")
    parser.add_argument("--token", default=os.environ.get("IM_TOKEN"),
                        help="JWT to log in with (default: the IM_TOKEN variable)")
    args = parser.parse_args(argv)
    if not args.token:
        parser.error("no token: set IM_TOKEN or pass --token")
    return args


def send_frame(args, text):
    """Build the ``send`` frame of one text message, with a new clientMsgId."""
    frame = {"type": "send", "contentType": 1, "content": text,
             "clientMsgId": uuid.uuid4().hex}
    if args.group:
        frame.update(channel="group", group=args.peer)
    else:
        frame.update(channel="p2p", to=args.peer)
    return frame


def start_stdin_reader(loop):
    """Read stdin in a daemon thread into a queue of lines that ends with None.

    A daemon thread, unlike the loop's default executor, does not keep the
    process alive while it waits for input after the server has closed.
    """
    lines = asyncio.Queue()

    def read():
        for line in sys.stdin:
            loop.call_soon_threadsafe(lines.put_nowait, line.rstrip("\r\n"))
        loop.call_soon_threadsafe(lines.put_nowait, None)

    threading.Thread(target=read, name="stdin", daemon=True).start()
    return lines


async def print_frames(connection, welcomed, pending):
    """Print frames until the socket closes, and return the close code."""
    while True:
        raw = await connection.read_message()
        if raw is None:
            reason = connection.close_reason or ""
            print(f"# socket closed: code {connection.close_code} {reason}".rstrip(),
                  file=sys.stderr)
            return connection.close_code
        print(raw, flush=True)
        try:
            frame = json.loads(raw)
        except ValueError:
            continue
        kind = frame.get("type")
        if kind == "welcome":
            welcomed.set()
        elif kind == "sent":
            pending.discard(frame.get("clientMsgId"))
        elif kind == "error":
            pending.discard(frame.get("ref"))


async def send_lines(connection, args, lines, welcomed, pending):
    """Send each stdin line as a text message once the login succeeded."""
    await welcomed.wait()
    while True:
        text = await lines.get()
        if text is None:
            return
        if not text.strip():
            continue
        frame = send_frame(args, text)
        pending.add(frame["clientMsgId"])
        await connection.write_message(json.dumps(frame, ensure_ascii=False))


async def wait_for_responses(pending, reader):
    loop = asyncio.get_running_loop()
    deadline = loop.time() + RESPONSE_WAIT_SECONDS
    while pending and not reader.done() and loop.time() < deadline:
        await asyncio.sleep(0.05)
    if pending:
        print(f"# no response to {len(pending)} sends within {RESPONSE_WAIT_SECONDS:.0f} s",
              file=sys.stderr)


async def run(args):
    try:
        connection = await websocket_connect(
            args.url, connect_timeout=CONNECT_TIMEOUT_SECONDS
        )
    except (OSError, HTTPClientError) as error:
        print(f"Failed to connect to {args.url}: {error}", file=sys.stderr)
        return 1
    await connection.write_message(json.dumps({"type": "login", "token": args.token}))

    welcomed, pending = asyncio.Event(), set()
    lines = start_stdin_reader(asyncio.get_running_loop())
    reader = asyncio.ensure_future(print_frames(connection, welcomed, pending))
    writer = asyncio.ensure_future(
        send_lines(connection, args, lines, welcomed, pending)
    )
    await asyncio.wait({reader, writer}, return_when=asyncio.FIRST_COMPLETED)

    if not reader.done():
        # End of input: wait for the responses to our sends, then close normally.
        await wait_for_responses(pending, reader)
        connection.close(CLOSE_NORMAL)
    writer.cancel()
    close_code = await reader
    return 0 if close_code in (None, CLOSE_NORMAL) else 1


def main(argv):
    args = parse_args(argv)
    try:
        return asyncio.run(run(args))
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
