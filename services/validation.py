"""Field checks shared by the REST handlers and the WebSocket frames.

Each check returns the clean value or raises InvalidArgument naming the
field. Lengths count Unicode code points, as the API promises.
"""

from urllib.parse import urlsplit

from services.errors import InvalidArgument

MAX_ID_CHARS = 64
MAX_TEXT_CHARS = 4000
MAX_URL_CHARS = 1024
MAX_TITLE_CHARS = 100
MAX_SUMMARY_CHARS = 200
MAX_NAME_CHARS = 100
MAX_AT_IDS = 50
MAX_GROUP_MEMBERS = 2000

CONTENT_TEXT = 1
CONTENT_TYPES = {1: "text", 2: "image", 3: "voice", 4: "link", 5: "file"}


def require(body, name):
    if name not in body or body[name] is None:
        raise InvalidArgument(f"Missing field {name!r}", field=name)
    return body[name]


def string(body, name, max_chars, required=True, min_chars=1):
    if not required and body.get(name) is None:
        return None
    value = require(body, name)
    if not isinstance(value, str):
        raise InvalidArgument(f"Field {name!r} must be a string", field=name)
    check_unicode(value, name)
    if not min_chars <= len(value) <= max_chars:
        raise InvalidArgument(
            f"Field {name!r} must be {min_chars}-{max_chars} characters long",
            field=name,
        )
    return value


def identifier(body, name, required=True):
    """Check a user, group or client message id: 1-64 characters, no control codes."""
    value = string(body, name, MAX_ID_CHARS, required=required)
    if value is not None and not value.isprintable():
        raise InvalidArgument(
            f"Field {name!r} must not contain control characters", field=name
        )
    # MySQL compares VARCHAR with trailing spaces ignored (PAD SPACE), so
    # "doc-1 " would be the same key as "doc-1" there but not on SQLite.
    if value is not None and value != value.strip():
        raise InvalidArgument(
            f"Field {name!r} must not start or end with white space", field=name
        )
    return value


def integer(body, name, minimum, maximum, required=True, default=None):
    if not required and body.get(name) is None:
        return default
    value = require(body, name)
    # bool is an int subclass in Python; JSON true must not pass as 1.
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidArgument(f"Field {name!r} must be an integer", field=name)
    if not minimum <= value <= maximum:
        raise InvalidArgument(
            f"Field {name!r} must be between {minimum} and {maximum}", field=name
        )
    return value


def content(body):
    """Check ``contentType`` and ``content``; return both."""
    content_type = integer(body, "contentType", 1, max(CONTENT_TYPES))
    value = require(body, "content")
    if not isinstance(value, str):
        raise InvalidArgument("Field 'content' must be a string", field="content")
    check_unicode(value, "content")
    if content_type == CONTENT_TEXT:
        if not 1 <= len(value) <= MAX_TEXT_CHARS:
            raise InvalidArgument(
                f"Text content must be 1-{MAX_TEXT_CHARS} characters long",
                field="content",
            )
    else:
        check_url(value, "content")
    return content_type, value


def check_unicode(value, name):
    """Reject a lone UTF-16 surrogate, which JSON escapes allow ("\\ud800").

    No database encoding can store one, so it would fail at insert time.
    """
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise InvalidArgument(
            f"Field {name!r} is not valid Unicode text", field=name
        ) from None


def check_url(value, name):
    if not 1 <= len(value) <= MAX_URL_CHARS:
        raise InvalidArgument(
            f"Field {name!r} must be a URL of 1-{MAX_URL_CHARS} characters",
            field=name,
        )
    try:
        parts = urlsplit(value)
    except ValueError:
        parts = None
    if (
        parts is None
        or parts.scheme not in ("http", "https")
        or not parts.netloc
        or any(ch.isspace() or not ch.isprintable() for ch in value)
    ):
        raise InvalidArgument(
            f"Field {name!r} must be an http or https URL", field=name
        )
    return value


def id_list(body, name, max_items, required=True):
    """Check a list of user ids; return it without repeats, order kept."""
    if not required and body.get(name) is None:
        return None
    value = require(body, name)
    if not isinstance(value, list):
        raise InvalidArgument(f"Field {name!r} must be a list of ids", field=name)
    if len(value) > max_items:
        raise InvalidArgument(
            f"Field {name!r} may contain at most {max_items} ids", field=name
        )
    result = []
    for item in value:
        if not isinstance(item, str) or not 1 <= len(item) <= MAX_ID_CHARS:
            raise InvalidArgument(
                f"Field {name!r} must hold ids of 1-{MAX_ID_CHARS} characters",
                field=name,
            )
        check_unicode(item, name)
        if item not in result:
            result.append(item)
    return result


def at_list(body):
    """Check the ``at`` list of a group message: ids, or ``["all"]`` alone."""
    ids = id_list(body, "at", MAX_AT_IDS, required=False)
    if ids and "all" in ids and len(ids) > 1:
        raise InvalidArgument("'all' must stand alone in 'at'", field="at")
    return ids or None


def send_fields(channel, body):
    """Check the fields of a send for ``channel``; return SendRequest keywords.

    The sender is not among them: REST takes it from ``from`` (or "system"),
    a socket from its token.
    """
    content_type, text = content(body)
    fields = {
        "channel": channel,
        "content_type": content_type,
        "content": text,
        "client_msg_id": identifier(body, "clientMsgId", required=False),
    }
    if channel == "group":
        fields["group"] = identifier(body, "group")
        fields["group_type"] = integer(body, "groupType", 1, 2**31 - 1, required=False)
        fields["at"] = at_list(body)
    else:
        fields["to"] = identifier(body, "to")
    if channel == "system":
        fields["title"] = string(body, "title", MAX_TITLE_CHARS)
        fields["summary"] = string(body, "summary", MAX_SUMMARY_CHARS, min_chars=0)
    return fields


READ_CHANNELS = ("p2p", "group", "system")


def read_target(body):
    """Return (channel, peer or group id or None) of a read mark."""
    channel = require(body, "channel")
    if channel not in READ_CHANNELS:
        raise InvalidArgument("channel must be p2p, group or system", field="channel")
    if channel == "p2p":
        return channel, identifier(body, "peer")
    if channel == "group":
        return channel, identifier(body, "group")
    return channel, None
