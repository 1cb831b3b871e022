"""The base RequestHandler: body parsing, authentication, JSON errors."""

import json
import logging
import math
import re
import uuid
from urllib.parse import parse_qsl

import tornado.web

from models.db import DatabaseUnavailable
from services.errors import (
    ApiError,
    Forbidden,
    InvalidArgument,
    PayloadTooLarge,
    Unauthorized,
    Unavailable,
    UnsupportedMediaType,
)

logger = logging.getLogger(__name__)
access_logger = logging.getLogger("im.access")

MAX_JSON_BODY_BYTES = 64 * 1024
MAX_PATH_ID_CHARS = 64

# Form fields that are lists (repeated or comma-separated) or integers.
FORM_LIST_FIELDS = {"at", "members", "userIds"}
FORM_INT_FIELDS = {"contentType", "groupType", "type", "upToId", "ttlSeconds", "sendAt"}

HTTP_CODES = {
    400: "invalid_argument", 401: "unauthorized", 403: "forbidden",
    404: "not_found", 405: "invalid_argument", 409: "conflict",
    413: "payload_too_large", 415: "unsupported_media_type",
    429: "rate_limited", 503: "unavailable",
}
# Query values masked in logs: tokens, secrets and WeChat's callback
# signatures (a logged signature could be replayed with its nonce).
SECRET_QUERY = re.compile(
    r"((?:access_)?token|(?:msg_)?sign(?:ature)?|secret)=[^&]*", re.IGNORECASE
)
REQUEST_ID = re.compile(r"^[A-Za-z0-9._-]{1,64}$")

# CORS: what a page of an allowed origin may send and read, and how long a
# browser may cache a preflight response (Chromium caps it at 2 hours).
CORS_ALLOW_HEADERS = "Authorization, Content-Type, X-Request-Id"
CORS_EXPOSE_HEADERS = "Retry-After, X-Request-Id"
CORS_MAX_AGE_SECONDS = 600
HTTP_METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE")


def scrub_uri(uri):
    """Mask token-like query values before a URI is logged."""
    return SECRET_QUERY.sub(r"\1=***", uri)


class BaseHandler(tornado.web.RequestHandler):
    """JSON in, JSON out; subclasses set ``auth_required``."""

    auth_required = True
    # Names of the path arguments, in order, for the field of a path error.
    path_fields = ("id",)

    def initialize(self):
        self.app = self.application.im
        self.principal = None
        self._body = None

    def set_default_headers(self):
        # Tornado calls this again when an error replaces the response, so
        # error responses keep their request id and CORS headers.
        request_id = getattr(self, "request_id", None)
        if request_id:
            self.set_header("X-Request-Id", request_id)
        self.set_header("Vary", "Origin")
        origin = self.request.headers.get("Origin")
        if origin and self.application.im.origins.allows(origin):
            self.set_header("Access-Control-Allow-Origin", origin)
            self.set_header("Access-Control-Expose-Headers", CORS_EXPOSE_HEADERS)

    async def prepare(self):
        incoming = self.request.headers.get("X-Request-Id", "")
        self.request_id = incoming if REQUEST_ID.match(incoming) else uuid.uuid4().hex[:16]
        self.set_header("X-Request-Id", self.request_id)
        if self.request.method == "OPTIONS":
            # Browsers send preflights without credentials, so options()
            # runs without a token.
            return
        if self.auth_required:
            self.principal = self._authenticate()
        for index, value in enumerate(self.path_args):
            field = self.path_fields[min(index, len(self.path_fields) - 1)]
            if len(value) > MAX_PATH_ID_CHARS:
                raise InvalidArgument(
                    f"Ids in the path must be 1-{MAX_PATH_ID_CHARS} characters long",
                    field=field,
                )
            if value != value.strip() or not value.isprintable():
                raise InvalidArgument(
                    "Ids in the path must not contain control characters or "
                    "start or end with white space",
                    field=field,
                )

    def _authenticate(self):
        header = self.request.headers.get("Authorization", "")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise Unauthorized("Missing Authorization: Bearer token")
        return self.app.tokens.verify(token.strip())

    def options(self, *path_args):
        """Respond to a CORS preflight, or list the methods of a plain OPTIONS.

        A preflight from an origin outside ``allowed_origins`` gets 403 and
        no CORS headers. The browser itself checks the requested method and
        headers against the lists sent here.
        """
        methods = ", ".join(self.allowed_methods())
        self.set_header("Allow", methods)
        origin = self.request.headers.get("Origin")
        if origin is not None:
            if not self.app.origins.allows(origin):
                raise Forbidden(
                    f"Origin {origin[:100]!r} may not call this API; the server's "
                    "IM_ALLOWED_ORIGINS must list it"
                )
            self.set_header("Access-Control-Allow-Methods", methods)
            self.set_header("Access-Control-Allow-Headers", CORS_ALLOW_HEADERS)
            self.set_header("Access-Control-Max-Age", str(CORS_MAX_AGE_SECONDS))
        self.set_status(204)
        self.finish()

    @classmethod
    def allowed_methods(cls):
        """The HTTP methods this handler implements, OPTIONS included."""
        own = [method for method in HTTP_METHODS
               if getattr(cls, method.lower()) is not getattr(tornado.web.RequestHandler,
                                                              method.lower())]
        return own + ["OPTIONS"]

    # -- authorization helpers -----------------------------------------------

    def require_system(self):
        if not self.principal.is_system:
            raise Forbidden("This call needs a system token")

    def act_as(self, user_id, field):
        """Reject acting for another user unless the token is a system token."""
        if not self.principal.is_system and user_id != self.principal.user_id:
            raise Forbidden(
                f"A {self.principal.role} token may act only as itself", field=field
            )
        return user_id

    # -- request body --------------------------------------------------------

    @property
    def body(self):
        """The request body as a dict, from JSON or a form."""
        if self._body is None:
            self._body = self._parse_body()
        return self._body

    def _parse_body(self):
        raw = self.request.body or b""
        if len(raw) > MAX_JSON_BODY_BYTES:
            raise PayloadTooLarge(
                f"Request body is {len(raw)} bytes; the limit is {MAX_JSON_BODY_BYTES}"
            )
        content_type = self.request.headers.get("Content-Type", "")
        media_type = content_type.split(";")[0].strip().lower()
        if not raw and not media_type:
            return {}
        if media_type == "application/json" or (not media_type and raw):
            return _parse_json(raw)
        if media_type == "application/x-www-form-urlencoded":
            # `curl -d '{...}'` labels JSON as a form; a form body cannot
            # start with "{", so such a body is read as the JSON it is.
            if raw.lstrip().startswith(b"{"):
                return _parse_json(raw)
            return _parse_form(raw)
        raise UnsupportedMediaType(
            f"Unsupported Content-Type {media_type!r}; send application/json "
            "or application/x-www-form-urlencoded"
        )

    # -- responses -----------------------------------------------------------

    def write_json(self, payload, status=200):
        self.set_status(status)
        self.set_header("Content-Type", "application/json; charset=UTF-8")
        self.finish(json.dumps(payload, ensure_ascii=False, separators=(",", ":")))

    def write_error(self, status_code, **kwargs):
        error = _api_error(kwargs.get("exc_info"), status_code)
        self.set_status(error.status)
        if isinstance(error, ApiError) and getattr(error, "retry_after_seconds", None):
            # Retry-After takes whole seconds, and rounding down could ask for 0.
            self.set_header("Retry-After", str(max(1, math.ceil(error.retry_after_seconds))))
        if error.status == 405:
            # HTTP (RFC 9110) requires a 405 to list the resource's methods.
            self.set_header("Allow", ", ".join(self.allowed_methods()))
        self.set_header("Content-Type", "application/json; charset=UTF-8")
        self.clear_header("Content-Disposition")
        self.finish(json.dumps({"error": error.to_dict()}, ensure_ascii=False))

    def log_exception(self, typ, value, tb):
        if isinstance(value, ApiError):
            return
        if isinstance(value, tornado.web.HTTPError):
            return
        request_id = getattr(self, "request_id", "-")
        if isinstance(value, DatabaseUnavailable):
            logger.error("Database unavailable during %s %s [%s]: %s",
                         self.request.method, self.request.path, request_id, value)
            return
        logger.error(
            "Unexpected error in %s %s [%s]", self.request.method,
            self.request.path, request_id, exc_info=(typ, value, tb),
        )


def query_int(handler, name, minimum, maximum, default=None):
    """Return an integer query argument, or ``default`` when it is absent."""
    raw = handler.get_query_argument(name, None)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise InvalidArgument(f"Query {name!r} must be an integer", field=name) from None
    if not minimum <= value <= maximum:
        raise InvalidArgument(
            f"Query {name!r} must be between {minimum} and {maximum}", field=name
        )
    return value


def query_id(handler, name, required=True):
    """Return a user or group id from the query string."""
    value = handler.get_query_argument(name, None)
    if value is None or value == "":
        if required:
            raise InvalidArgument(f"Missing query {name!r}", field=name)
        return None
    if len(value) > 64:
        raise InvalidArgument(f"Query {name!r} must be 1-64 characters long", field=name)
    return value


class NotFoundHandler(BaseHandler):
    """JSON 404 for every path no route matches."""

    auth_required = False

    async def prepare(self):
        await super().prepare()
        raise tornado.web.HTTPError(404)


def _api_error(exc_info, status_code):
    value = exc_info[1] if exc_info else None
    if isinstance(value, ApiError):
        return value
    if isinstance(value, DatabaseUnavailable):
        return Unavailable("The database is unavailable; try again shortly")
    code = HTTP_CODES.get(status_code)
    if code is None:
        return ApiError("Internal server error")
    error = ApiError(_HTTP_MESSAGES.get(status_code, "Request failed"))
    error.status, error.code = status_code, code
    return error


_HTTP_MESSAGES = {
    400: "Bad request",
    404: "No such resource",
    405: "Method not allowed on this resource",
}


def _parse_json(raw):
    try:
        text = raw.decode("utf-8")
        body = json.loads(text, parse_constant=_reject_constant)
    except (UnicodeDecodeError, ValueError):
        raise InvalidArgument("Malformed JSON body") from None
    except RecursionError:
        # 64 KiB of "[" nests deeper than Python's JSON reader can follow.
        raise InvalidArgument("JSON body nested too deeply") from None
    if not isinstance(body, dict):
        raise InvalidArgument("The JSON body must be an object")
    return body


def _reject_constant(name):
    raise ValueError(f"{name} is not JSON")


def _parse_form(raw):
    try:
        pairs = parse_qsl(raw.decode("utf-8"), keep_blank_values=True, strict_parsing=False)
    except UnicodeDecodeError:
        raise InvalidArgument("Malformed form body: not UTF-8") from None
    body = {}
    for name, value in pairs:
        if name in FORM_LIST_FIELDS:
            items = [item for item in value.split(",") if item]
            body.setdefault(name, []).extend(items)
        elif name in FORM_INT_FIELDS:
            try:
                body[name] = int(value)
            except ValueError:
                raise InvalidArgument(
                    f"Field {name!r} must be an integer", field=name
                ) from None
        else:
            body[name] = value
    return body
